//! The serial link over pseudo-terminals, as a user of a USB radio needs it: bytes flow both
//! ways, a device that disappears is reported as closed, and when it comes back under the
//! same name the link reopens it by itself and bytes flow again. Also: a wrong path fails at
//! once with the path in the message, and dropping or shutting down the link ends it.
//!
//! The "device" is `socat` joining two pseudo-terminals behind stable symlinks; killing socat
//! is the unplug, starting it again with the same links the replug. Every test stops itself
//! with timeouts and kills its socat on the way out, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_transports::lan::Backoff;
use cairn_transports::serial::{SerialConfig, SerialError, SerialEvent, SerialLink, SerialOptions};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Longest any single expectation may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A socat process joining two ptys behind `a` and `b`; killed when dropped.
struct PtyPair {
    a: PathBuf,
    b: PathBuf,
    socat: Option<Child>,
}

impl PtyPair {
    /// Unique link paths for this test; nothing started yet.
    fn paths() -> (PathBuf, PathBuf) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir();
        let stem = format!("cairn-serial-test-{}-{n}", std::process::id());
        (dir.join(format!("{stem}-a")), dir.join(format!("{stem}-b")))
    }

    /// `None` when socat is not installed: the test then says so and passes.
    fn start() -> Option<Self> {
        let (a, b) = Self::paths();
        let mut pair = Self { a, b, socat: None };
        if !pair.spawn() {
            return None;
        }
        Some(pair)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("socat")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", self.a.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("socat is not installed: skipping the pty test");
            return false;
        };
        self.socat = Some(child);
        let deadline = Instant::now() + PATIENCE;
        // socat replaces stale links; wait until both point at live ptys.
        while !(live(&self.a) && live(&self.b)) {
            assert!(
                Instant::now() < deadline,
                "socat did not create its pty links"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The unplug: the device node goes (udev removes `/dev/ttyUSB0`), then the device
    /// itself, with SIGKILL, as a cable pulled out gives no warning. The links go first so
    /// that a pty number the kernel hands to another test meanwhile is never reached
    /// through them.
    fn unplug(&mut self) {
        let _ = std::fs::remove_file(&self.a);
        let _ = std::fs::remove_file(&self.b);
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.socat.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn live(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.a);
        let _ = std::fs::remove_file(&self.b);
    }
}

fn options() -> SerialOptions {
    SerialOptions {
        reopen: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        read_timeout: Duration::from_millis(50),
        ..SerialOptions::default()
    }
}

fn open(path: &Path) -> (SerialLink, mpsc::Receiver<SerialEvent>) {
    SerialLink::open_with(SerialConfig::new(path), options()).expect("the pty opens")
}

async fn next_event(events: &mut mpsc::Receiver<SerialEvent>) -> SerialEvent {
    match timeout(PATIENCE, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the link ended"),
        Err(_) => panic!("no serial event within {PATIENCE:?}"),
    }
}

async fn expect_opened(events: &mut mpsc::Receiver<SerialEvent>) {
    match next_event(events).await {
        SerialEvent::Opened => {}
        other => panic!("expected Opened, got {other:?}"),
    }
}

/// Waits for Closed, skipping bytes still in flight.
async fn expect_closed(events: &mut mpsc::Receiver<SerialEvent>) -> std::io::Error {
    loop {
        match next_event(events).await {
            SerialEvent::Closed(reason) => return reason,
            SerialEvent::Bytes(_) => {}
            SerialEvent::Opened => panic!("expected Closed, got Opened"),
        }
    }
}

/// Collects bytes until `expected` arrived, in however many pieces.
async fn expect_bytes(events: &mut mpsc::Receiver<SerialEvent>, expected: &[u8]) {
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match next_event(events).await {
            SerialEvent::Bytes(bytes) => got.extend(bytes),
            other => panic!("expected bytes, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(got, expected);
}

/// Every byte value, so nothing in the path translates or swallows any (raw mode).
fn all_byte_values() -> Vec<u8> {
    (0..=255u8).chain((0..=255u8).rev()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flow_both_ways_and_survive_an_unplug() {
    let Some(mut pair) = PtyPair::start() else {
        return;
    };
    let (a, mut a_events) = open(&pair.a);
    let (b, mut b_events) = open(&pair.b);
    expect_opened(&mut a_events).await;
    expect_opened(&mut b_events).await;
    assert!(a.is_open() && b.is_open());

    a.write(b"ping over the cable".to_vec())
        .await
        .expect("a writes");
    expect_bytes(&mut b_events, b"ping over the cable").await;
    b.write(all_byte_values()).await.expect("b writes");
    expect_bytes(&mut a_events, &all_byte_values()).await;

    // Unplug: both ends see the device go.
    pair.unplug();
    let reason = expect_closed(&mut a_events).await;
    eprintln!("a closed: {reason}");
    expect_closed(&mut b_events).await;
    // Writes while it is gone are dropped, not queued for the next device.
    a.write(b"lost while unplugged".to_vec())
        .await
        .expect("writing to a closed port is not an error");

    // Give the link a few reopen attempts against the missing path, then plug back in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.is_open());
    assert!(pair.spawn(), "socat starts again");
    expect_opened(&mut a_events).await;
    expect_opened(&mut b_events).await;

    a.write(b"after replug".to_vec()).await.expect("a writes");
    expect_bytes(&mut b_events, b"after replug").await;
    b.write(b"and back".to_vec()).await.expect("b writes");
    expect_bytes(&mut a_events, b"and back").await;

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_end_the_link_promptly() {
    let Some(pair) = PtyPair::start() else {
        return;
    };
    let (a, mut a_events) = open(&pair.a);
    let (b, mut b_events) = open(&pair.b);
    expect_opened(&mut a_events).await;
    expect_opened(&mut b_events).await;

    let started = Instant::now();
    timeout(PATIENCE, a.shutdown())
        .await
        .expect("shutdown returns");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        timeout(PATIENCE, a_events.recv())
            .await
            .expect("the event stream ends")
            .is_none(),
        "no events after shutdown"
    );

    drop(b);
    loop {
        match timeout(PATIENCE, b_events.recv()).await {
            Ok(None) => break,
            Ok(Some(SerialEvent::Bytes(_))) => {}
            Ok(Some(other)) => panic!("unexpected {other:?} after drop"),
            Err(_) => panic!("the link did not stop after being dropped"),
        }
    }
}

#[tokio::test]
async fn a_missing_device_fails_at_once_with_its_path() {
    let (path, _) = PtyPair::paths();
    let error = SerialLink::open(SerialConfig::new(&path)).expect_err("nothing is there");
    assert!(matches!(error, SerialError::Open { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("plugged in"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_vanishes_while_idle_is_noticed() {
    // A USB adapter unplugged while nothing is being sent: the read times out quietly, and
    // only the path going away tells. Here the link is a symlink we own and remove.
    let Some(pair) = PtyPair::start() else {
        return;
    };
    let (own_link, _) = PtyPair::paths();
    let target = std::fs::read_link(&pair.a).expect("socat made a symlink");
    std::os::unix::fs::symlink(&target, &own_link).expect("link to the pty");
    let (link, mut events) = open(&own_link);
    expect_opened(&mut events).await;
    std::fs::remove_file(&own_link).expect("remove our link");
    let reason = expect_closed(&mut events).await;
    assert_eq!(reason.kind(), std::io::ErrorKind::NotFound, "{reason}");
    assert!(reason.to_string().contains("disappeared"), "{reason}");
    link.shutdown().await;
    drop(pair);
}
