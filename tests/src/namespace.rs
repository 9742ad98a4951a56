//! Network namespaces for tests that run `cairn run` or `cairn demo`.
//!
//! The daemon always starts mDNS, and mdns-sd announces multicast membership on every
//! interface as it starts; so those tests never run in the machine's own namespace. Either
//! the test re-runs itself in a private namespace holding only loopback
//! ([`in_private_network`]), or it builds its own namespaces joined by veth pairs
//! ([`Netns`]), removed again by a guard even when the test panics.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{cairn_bin, output_within, wait_child, BIN_VAR};

/// Set in the environment of a test re-run inside its private namespace.
const INSIDE_VAR: &str = "CAIRN_TEST_NETNS";

/// Upper bound for one re-run test, after which it (and every process it started) is killed.
const RERUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs the calling test in a private network namespace where only loopback exists.
///
/// Returns true when the caller is already inside one and should go on. Otherwise re-runs
/// this one test (`name`, as the harness knows it: the function name for a test at the root
/// of its file) inside `unshare -n`, asserts that it passed there, and returns false; or,
/// when namespaces are not available (not root), says so and returns false: the test is
/// skipped, not faked.
///
/// The re-run test gets its own process group, so that if it ever outlives
/// [`RERUN_LIMIT`] it is killed together with every daemon it started.
pub fn in_private_network(name: &str) -> bool {
    rerun_isolated(name, Isolation::Network)
}

/// [`in_private_network`], and a private mount namespace too (`unshare -n -m`, with every
/// mount made private first): the test may mount (a small tmpfs, say) where nothing outside
/// sees it, and whatever it mounts vanishes with the namespace when the test ends, however
/// it ends.
pub fn in_private_network_and_mounts(name: &str) -> bool {
    rerun_isolated(name, Isolation::NetworkAndMounts)
}

/// What a re-run test gets a private copy of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isolation {
    Network,
    NetworkAndMounts,
}

impl Isolation {
    /// `unshare`'s flags.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Isolation::Network => &["-n"],
            Isolation::NetworkAndMounts => &["-n", "-m"],
        }
    }

    /// Shell run inside before the test: loopback up (and mounts made private).
    fn setup(self) -> &'static str {
        match self {
            Isolation::Network => "ip link set lo up && exec \"$0\" \"$@\" 2>&1",
            Isolation::NetworkAndMounts => {
                "mount --make-rprivate / && ip link set lo up && exec \"$0\" \"$@\" 2>&1"
            }
        }
    }

    /// Why the test is skipped where `unshare` fails.
    fn skip_reason(self) -> &'static str {
        match self {
            Isolation::Network => {
                "it runs `cairn run`, whose mDNS must stay out of this machine's network; \
                 that needs a private network namespace (`unshare -n`, as root)"
            }
            Isolation::NetworkAndMounts => {
                "it runs `cairn run`, whose mDNS must stay out of this machine's network, and \
                 mounts a file system; that needs private network and mount namespaces \
                 (`unshare -n -m`, as root)"
            }
        }
    }
}

fn rerun_isolated(name: &str, isolation: Isolation) -> bool {
    if std::env::var_os(INSIDE_VAR).is_some() {
        return true;
    }
    // Can we make one at all? (Exit 1 from unshare: not root, or no namespaces.)
    let probe = Command::new("unshare")
        .args(isolation.flags())
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped {name}: {}", isolation.skip_reason());
        return false;
    }
    let bin = cairn_bin().to_path_buf();
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("unshare")
            .args(isolation.flags())
            .args(["sh", "-c", isolation.setup()])
            .arg(&exe)
            // `--include-ignored`: the outer run already chose to run this test, ignored or not.
            .args([
                name,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INSIDE_VAR, "1")
            .env(BIN_VAR, bin)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting unshare")
    };
    let readers = [
        read_all(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ),
        read_all(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ),
    ];
    let pgid = child.id();
    let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_child(&mut child, name, RERUN_LIMIT)
    }));
    // Whatever happened, nothing the test started outlives it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    // The inner run's output goes through this test's own capture: shown when it fails or
    // under --nocapture, and its "test result" lines never mix with the outer run's.
    let mut output = String::new();
    for reader in readers {
        output.push_str(&reader.join().unwrap_or_default());
    }
    print!("{output}");
    match status {
        Ok(status) => assert!(
            status.success(),
            "{name} failed in its network namespace: {status}"
        ),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    // A misspelt `name` would run no test at all, and pass.
    assert!(
        output.contains("test result: ok. 1 passed"),
        "{name} did not run in its network namespace: is the name right?"
    );
    false
}

/// Reads `source` to the end on a thread.
fn read_all(source: Option<Box<dyn Read + Send>>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut source) = source {
            let _ = source.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A named network namespace (`ip netns add`), deleted on drop with every process in it.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with loopback up; an error (the reason) when this
    /// machine cannot (not root, no iproute2).
    pub fn create(name: &str) -> Result<Netns, String> {
        // Left over from a killed run whose pid this one reuses: ours to remove.
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let netns = Netns {
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Joins `self` and `other` with a veth pair made inside the two namespaces (it never
    /// appears in the machine's own), addresses them and brings both ends up.
    pub fn link_veth(
        &self,
        (own_end, own_addr): (&str, &str),
        other: &Netns,
        (other_end, other_addr): (&str, &str),
    ) -> Result<(), String> {
        ip(&[
            "link",
            "add",
            own_end,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            other_end,
            "netns",
            &other.name,
        ])?;
        self.ip(&["addr", "add", own_addr, "dev", own_end])?;
        other.ip(&["addr", "add", other_addr, "dev", other_end])?;
        self.ip(&["link", "set", own_end, "up"])?;
        other.ip(&["link", "set", other_end, "up"])
    }

    /// Process ids still running in this namespace.
    fn pids(&self) -> Vec<String> {
        let output = output_within(
            Command::new("ip").args(["netns", "pids", &self.name]),
            "ip netns pids",
            Duration::from_secs(10),
        );
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Daemons are killed by their own guards first; this catches any that escaped.
        let pids = self.pids();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {error}", self.name);
        }
    }
}

/// Runs `ip ARGS...`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let found = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found.is_err() {
        return Err("`ip` (iproute2) is not installed".into());
    }
    let output = output_within(Command::new("ip").args(args), "ip", Duration::from_secs(10));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
