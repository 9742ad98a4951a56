//! Virtual LoRa radios for end-to-end tests: a `cairn-vradio` process whose pseudo-terminals
//! (`DIR/radio0`, `DIR/radio1`, ...) `cairn run --serial` opens as it would real radios.
//!
//! ```text
//!  cairn run --serial DIR/radio0 ─ pty ─┐                     ┌─ pty ─ DIR/radio1 ...
//!                                       └ device ─ simulated LoRa channel ─ device ┘
//! ```
//!
//! [`VirtualRadios::start`] waits for the process's ready line; dropping the value kills and
//! reaps it, so a test that fails never leaves it running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use crate::harness::workspace_bin;

/// Environment variable naming the `cairn-vradio` binary to use.
pub const VRADIO_BIN_VAR: &str = "CAIRN_VRADIO_BIN";

/// Longest the process may take to offer its ports.
const START_LIMIT: Duration = Duration::from_secs(20);

/// Longest it may take to print its statistics after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The `cairn-vradio` binary: `CAIRN_VRADIO_BIN` if set, else the debug build next to the
/// `cairn` binary, built first (`cargo build -p cairn-tools --bin cairn-vradio`) when older
/// than its sources, as [`crate::harness::cairn_bin`] does.
pub fn vradio_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        workspace_bin(
            VRADIO_BIN_VAR,
            "cairn-tools",
            "cairn-vradio",
            &["Cargo.lock", "tools", "firmware-bridge"],
        )
    })
}

/// What the radios are and who hears whom.
#[derive(Clone, Debug)]
pub struct VradioConfig {
    /// Number of radios.
    pub radios: u16,
    /// `rnode`, `kiss` or `meshtastic`.
    pub firmware: &'static str,
    /// `all` (everyone hears everyone) or `line` (0-1-2-..., neighbours only).
    pub topology: &'static str,
    /// Probability that a frame is lost anyway, per receiver.
    pub loss: f64,
    /// Seed of loss and backoff.
    pub seed: u64,
}

impl VradioConfig {
    /// `radios` radios on `firmware`, all in range of each other, no loss, seed 1.
    pub fn new(radios: u16, firmware: &'static str) -> Self {
        Self {
            radios,
            firmware,
            topology: "all",
            loss: 0.0,
            seed: 1,
        }
    }

    /// Only neighbours hear each other: 0-1-2-...
    pub fn line(mut self) -> Self {
        self.topology = "line";
        self
    }

    /// Each frame is lost with probability `loss` at each receiver.
    pub fn loss(mut self, loss: f64, seed: u64) -> Self {
        self.loss = loss;
        self.seed = seed;
        self
    }
}

/// One radio's figures from the statistics line `cairn-vradio` prints when it stops.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RadioStats {
    pub radio: usize,
    pub path: String,
    pub frames_sent: u64,
    pub airtime_us: u64,
    pub frames_delivered: u64,
    pub lost_to_collision: u64,
    pub lost_to_half_duplex: u64,
    pub lost_at_random: u64,
}

#[derive(Deserialize)]
struct ReadyLine {
    ready: bool,
    radios: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct StatsLine {
    stopped: bool,
    radios: Vec<RadioStats>,
}

/// A running `cairn-vradio`. Dropping it kills and reaps the process.
#[derive(Debug)]
pub struct VirtualRadios {
    child: Child,
    /// Lines the process printed on stdout, read by a thread.
    lines: mpsc::Receiver<String>,
    /// The ports, in radio order.
    pub ports: Vec<PathBuf>,
    /// Where its stderr goes.
    pub log_path: PathBuf,
}

impl VirtualRadios {
    /// Starts `cairn-vradio --verbose` with its ports in `dir/vradio` and its stderr (every
    /// frame on air) in `dir/vradio.log`, and waits (up to 20 s) until its ports are ready.
    pub fn start(dir: &Path, config: &VradioConfig) -> VirtualRadios {
        let log_path = dir.join("vradio.log");
        let log = std::fs::File::create(&log_path).expect("creating the vradio log file");
        let mut child = Command::new(vradio_bin())
            .arg("--dir")
            .arg(dir.join("vradio"))
            .args(["--radios", &config.radios.to_string()])
            .args(["--firmware", config.firmware])
            .args(["--topology", config.topology])
            .args(["--loss", &config.loss.to_string()])
            .args(["--seed", &config.seed.to_string()])
            .arg("--no-stdin")
            // Every frame to the log: what went on air is the first thing to look at when a
            // test fails.
            .arg("--verbose")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", vradio_bin().display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut radios = VirtualRadios {
            child,
            lines,
            ports: Vec::new(),
            log_path,
        };
        let line = radios.next_line(START_LIMIT, "its ready line");
        let ready: ReadyLine = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad cairn-vradio ready line {line:?}: {e}"));
        assert!(ready.ready, "cairn-vradio is not ready: {line}");
        assert_eq!(ready.radios.len(), usize::from(config.radios), "{line}");
        radios.ports = ready.radios;
        radios
    }

    /// Radio `index`'s port.
    pub fn port(&self, index: usize) -> &Path {
        &self.ports[index]
    }

    /// The process's stderr so far (hosts connecting, every frame sent and heard).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, then the channel's figures per radio from the line it prints as it stops.
    pub fn stop(mut self) -> Vec<RadioStats> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -TERM cairn-vradio failed");
        let line = self.next_line(STOP_LIMIT, "its statistics line");
        let stats: StatsLine = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad cairn-vradio statistics line {line:?}: {e}"));
        assert!(stats.stopped, "{line}");
        let status =
            crate::harness::wait_child(&mut self.child, "cairn-vradio after SIGTERM", STOP_LIMIT);
        assert!(status.success(), "cairn-vradio exited with {status}");
        stats.radios
    }

    /// The next line on stdout, or a panic naming `what` (and the process's stderr) after
    /// `limit`.
    fn next_line(&mut self, limit: Duration, what: &str) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(_) => {
                let exited = self.child.try_wait().ok().flatten();
                panic!(
                    "cairn-vradio did not print {what} within {limit:?} (exit status: \
                     {exited:?}); its stderr:\n{}",
                    self.log()
                )
            }
        }
    }
}

impl Drop for VirtualRadios {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- last lines of cairn-vradio's log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
