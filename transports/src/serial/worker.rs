//! The two blocking threads behind a [`super::SerialLink`].
//!
//! The reader owns the port's life: it opens it, reads it, notices when it fails or vanishes,
//! closes it and opens it again. The writer only ever borrows the port the reader published
//! in [`Shared::port`]; when a write fails it leaves the error for the reader to act on, so
//! `Closed` and `Opened` are reported by one thread, in order.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serial2::{CharSize, FlowControl, Parity, SerialPort, Settings, StopBits};
use tokio::sync::mpsc;

use super::{SerialConfig, SerialEvent, SerialOptions};

/// How often an idle reader checks that the path still names the device it has open.
const IDENTITY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long the reader sleeps between attempts to hand an event to a full queue.
const EVENT_QUEUE_RETRY: Duration = Duration::from_millis(5);
/// Bytes read at once: several frames at any baud rate a serial port runs.
const READ_BUFFER: usize = 4096;

/// What the writer thread is asked to do.
#[derive(Debug)]
pub(super) enum WriterCommand {
    Write(Vec<u8>),
    Shutdown,
}

/// State the link handle and both threads share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) shutdown: AtomicBool,
    /// The open port and which opening it is, `None` while closed. The writer clones the
    /// `Arc` for one write at a time, so the reader closing the port never pulls it from
    /// under a write in progress (the descriptor closes when the last clone is dropped).
    port: Mutex<Option<(u64, Arc<SerialPort>)>>,
    /// A write that failed in a way that means the port is gone, for the reader to act on,
    /// with the opening it happened on: a late failure on a port already replaced must not
    /// close its successor.
    write_failure: Mutex<Option<(u64, io::Error)>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub(super) fn is_open(&self) -> bool {
        lock(&self.port).is_some()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the `Option`s inside
/// are still whole, so carry on with them.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens the port raw, 8N1, without flow control, with the link's timeouts.
pub(super) fn open_port(config: &SerialConfig, options: &SerialOptions) -> io::Result<SerialPort> {
    let baud = config.baud;
    let mut port = SerialPort::open(&config.path, move |mut settings: Settings| {
        // Raw: no line editing, no echo, no CR/LF translation, no signals from bytes such as
        // 0x03; every byte value passes as it is, which binary framing needs.
        settings.set_raw();
        settings.set_baud_rate(baud)?;
        settings.set_char_size(CharSize::Bits8);
        settings.set_stop_bits(StopBits::One);
        settings.set_parity(Parity::None);
        // No RTS/CTS: most radios do not wire it. No XON/XOFF: 0x11 and 0x13 are data.
        settings.set_flow_control(FlowControl::None);
        Ok(settings)
    })?;
    port.set_read_timeout(options.read_timeout)?;
    port.set_write_timeout(options.write_timeout)?;
    Ok(port)
}

/// Which device a path names, to notice when it vanishes or is replaced by another one
/// (a USB radio unplugged and a different one plugged in under the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceIdentity {
    device: u64,
    inode: u64,
    rdev: u64,
}

#[cfg(unix)]
fn identity(path: &Path) -> io::Result<DeviceIdentity> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok(DeviceIdentity {
        device: metadata.dev(),
        inode: metadata.ino(),
        rdev: metadata.rdev(),
    })
}

#[cfg(not(unix))]
fn identity(_path: &Path) -> io::Result<DeviceIdentity> {
    Ok(DeviceIdentity {
        device: 0,
        inode: 0,
        rdev: 0,
    })
}

/// Hands an event to the caller, waiting while the queue is full. `false`: stop (shutdown,
/// or nobody is listening any more).
fn emit(events: &mpsc::Sender<SerialEvent>, shared: &Shared, mut event: SerialEvent) -> bool {
    loop {
        match events.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The receiver is gone: nothing we read can be delivered. Stop both threads.
                shared.shutdown.store(true, Ordering::SeqCst);
                return false;
            }
            Err(mpsc::error::TrySendError::Full(returned)) => {
                if shared.stopping() {
                    return false;
                }
                event = returned;
                std::thread::sleep(EVENT_QUEUE_RETRY);
            }
        }
    }
}

/// Sleeps for `delay`, in read-timeout slices so shutdown is noticed. `false`: stop.
fn pause(shared: &Shared, delay: Duration, slice: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if shared.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(slice));
    }
}

/// The reader thread: read, and reopen the port whenever it fails, until shutdown.
pub(super) fn run_reader(
    config: &SerialConfig,
    options: &SerialOptions,
    shared: &Shared,
    events: &mpsc::Sender<SerialEvent>,
    first: SerialPort,
) {
    let slice = options.read_timeout.max(Duration::from_millis(1));
    let mut next = Some(first);
    let mut failures: u32 = 0;
    let mut opening: u64 = 0;
    loop {
        let port = match next.take() {
            Some(port) => port,
            None => match open_port(config, options) {
                Ok(port) => port,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(path = %config.path.display(), %error, "serial port not back yet");
                    if !pause(shared, options.reopen.delay(failures), slice) {
                        return;
                    }
                    continue;
                }
            },
        };
        let identity = identity(&config.path).ok();
        let port = Arc::new(port);
        opening = opening.wrapping_add(1);
        *lock(&shared.write_failure) = None;
        *lock(&shared.port) = Some((opening, Arc::clone(&port)));
        let opened_at = Instant::now();
        if !emit(events, shared, SerialEvent::Opened) {
            *lock(&shared.port) = None;
            return;
        }

        let outcome = read_until_failure(&port, opening, config, identity, shared, events);
        *lock(&shared.port) = None;
        drop(port);
        let Some(reason) = outcome else {
            return; // shutdown, or nobody listening
        };
        tracing::info!(path = %config.path.display(), %reason, "serial port closed; reopening when it is back");
        if !emit(events, shared, SerialEvent::Closed(reason)) {
            return;
        }
        if opened_at.elapsed() >= options.stable_after {
            failures = 1;
        } else {
            failures = failures.saturating_add(1);
        }
        if !pause(shared, options.reopen.delay(failures), slice) {
            return;
        }
    }
}

/// Reads until the port fails (`Some(why)`) or the link stops (`None`).
fn read_until_failure(
    port: &SerialPort,
    opening: u64,
    config: &SerialConfig,
    opened_identity: Option<DeviceIdentity>,
    shared: &Shared,
    events: &mpsc::Sender<SerialEvent>,
) -> Option<io::Error> {
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut last_check = Instant::now();
    loop {
        if shared.stopping() {
            return None;
        }
        let write_failure = lock(&shared.write_failure).take();
        if let Some((failed_on, error)) = write_failure {
            if failed_on == opening {
                return Some(error);
            }
        }
        match port.read(&mut buffer) {
            Ok(0) => {
                // poll() said readable and there was nothing: the other end hung up.
                return Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the serial port reported end of file (device gone or hung up)",
                ));
            }
            Ok(read) => {
                let bytes = buffer.get(..read).unwrap_or_default().to_vec();
                if !emit(events, shared, SerialEvent::Bytes(bytes)) {
                    return None;
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if last_check.elapsed() >= IDENTITY_CHECK_INTERVAL {
                    last_check = Instant::now();
                    if let Some(error) = check_identity(&config.path, opened_identity) {
                        return Some(error);
                    }
                }
            }
            Err(error) => return Some(error),
        }
    }
}

/// `Some(why)` when the path no longer names the device that was opened.
fn check_identity(path: &Path, opened: Option<DeviceIdentity>) -> Option<io::Error> {
    match identity(path) {
        Ok(now) if opened.is_some_and(|opened| opened != now) => Some(io::Error::other(format!(
            "{} now names a different device",
            path.display()
        ))),
        Ok(_) => None,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Some(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} disappeared", path.display()),
        )),
        // Anything else (a permission change, say) says nothing about the open descriptor.
        Err(_) => None,
    }
}

/// The writer thread: writes what the link queues to whichever port is open.
pub(super) fn run_writer(shared: &Shared, mut commands: mpsc::Receiver<WriterCommand>) {
    while let Some(command) = commands.blocking_recv() {
        let WriterCommand::Write(bytes) = command else {
            return;
        };
        if shared.stopping() {
            return;
        }
        // Clone the port out so the lock is not held across a blocking write.
        let port = lock(&shared.port).clone();
        let Some((opening, port)) = port else {
            tracing::debug!(
                len = bytes.len(),
                "serial port closed; dropped bytes written meanwhile"
            );
            continue;
        };
        match port.write_all(&bytes) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                // The port is there but not taking bytes (a pty nobody reads, a stalled
                // adapter): that is not a vanished device, so drop these bytes and go on.
                tracing::warn!(
                    len = bytes.len(),
                    "serial port did not take bytes in time; dropped them"
                );
            }
            Err(error) => {
                let mut failure = lock(&shared.write_failure);
                if failure.is_none() {
                    *failure = Some((opening, error));
                }
            }
        }
    }
}
