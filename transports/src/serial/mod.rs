//! Serial ports for tokio code: a radio on USB, a cable between two laptops, a pseudo-terminal
//! in tests.
//!
//! This is an I/O edge and nothing more: it moves bytes. It does not know what the bytes
//! mean (KISS, Cairn's cable framing, Meshtastic: that is the firmware driver's business, a
//! pure state machine the caller feeds), and it never drops or reorders bytes while the port
//! is open.
//!
//! What it does own is the port's life. USB radios get unplugged, boards reboot, pty peers
//! exit. When the port fails (a read or write error such as `EIO`/`ENODEV`, end of file, or
//! the path vanishing or now naming another device), the link reports
//! [`SerialEvent::Closed`], then keeps trying to open the same path again with a growing
//! delay, and reports [`SerialEvent::Opened`] when it succeeds. Every `Opened`, the first one
//! included, means "a fresh port: start your handshake again" (`Firmware::reset` in the
//! node). Bytes written while the port is closed are dropped: they belonged to the session
//! that just ended.
//!
//! Underneath are two threads, because serial2 is blocking: a reader that owns the port's
//! life (open, read with a short timeout so it notices shutdown, reopen) and a writer fed by
//! a bounded queue. Dropping the [`SerialLink`] stops both within one read timeout;
//! [`SerialLink::shutdown`] also waits for them.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_transports::serial::{SerialConfig, SerialEvent, SerialLink};
//!
//! let config: SerialConfig = "/dev/ttyUSB0:115200".parse()?;
//! let (link, mut events) = SerialLink::open(config)?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         // A fresh port: reset the firmware driver and write what it asks for.
//!         SerialEvent::Opened => link.write(b"bytes from the driver".to_vec()).await?,
//!         SerialEvent::Bytes(bytes) => { /* feed them to the firmware driver */ }
//!         SerialEvent::Closed(reason) => eprintln!("radio gone ({reason}); waiting for it"),
//!     }
//! }
//! # Ok(()) }
//! ```

mod config;
mod worker;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

pub use config::{SerialConfig, SerialConfigError, DEFAULT_BAUD};

use crate::lan::Backoff;
use worker::{Shared, WriterCommand};

/// What happened on the port.
#[derive(Debug)]
pub enum SerialEvent {
    /// The port is open (first time, or again after [`SerialEvent::Closed`]): the device on
    /// it may have rebooted, so start the firmware handshake over.
    Opened,
    /// Bytes read from the port, in whatever pieces it returned them.
    Bytes(Vec<u8>),
    /// The port failed and was closed; the link is trying to open it again.
    Closed(io::Error),
}

/// Timing and queue sizes for a [`SerialLink`]. The defaults suit USB radios and pty tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialOptions {
    /// Delay before reopening a port that failed or could not be opened; doubles per
    /// consecutive failure up to its maximum.
    pub reopen: Backoff,
    /// How long a port must have stayed open for its failure to reset the backoff; shorter
    /// lives count as failures, so a port that opens and fails at once is not reopened in a
    /// tight loop.
    pub stable_after: Duration,
    /// How long one read waits for bytes: the longest the reader takes to notice shutdown.
    pub read_timeout: Duration,
    /// How long one write may wait for the port to take bytes before they are dropped.
    pub write_timeout: Duration,
    /// Writes that may wait for the writer thread.
    pub write_queue: usize,
    /// Events that may wait for the caller before the reader pauses (the OS buffers meanwhile).
    pub event_queue: usize,
}

impl Default for SerialOptions {
    fn default() -> Self {
        Self {
            reopen: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            stable_after: Duration::from_secs(2),
            read_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_secs(1),
            write_queue: 64,
            event_queue: 256,
        }
    }
}

/// Why a serial link could not start or take a write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    /// The port could not be opened at start.
    #[error("could not open serial port {}: {source}{}", path.display(), open_hint(source))]
    Open {
        /// The port.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The reader or writer thread could not be started.
    #[error("could not start the serial port threads: {0}")]
    Spawn(io::Error),
    /// The link was shut down (or its threads stopped): nothing more will be written.
    #[error("the serial link has stopped")]
    Stopped,
    /// [`SerialLink::try_write`] found the write queue full.
    #[error("the serial link's write queue is full")]
    QueueFull,
}

fn open_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::NotFound => {
            " (is the device plugged in? `ls /dev/serial/by-id/` lists the USB serial devices)"
        }
        io::ErrorKind::PermissionDenied => {
            " (is your user in the group that owns the device, usually dialout or uucp?)"
        }
        _ => "",
    }
}

/// A serial port kept open (and reopened) by two threads; see the [module docs](self).
///
/// Dropping it stops the threads; the event receiver then ends.
#[derive(Debug)]
pub struct SerialLink {
    path: PathBuf,
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriterCommand>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl SerialLink {
    /// Opens `config.path` (8N1, raw, no flow control) and starts the link with default
    /// [`SerialOptions`].
    ///
    /// # Errors
    ///
    /// [`SerialError::Open`] when the port cannot be opened now (a wrong path deserves an
    /// answer at once rather than a silent wait), [`SerialError::Spawn`] when the threads
    /// cannot start.
    pub fn open(
        config: SerialConfig,
    ) -> Result<(SerialLink, mpsc::Receiver<SerialEvent>), SerialError> {
        Self::open_with(config, SerialOptions::default())
    }

    /// [`SerialLink::open`] with explicit options.
    ///
    /// # Errors
    ///
    /// As [`SerialLink::open`].
    pub fn open_with(
        config: SerialConfig,
        options: SerialOptions,
    ) -> Result<(SerialLink, mpsc::Receiver<SerialEvent>), SerialError> {
        let port = worker::open_port(&config, &options).map_err(|source| SerialError::Open {
            path: config.path.clone(),
            source,
        })?;
        let (event_tx, event_rx) = mpsc::channel(options.event_queue.max(1));
        let (write_tx, write_rx) = mpsc::channel(options.write_queue.max(1));
        let shared = Arc::new(Shared::default());
        let name = config.path.display().to_string();

        let writer = std::thread::Builder::new()
            .name(format!("serial-write {name}"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || worker::run_writer(&shared, write_rx)
            })
            .map_err(SerialError::Spawn)?;
        let reader = std::thread::Builder::new()
            .name(format!("serial-read {name}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let config = config.clone();
                move || worker::run_reader(&config, &options, &shared, &event_tx, port)
            });
        let reader = match reader {
            Ok(reader) => reader,
            Err(error) => {
                shared.shutdown.store(true, Ordering::SeqCst);
                let _ = write_tx.try_send(WriterCommand::Shutdown);
                let _ = writer.join();
                return Err(SerialError::Spawn(error));
            }
        };
        Ok((
            SerialLink {
                path: config.path,
                shared,
                writes: write_tx,
                reader: Some(reader),
                writer: Some(writer),
            },
            event_rx,
        ))
    }

    /// The port this link keeps open.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the port is open right now (between [`SerialEvent::Opened`] and
    /// [`SerialEvent::Closed`]).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.shared.is_open()
    }

    /// Queues bytes for the port, waiting while the write queue is full. Bytes queued while
    /// the port is closed are dropped when their turn comes.
    ///
    /// # Errors
    ///
    /// [`SerialError::Stopped`] once the link was shut down.
    pub async fn write(&self, bytes: Vec<u8>) -> Result<(), SerialError> {
        self.writes
            .send(WriterCommand::Write(bytes))
            .await
            .map_err(|_| SerialError::Stopped)
    }

    /// Queues bytes for the port without waiting.
    ///
    /// # Errors
    ///
    /// [`SerialError::QueueFull`] when the writer is behind; [`SerialError::Stopped`] once
    /// the link was shut down.
    pub fn try_write(&self, bytes: Vec<u8>) -> Result<(), SerialError> {
        self.writes
            .try_send(WriterCommand::Write(bytes))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => SerialError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => SerialError::Stopped,
            })
    }

    /// Stops both threads, closes the port and waits until they are gone (at most about one
    /// read timeout plus one write timeout). The event receiver then ends.
    pub async fn shutdown(mut self) {
        self.signal_shutdown();
        let reader = self.reader.take();
        let writer = self.writer.take();
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(reader) = reader {
                let _ = reader.join();
            }
            if let Some(writer) = writer {
                let _ = writer.join();
            }
        })
        .await;
        if let Err(error) = joined {
            tracing::warn!(%error, "serial link threads did not stop cleanly");
        }
    }

    fn signal_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wakes the writer if it is waiting for work; if its queue is full it is busy and
        // sees the flag before its next write.
        let _ = self.writes.try_send(WriterCommand::Shutdown);
    }
}

impl Drop for SerialLink {
    fn drop(&mut self) {
        // No join here: dropping must not block an async caller. The threads see the flag
        // within one read (or write) timeout and exit on their own.
        self.signal_shutdown();
    }
}
