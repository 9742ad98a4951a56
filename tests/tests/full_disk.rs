//! A carrier whose disk fills up stays up, says so clearly, loses nothing it acknowledged,
//! and recovers when space comes back.
//!
//! Carol's home is a small tmpfs (mounted in a private mount namespace, so it vanishes with
//! the test however it ends), filled with a filler file until only a few MiB are left.
//! Alice hands her far more than fits. Carol must keep running and log why she refuses more;
//! alice must not count anything delivered; everything Carol reported storing (her meeting
//! lines' `received_items`, counted only after a commit) must still be there once the filler
//! is deleted, without a restart; and then everything goes through: Carol takes the rest,
//! Bob receives every message exactly once, and Alice sees every one delivered.
//!
//! This test found a protocol bug, now fixed: Alice spent each envelope's copy budget as it
//! left, whether or not Carol could store it, so Carol's failed commits and Alice's quick
//! redials burned it down to one copy, which is never handed to a carrier again. Copies now
//! leave the budget only when the carrier confirms it stored the item, and "relayed" means
//! that confirmation.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_node::app::AppDb;
use cairn_node::identity::Identity;
use cairn_sync::store::{LmdbConfig, LmdbStore, Store};
use cairn_tests::harness::{output_within, wait_until, Node};
use cairn_tests::namespace::in_private_network_and_mounts;

/// Team secret shared by the three nodes.
const NETWORK: &str = "north valley search team";

/// `cairn run` on loopback only, on a port the system picks.
const ON_LOOPBACK: &[&str] = &["--interface", "lo", "--listen", "127.0.0.1:0"];

/// Longest one step of the story may take.
const STEP: Duration = Duration::from_secs(20);

/// Longest a daemon may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);

/// Messages Alice queues for Bob, and the size of each (about 6 MB in all).
const MESSAGES: usize = 2000;
const TEXT_BYTES: usize = 3000;

/// Size of the tmpfs holding Carol's home: room for everything once the filler is gone.
const DISK: &str = "size=32m";

/// What the filler leaves free on Carol's disk: a few hundred envelopes' worth.
const LEFT_FREE: u64 = 3 << 20;

/// How long Carol is watched with a full disk and Alice still offering more.
const FULL_FOR: Duration = Duration::from_secs(3);

#[test]
fn a_carrier_whose_disk_fills_stays_up_and_loses_nothing() {
    if !in_private_network_and_mounts("a_carrier_whose_disk_fills_stays_up_and_loses_nothing") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let alice = Node::init(dir.path(), "alice", NETWORK);
    let bob = Node::init(dir.path(), "bob", NETWORK);
    alice.add_contact(&bob);
    bob.add_contact(&alice);

    // Carol's home is a small disk of its own; her log (HOME.log) stays outside it.
    let disk = Tmpfs::mount(&dir.path().join("carol"), DISK);
    let carol = Node::init(dir.path(), "carol", NETWORK);
    assert_eq!(carol.home, disk.path);
    let filler = disk.path.join("filler");
    fill_leaving(&filler, LEFT_FREE);

    let texts: Vec<String> = (0..MESSAGES)
        .map(|i| format!("supply note {i:04}: {}", "x".repeat(TEXT_BYTES)))
        .collect();
    queue_all(&alice, "bob", &texts);
    eprintln!("[{:?}] {MESSAGES} messages queued", started.elapsed());

    // Alice meets Carol, who runs out of space part-way.
    let alice_run = alice.run(ON_LOOPBACK);
    let mut carol_run = carol.run(ON_LOOPBACK);
    let full_line = wait_until("carol to log that her store is full", STEP, || {
        assert!(carol_run.is_running(), "carol's daemon exited");
        carol_run
            .log()
            .lines()
            .find(|line| line.contains("storage failed"))
            .map(str::to_owned)
    });
    eprintln!(
        "[{:?}] carol's disk is full; her log says:\n    {full_line}",
        started.elapsed()
    );

    // She stays up while Alice keeps offering what does not fit, and says so as an error.
    std::thread::sleep(FULL_FOR);
    assert!(carol_run.is_running(), "carol's daemon died on a full disk");
    let log = carol_run.log();
    report_full_disk_log(&log);
    assert!(
        log.lines().any(
            |line| (line.contains(" ERROR ") || line.contains(" WARN ")) && says_no_space(line)
        ),
        "carol logged no error or warning about her full disk"
    );
    assert!(
        !log.contains("panicked"),
        "carol's daemon panicked on a full disk"
    );
    assert_eq!(
        alice.count_status("delivered"),
        0,
        "nothing reached bob yet"
    );
    let stopped = alice_run.terminate(STOP);
    assert!(stopped.success(), "alice's daemon exited with {stopped}");
    // Only what Carol committed is reported stored (`received_items`: events after commit).
    let committed = received_items(&carol_run.log());
    let relayed = alice.count_status("relayed");
    eprintln!(
        "[{:?}] with the disk full, carol committed {committed} of {MESSAGES} envelopes; \
         alice counts {relayed} as relayed",
        started.elapsed()
    );
    assert!(committed < MESSAGES as u64, "everything fit: no full disk");
    assert!(
        relayed as u64 <= committed,
        "alice counts {relayed} relayed but carol stored only {committed}"
    );

    // Space comes back: Carol, still the same process, still holds all she committed...
    // (Her status file, stale while the disk was full, is rewritten every second.)
    std::fs::remove_file(&filler).unwrap();
    let mut carried = None;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("carol to report what she carries", STEP, || {
            assert!(carol_run.is_running(), "carol's daemon exited");
            carried = carol.status().carried;
            (carried == Some(committed)).then_some(())
        })
    }));
    assert!(
        found.is_ok(),
        "carol committed {committed} envelopes; once space came back she reports carrying \
         {carried:?}"
    );
    eprintln!(
        "[{:?}] space is back; carol reports carrying {committed}",
        started.elapsed()
    );

    // ... and takes the rest when Alice comes back.
    let alice_run = alice.run(ON_LOOPBACK);
    wait_until(
        &format!("carol to carry all {MESSAGES} envelopes"),
        STEP,
        || {
            assert!(carol_run.is_running(), "carol's daemon exited");
            (carol.status().carried == Some(MESSAGES as u64)).then_some(())
        },
    );
    wait_for_status(&alice, "relayed", MESSAGES);
    let stopped = alice_run.terminate(STOP);
    assert!(stopped.success(), "alice's daemon exited with {stopped}");
    eprintln!("[{:?}] carol carries all {MESSAGES}", started.elapsed());

    // Carol meets Bob.
    let bob_run = bob.run(ON_LOOPBACK);
    wait_until(&format!("bob to receive {MESSAGES} messages"), STEP, || {
        (bob.messages().len() >= MESSAGES).then_some(())
    });
    // Bob's receipts reach Carol before he leaves (each one she stores is logged).
    wait_until(&format!("carol to carry {MESSAGES} receipts"), STEP, || {
        (carol_run.log().matches("ReceiptCarried").count() >= MESSAGES).then_some(())
    });
    let stopped = bob_run.terminate(STOP);
    assert!(stopped.success(), "bob's daemon exited with {stopped}");
    eprintln!("[{:?}] bob has them", started.elapsed());

    // The receipts go back to Alice through Carol.
    let alice_run = alice.run(ON_LOOPBACK);
    wait_for_status(&alice, "delivered", MESSAGES);
    for run in [alice_run, carol_run] {
        let name = run.name.clone();
        let stopped = run.terminate(STOP);
        assert!(stopped.success(), "{name}'s daemon exited with {stopped}");
    }
    eprintln!("[{:?}] alice sees all delivered", started.elapsed());

    // Carol's store is whole (opening checks its counters against its indexes).
    let store = LmdbStore::open(&carol.home.join("store"), LmdbConfig::default())
        .expect("carol's store opens after her disk was full");
    eprintln!("carol's store at the end: {:?}", store.usage().unwrap());
    drop(store);

    bob.assert_received_exactly_once("alice", &texts);
}

/// A tmpfs mounted at `path` (created), unmounted on drop. Inside a private mount namespace,
/// so it also vanishes if the test is killed.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(path),
            "mount -t tmpfs",
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon that escaped its guard must not keep the temp dir from going.
        let _ = output_within(
            Command::new("umount").arg("-l").arg(&self.path),
            "umount",
            Duration::from_secs(10),
        );
    }
}

/// Runs `command`, panicking with its stderr unless it exits 0.
fn run_ok(command: &mut Command, what: &str) {
    let output = output_within(command, what, Duration::from_secs(10));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `path` until its file system is full, then gives `free` bytes back.
fn fill_leaving(path: &Path, free: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("writing the filler: {e}"),
        }
        assert!(written < 1 << 30, "the filler never filled the disk");
    }
    assert!(written > free, "the disk is smaller than the room to leave");
    file.set_len(written - free).unwrap();
    file.sync_all().unwrap();
}

/// Queues `texts` to `to` in `node`'s message database, as `cairn send` does (one process
/// per message would take most of the test's time).
fn queue_all(node: &Node, to: &str, texts: &[String]) {
    let identity = Identity::load(&node.home, None).unwrap();
    let db = AppDb::open(&node.home, &identity).unwrap();
    let recipient = db
        .contact_by_name(to)
        .unwrap()
        .unwrap_or_else(|| panic!("{} has no contact {to}", node.name));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for text in texts {
        db.queue(recipient, text, now).unwrap();
    }
}

/// True when a log line says a disk has no room left.
fn says_no_space(line: &str) -> bool {
    line.to_lowercase().contains("no space left")
}

/// Items Carol reports having stored, over all her meetings so far.
fn received_items(log: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("meeting ended"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("received_items=")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Prints the distinct kinds of lines Carol logged about her full disk, for the record.
fn report_full_disk_log(log: &str) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| says_no_space(l) || l.contains("storage failed"))
        .collect();
    let mut seen = HashSet::new();
    eprintln!("carol logged {} line(s) about her full disk:", lines.len());
    for line in &lines {
        // Without the digits, repeats of one line count once.
        let shape: String = line.chars().filter(|c| !c.is_ascii_digit()).collect();
        if seen.insert(shape) {
            eprintln!("    {line}");
        }
    }
}

/// Waits until `node` has `count` messages with `status`.
fn wait_for_status(node: &Node, status: &str, count: usize) {
    wait_until(
        &format!("{count} message(s) {status} at {}", node.name),
        STEP,
        || (node.count_status(status) == count).then_some(()),
    );
}
