//! Real `cairn` processes for end-to-end tests: node homes driven through the command line,
//! daemons that are always stopped (a guard kills and reaps them on every exit path, panics
//! included), and polling with deadlines instead of sleeps.
//!
//! Every wait here has a deadline: a test that goes wrong fails with a message naming what it
//! waited for, never hangs.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Longest a one-shot command (`init`, `send`, `messages`, ...) may take.
const CLI_LIMIT: Duration = Duration::from_secs(20);

/// How often conditions are polled.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Environment variable naming the `cairn` binary to test (set for re-executed tests, and
/// by hand to test another build).
pub const BIN_VAR: &str = "CAIRN_BIN";

/// The `cairn` binary under test.
///
/// `CAIRN_BIN` if set. Else the debug binary in the target directory (`CARGO_TARGET_DIR`,
/// else the workspace's `target/`): used as it is when it is newer than every source file
/// of the crates it is built from (as after `cargo test --workspace`, which builds all
/// binaries first); otherwise `cargo build -p cairn-node --bin cairn` runs once first, so
/// `cargo test -p cairn-tests` after an edit tests the edit.
pub fn cairn_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        workspace_bin(
            BIN_VAR,
            "cairn-node",
            "cairn",
            &[
                "Cargo.lock",
                "node",
                "transports",
                "sync",
                "firmware-bridge",
            ],
        )
    })
}

/// A binary of this workspace: `$var` if set, else `target/debug/BIN`, built first with
/// `cargo build -p PACKAGE --bin BIN` unless it is newer than everything under `sources`
/// (paths relative to the workspace root: the crates it is built from). Panics, saying what
/// to run, if it cannot be built.
pub(crate) fn workspace_bin(var: &str, package: &str, bin: &str, sources: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let path = target.join("debug").join(bin);
    let built_at = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let fresh = built_at.is_some_and(|built| {
        sources.iter().all(|source| {
            newest_change(&workspace.join(source)).is_none_or(|changed| changed <= built)
        })
    });
    if !fresh {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let built = Command::new(cargo)
            .current_dir(&workspace)
            .args(["build", "--quiet", "-p", package, "--bin", bin])
            .status();
        assert!(
            built.as_ref().is_ok_and(|s| s.success()) && path.is_file(),
            "building {} failed ({built:?}); run `cargo build -p {package} --bin {bin}` \
             or set {var}",
            path.display()
        );
    }
    path
}

/// The latest modification time of `path` or anything under it, skipping `target`
/// directories and fuzz crates (not part of the binary).
fn newest_change(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    let entries = std::fs::read_dir(path).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            !matches!(
                e.file_name().to_str(),
                Some("target" | "fuzz" | "tests" | "benches")
            )
        })
        .filter_map(|e| newest_change(&e.path()))
        .chain(own)
        .max()
}

/// Polls `check` until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_until<T>(what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_until_every(what, limit, POLL_EVERY, check)
}

/// [`wait_until`], polling every `every` (for conditions that are cheap to check and
/// short-lived).
pub fn wait_until_every<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(every);
    }
}

/// Waits for `child` to exit, killing it (and failing) after `limit`.
pub fn wait_child(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` to completion with piped output, killing it after `limit`.
pub fn output_within(command: &mut Command, what: &str, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let status = wait_child(&mut child, what, limit);
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// One line of `cairn messages --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub text: String,
    pub status: String,
    pub sent_at: Option<u64>,
    pub received_at: Option<u64>,
    pub envelope: Option<String>,
}

/// `cairn status --json`: the fields the tests read.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    pub pid: Option<u32>,
    pub links_up: Option<u64>,
    pub carried: Option<u64>,
    pub store_items: Option<u64>,
    pub queued: u64,
    pub relayed: u64,
    pub delivered: u64,
    pub received: u64,
}

/// A node's home directory, driven through the `cairn` command line.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub home: PathBuf,
    /// Run every command inside this named network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl Node {
    /// `cairn init --name NAME --network SECRET` in `dir/NAME`.
    pub fn init(dir: &Path, name: &str, network: &str) -> Node {
        let node = Node {
            name: name.to_owned(),
            home: dir.join(name),
            netns: None,
        };
        node.cli(&["init", "--name", name, "--network", network]);
        node
    }

    /// The same home, its commands run inside network namespace `netns`.
    pub fn in_netns(mut self, netns: &str) -> Node {
        self.netns = Some(netns.to_owned());
        self
    }

    /// A `cairn --home HOME` command, with logs uncoloured.
    pub fn command(&self) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(cairn_bin());
                c
            }
            None => Command::new(cairn_bin()),
        };
        command.arg("--home").arg(&self.home).env("NO_COLOR", "1");
        command
    }

    /// Runs a one-shot command; panics (with its stderr) unless it exits 0. Returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let what = format!("`cairn {}` for {}", args.join(" "), self.name);
        let output = output_within(self.command().args(args), &what, CLI_LIMIT);
        assert!(
            output.status.success(),
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("cairn prints UTF-8")
    }

    /// The contact code: the last line of `cairn id`.
    pub fn contact_code(&self) -> String {
        let out = self.cli(&["id"]);
        out.lines()
            .last()
            .expect("`cairn id` printed nothing")
            .trim()
            .to_owned()
    }

    /// `cairn contacts add NAME CODE` with `other`'s code.
    pub fn add_contact(&self, other: &Node) {
        self.cli(&["contacts", "add", &other.name, &other.contact_code()]);
    }

    /// `cairn send TO TEXT`.
    pub fn send(&self, to: &str, text: &str) {
        self.cli(&["send", to, text]);
    }

    /// `cairn messages --json`.
    /// Asserts that this node received exactly `texts` from `from`, each once, each in its
    /// own envelope.
    pub fn assert_received_exactly_once(&self, from: &str, texts: &[String]) {
        let received = self.messages();
        assert_eq!(
            received.len(),
            texts.len(),
            "{} has each message exactly once",
            self.name
        );
        assert!(received
            .iter()
            .all(|m| m.direction == "incoming" && m.from == from && m.status == "received"));
        let got: std::collections::BTreeSet<&str> =
            received.iter().map(|m| m.text.as_str()).collect();
        let sent: std::collections::BTreeSet<&str> = texts.iter().map(String::as_str).collect();
        assert_eq!(
            got, sent,
            "{}'s texts are exactly the ones {from} sent",
            self.name
        );
        let envelopes: std::collections::HashSet<_> =
            received.iter().map(|m| m.envelope.clone()).collect();
        assert_eq!(envelopes.len(), texts.len(), "one envelope per message");
    }

    pub fn messages(&self) -> Vec<Message> {
        self.cli(&["messages", "--json"])
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bad `messages --json` line {line:?}: {e}"))
            })
            .collect()
    }

    /// `cairn status --json`.
    pub fn status(&self) -> Status {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("bad `status --json` output {out:?}: {e}"))
    }

    /// Starts `cairn run ARGS`, logging to `HOME/../NAME.log`.
    pub fn run(&self, args: &[&str]) -> Daemon {
        let log_path = self.home.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("opening the daemon's log file");
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = self
            .command()
            .arg("run")
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting `cairn run` for {}: {e}", self.name));
        Daemon {
            name: self.name.clone(),
            child,
            log_path,
            log_start,
        }
    }

    /// Messages with `status`.
    pub fn count_status(&self, status: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.status == status)
            .count()
    }
}

/// A running `cairn run`. Dropping it kills and reaps the process.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    child: Child,
    log_path: PathBuf,
    /// Where this run's output starts in the (appended) log file.
    log_start: u64,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This run's log so far, without colour codes.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        let start = (self.log_start as usize).min(bytes.len());
        strip_ansi(&String::from_utf8_lossy(&bytes[start..]))
    }

    /// Waits for the "cairn is running" line and returns the address it listens on.
    pub fn wait_listening(&mut self, limit: Duration) -> SocketAddr {
        let name = self.name.clone();
        wait_until(&format!("{name}'s daemon to listen"), limit, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{name}'s daemon exited early ({status}):\n{}", self.log());
            }
            self.log()
                .lines()
                .filter(|line| line.contains("cairn is running"))
                .find_map(|line| {
                    let (_, rest) = line.split_once("listen=")?;
                    rest.split_whitespace().next()?.parse().ok()
                })
        })
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal with `kill(1)` (no libc in this crate).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill {signal} {} failed", self.pid());
    }

    /// SIGTERM, then waits up to `limit` for the exit status.
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        self.signal("-TERM");
        let what = format!("{}'s daemon after SIGTERM", self.name);
        wait_child(&mut self.child, &what, limit)
    }

    /// SIGKILL, as a crash or a pulled battery would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let running = self.is_running();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of {}'s daemon log ({}) ---",
                self.name,
                if running { "was running" } else { "had exited" }
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Removes terminal colour sequences (`ESC [ ... m`) from log text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("listing a home directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

/// True when `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
