//! `cairn run` over LoRa radios: real daemons on the pseudo-terminals of `cairn-vradio`
//! ([`cairn_tests::vradio`]), which runs the device side of RNode or Meshtastic firmware
//! behind each port and one simulated channel behind all of them. No network at all.
//!
//! What a user relies on: a message crosses the radio to its contact, and the receipt comes
//! back; a node in the middle carries messages between two that cannot hear each other,
//! without being able to read them; a lossy channel delays messages but neither loses nor
//! duplicates them; `cairn radio info` says what is on a port, or that nothing answered.
//!
//! Airtime is real: the channel runs at wall-clock speed, so these tests take seconds
//! (RNode at SF7) to tens of seconds (Meshtastic's LongFast: 1.75 s for a 200-byte frame).
//! Each scenario has one deadline for all its waits, so a failing one stops in bounded time.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_tests::cable::Cable;
use cairn_tests::harness::{output_within, strip_ansi, wait_until, Daemon, Node};
use cairn_tests::vradio::{VirtualRadios, VradioConfig};

const NETWORK: &str = "ridge line relay";

/// Longest a scenario at SF7 may wait in all (they take 5 to 25 s).
const SCENARIO_LIMIT: Duration = Duration::from_secs(75);
/// The line switched on at once: the two ends are hidden from each other and their frames
/// collide at the middle, so a frame may be lost several times in a row, and the ARQ doubles
/// its timeout on each retry (5 s, 10 s, 21 s, 42 s at SF7). Usually 20 to 35 s; three losses
/// of one frame in a row take 78 s of waiting alone.
const AT_ONCE_LIMIT: Duration = Duration::from_secs(180);
/// The same on Meshtastic's LongFast, eight times the airtime of SF7 (about 20 s).
const LONG_FAST_LIMIT: Duration = Duration::from_secs(90);
const STOP: Duration = Duration::from_secs(10);
/// How long after the first two nodes of a line come on the air the third one does: past
/// the time the middle node holds back its answer to a stranger's beacon (see
/// [`carried_along_a_line`]).
const BEACON_ANSWER_HOLD: Duration = Duration::from_secs(13);
/// Seed of the lossy channel's random loss, drawn per delivery in order: with this one the
/// first 12 frames (beacons, the handshake, the first data) get through, and about one in
/// five after them is lost (five or so in the test's exchange). A lost first beacon is not
/// what that test is about, and costs a whole beacon interval (76 to 114 s at SF7).
const LOSS_SEED: u64 = 5;
/// Longest `cairn radio info` may take (it waits `--wait` seconds at most).
const INFO_LIMIT: Duration = Duration::from_secs(20);

/// Two contacts, `a` and `b`.
fn contacts(dir: &Path, a: &str, b: &str) -> (Node, Node) {
    let first = Node::init(dir, a, NETWORK);
    let second = Node::init(dir, b, NETWORK);
    first.add_contact(&second);
    second.add_contact(&first);
    (first, second)
}

/// `cairn run --serial PORT --radio KIND`.
fn run_on(node: &Node, port: &Path, kind: &str) -> Daemon {
    let port = port.display().to_string();
    node.run(&["--serial", &port, "--radio", kind])
}

/// One deadline for every wait of a scenario.
#[derive(Clone, Copy, Debug)]
struct Deadline(Instant);

impl Deadline {
    fn after(limit: Duration) -> Self {
        Self(Instant::now() + limit)
    }

    /// Time left (zero once past: a wait then checks once and fails).
    fn left(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

fn wait_count(node: &Node, status: &str, count: usize, deadline: Deadline) {
    wait_until(
        &format!("{count} message(s) {status} at {}", node.name),
        deadline.left(),
        || (node.count_status(status) == count).then_some(()),
    );
}

/// Stops `node`'s daemon with SIGTERM (so it logs how its meetings ended) and returns its
/// whole log (each test's homes are new: the log holds this run only).
fn stop(node: &Node, daemon: Daemon) -> String {
    let status = daemon.terminate(STOP);
    assert!(status.success(), "{} exited with {status}", node.name);
    let bytes = std::fs::read(node.home.with_extension("log")).unwrap();
    strip_ansi(&String::from_utf8_lossy(&bytes))
}

/// The `LinkUp` stories in a daemon log: who the node met, as it names them.
fn link_ups(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("LinkUp { peer: \"")?;
            Some(rest.split_once('"')?.0.to_owned())
        })
        .collect()
}

/// The distinct peer keys a node linked with (the `key: [...]` of its `LinkUp` stories).
fn linked_keys(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("LinkUp { peer: ")?;
            let (_, key) = rest.split_once("key: [")?;
            Some(key.split_once(']')?.0.to_owned())
        })
        .collect()
}

/// Items a node sent and received over all its meetings, from its "meeting ended" lines.
fn items_moved(log: &str) -> (u64, u64) {
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|line| line.contains("meeting ended"))
        .fold((0, 0), |(sent, received), line| {
            (
                sent + field(line, "sent_items="),
                received + field(line, "received_items="),
            )
        })
}

#[test]
fn a_node_in_the_middle_carries_a_message_and_its_receipt_without_reading_them() {
    carried_along_a_line(Start::OneEndFirst);
}

/// The same with the three nodes switched on together: both ends then answer the middle at
/// once, and neither hears the other (hidden terminals), so their frames can collide at the
/// middle. The frame link gets out of it: handshakes and retransmissions are jittered per
/// session, answers wait a random time of up to one largest frame, the middle runs one
/// handshake of its own at a time, and an end whose answering beacon was lost starts the
/// handshake itself.
#[test]
fn a_line_switched_on_at_once_carries_a_message_and_its_receipt() {
    carried_along_a_line(Start::AllAtOnce);
}

/// How the nodes of [`carried_along_a_line`] come on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Alice and Carol first; Bob once Carol has Alice's message and answers strangers'
    /// beacons again. One conversation on the air at a time while peers find each other.
    OneEndFirst,
    /// All three together.
    AllAtOnce,
}

/// Alice and Bob, contacts, at the ends of a line of three radios; Carol, who knows neither,
/// in the middle. Alice's message reaches Bob through Carol and Bob's receipt comes back the
/// same way; Carol reads nothing; Alice and Bob never hear each other.
fn carried_along_a_line(start: Start) {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = contacts(dir.path(), "alice", "bob");
    // Carol knows neither of them: she only carries.
    let carol = Node::init(dir.path(), "carol", NETWORK);
    // radio0 - radio1 - radio2: only the middle one hears both ends.
    let radios = VirtualRadios::start(dir.path(), &VradioConfig::new(3, "rnode").line());
    const TEXT: &str = "the pass is clear, cross before the snow";
    alice.send("bob", TEXT);
    let deadline = Deadline::after(match start {
        Start::OneEndFirst => SCENARIO_LIMIT,
        Start::AllAtOnce => AT_ONCE_LIMIT,
    });
    let started = Instant::now();
    let carol_run = run_on(&carol, radios.port(1), "rnode");
    let alice_run = run_on(&alice, radios.port(0), "rnode");
    if start == Start::OneEndFirst {
        // Carol has the message (a carrier acknowledged it) before Bob is on the air.
        wait_count(&alice, "relayed", 1, deadline);
        // A node does not answer a stranger's beacon within a tenth of its beacon interval
        // of its own last beacon (about 9.5 s at SF7), and then waits for the stranger's
        // next one, 76 to 114 s later. Carol's beacons all go in her first 2.5 s or so: Bob
        // comes on the air after that window, as someone walking into range usually would.
        std::thread::sleep(BEACON_ANSWER_HOLD.saturating_sub(started.elapsed()));
    }
    let bob_run = run_on(&bob, radios.port(2), "rnode");

    let got = wait_until(
        "bob to receive alice's message through carol",
        deadline.left(),
        || {
            bob.messages()
                .into_iter()
                .find(|m| m.direction == "incoming")
        },
    );
    assert_eq!((got.from.as_str(), got.text.as_str()), ("alice", TEXT));
    // Bob's receipt went back the same way.
    wait_count(&alice, "delivered", 1, deadline);
    bob.assert_received_exactly_once("alice", &[TEXT.to_owned()]);
    assert!(
        carol.messages().is_empty(),
        "carol carried the envelope but has no message of her own"
    );
    let carol_status = carol.status();
    assert_eq!(
        (carol_status.received, carol_status.queued),
        (0, 0),
        "{carol_status:?}"
    );

    let alice_log = stop(&alice, alice_run);
    let bob_log = stop(&bob, bob_run);
    let carol_log = stop(&carol, carol_run);
    let stats = radios.stop();
    // Alice and Bob each met one node, the same one, and never each other.
    let (alice_met, bob_met) = (link_ups(&alice_log), link_ups(&bob_log));
    assert!(
        !alice_met.is_empty() && !alice_met.iter().any(|peer| peer == "bob"),
        "alice met {alice_met:?}"
    );
    assert!(
        !bob_met.is_empty() && !bob_met.iter().any(|peer| peer == "alice"),
        "bob met {bob_met:?}"
    );
    assert_eq!(linked_keys(&alice_log), linked_keys(&bob_log));
    assert_eq!(linked_keys(&carol_log).len(), 2, "carol met both ends");
    // Carol took the envelope from Alice and the receipt from Bob, and passed each on.
    let (sent, received) = items_moved(&carol_log);
    assert!(
        sent >= 2 && received >= 2,
        "carol sent {sent} and received {received} items"
    );
    // On the air: the ends only ever heard frames the middle sent.
    for end in [0, 2] {
        let heard = stats[end].frames_delivered
            + stats[end].lost_to_collision
            + stats[end].lost_to_half_duplex
            + stats[end].lost_at_random;
        assert!(
            stats[end].frames_delivered > 0 && heard <= stats[1].frames_sent,
            "radio{end} heard more than radio1 sent: {stats:?}"
        );
    }
}

#[test]
fn two_nodes_on_meshtastic_devices_exchange_a_message_and_its_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = contacts(dir.path(), "alice", "bob");
    let radios = VirtualRadios::start(dir.path(), &VradioConfig::new(2, "meshtastic"));
    const TEXT: &str = "meet at the lower hut at noon";
    alice.send("bob", TEXT);
    let deadline = Deadline::after(LONG_FAST_LIMIT);
    let alice_run = run_on(&alice, radios.port(0), "meshtastic");
    let bob_run = run_on(&bob, radios.port(1), "meshtastic");
    let got = wait_until(
        "bob to receive the message over meshtastic",
        deadline.left(),
        || {
            bob.messages()
                .into_iter()
                .find(|m| m.direction == "incoming")
        },
    );
    assert_eq!((got.from.as_str(), got.text.as_str()), ("alice", TEXT));
    wait_count(&alice, "delivered", 1, deadline);
    bob.assert_received_exactly_once("alice", &[TEXT.to_owned()]);
    let alice_log = stop(&alice, alice_run);
    stop(&bob, bob_run);
    assert!(
        alice_log.contains("Meshtastic 2.5.0-virtual"),
        "alice's daemon saw the meshtastic device:\n{alice_log}"
    );
    let stats = radios.stop();
    assert!(stats.iter().all(|radio| radio.frames_sent > 0), "{stats:?}");
}

#[test]
fn a_lossy_channel_delivers_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = contacts(dir.path(), "alice", "bob");
    // One frame in five lost at each receiver.
    let radios = VirtualRadios::start(
        dir.path(),
        &VradioConfig::new(2, "rnode").loss(0.2, LOSS_SEED),
    );
    // Ten messages, the longer ones more than a frame each.
    let texts: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "{i}: water at the spring, wood in the shed, {}",
                "ok ".repeat(i * 8)
            )
        })
        .collect();
    for text in &texts {
        alice.send("bob", text);
    }
    let deadline = Deadline::after(SCENARIO_LIMIT);
    let alice_run = run_on(&alice, radios.port(0), "rnode");
    let bob_run = run_on(&bob, radios.port(1), "rnode");
    wait_count(&bob, "received", texts.len(), deadline);
    wait_count(&alice, "delivered", texts.len(), deadline);
    bob.assert_received_exactly_once("alice", &texts);
    stop(&alice, alice_run);
    stop(&bob, bob_run);
    let stats = radios.stop();
    let lost: u64 = stats.iter().map(|radio| radio.lost_at_random).sum();
    assert!(lost > 0, "the channel did lose frames: {stats:?}");
}

/// `cairn --home DIR/home radio info ARGS`, with its exit code, stdout and stderr. (The
/// command needs no node, but a home of the test's own keeps it away from the real one.)
fn radio_info(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(cairn_tests::harness::cairn_bin());
    command
        .arg("--home")
        .arg(dir.join("home"))
        .args(["radio", "info"])
        .args(args)
        .env("NO_COLOR", "1");
    let output = output_within(&mut command, "`cairn radio info`", INFO_LIMIT);
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn radio_info_shows_what_an_rnode_reports_and_the_settings_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let radios = VirtualRadios::start(dir.path(), &VradioConfig::new(1, "rnode"));
    let port = radios.port(0).display().to_string();
    let (code, out, err) = radio_info(dir.path(), &[&port, "--radio", "rnode", "--sf", "9"]);
    assert_eq!(code, Some(0), "{err}");
    let line = |name: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line in:\n{out}"))
            .to_owned()
    };
    assert!(line("firmware: ").starts_with("RNode "), "{out}");
    assert!(line("lora: ").contains("SF9"), "{out}");
    radios.stop();
}

#[test]
fn radio_info_shows_each_meshtastic_device_with_its_own_node_number() {
    let dir = tempfile::tempdir().unwrap();
    let radios = VirtualRadios::start(dir.path(), &VradioConfig::new(2, "meshtastic"));
    let mut nodes = BTreeSet::new();
    for port in &radios.ports {
        let port = port.display().to_string();
        let (code, out, err) = radio_info(dir.path(), &[&port, "--radio", "meshtastic"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("firmware: Meshtastic 2.5.0-virtual"), "{out}");
        let node = out
            .lines()
            .find_map(|line| line.strip_prefix("node: "))
            .unwrap_or_else(|| panic!("no node line in:\n{out}"));
        nodes.insert(node.to_owned());
    }
    assert_eq!(nodes.len(), 2, "two devices, two node numbers: {nodes:?}");
    radios.stop();
}

#[test]
fn radio_info_on_a_port_where_nothing_answers_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    // A serial line with nothing on the other end.
    let cable = Cable::new(dir.path(), None);
    let port = cable.a.display().to_string();
    let (code, out, err) = radio_info(dir.path(), &[&port, "--radio", "rnode", "--wait", "3"]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("did not answer"),
        "{err}"
    );
    assert!(lines[0].contains(&port), "the error names the port: {err}");
}

/// `cairn pair NAME --serial PORT --radio rnode`, started; returns the child and the pairing
/// code it printed first.
fn start_pairing(node: &Node, name: &str, port: &Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let port = port.display().to_string();
    let mut child = node
        .command()
        .args([
            "pair", name, "--serial", &port, "--radio", "rnode", "--wait", "60",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let code = lines.next().unwrap().unwrap();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, code)
}

/// Two people with radios and no network pair in person: each types the other's pairing
/// code, the pairing runs over the air (sharing the channel, losing and resending frames as
/// need be), both record the other as verified in person with keys of their own, and a
/// message then goes over the radio sealed with them.
#[test]
fn two_people_pair_over_their_radios_and_then_message() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let alice = Node::init(dir.path(), "alice", NETWORK);
    let bob = Node::init(dir.path(), "bob", NETWORK);
    let radios = VirtualRadios::start(dir.path(), &VradioConfig::new(2, "rnode"));
    let deadline = Deadline::after(SCENARIO_LIMIT);
    let (mut at_alice, alice_code) = start_pairing(&alice, "bob", radios.port(0));
    let (mut at_bob, bob_code) = start_pairing(&bob, "alice", radios.port(1));
    assert!(alice_code.starts_with("cairn1:"), "{alice_code}");
    writeln!(at_alice.stdin.take().unwrap(), "{bob_code}").unwrap();
    writeln!(at_bob.stdin.take().unwrap(), "{alice_code}").unwrap();
    for (who, child) in [("alice", &mut at_alice), ("bob", &mut at_bob)] {
        let status =
            cairn_tests::harness::wait_child(child, &format!("{who}'s pairing"), deadline.left());
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "{who}'s pairing failed: {stderr}");
    }
    for (node, other) in [(&alice, "bob"), (&bob, "alice")] {
        let list = node.cli(&["contacts", "list", "--json"]);
        let contact: serde_json::Value =
            serde_json::from_str(list.lines().next().unwrap()).unwrap();
        assert_eq!(contact["name"], other);
        assert_eq!(contact["verification"], "verified-in-person", "{list}");
    }

    const TEXT: &str = "paired on the ridge, no network needed";
    alice.send("bob", TEXT);
    let alice_run = run_on(&alice, radios.port(0), "rnode");
    let bob_run = run_on(&bob, radios.port(1), "rnode");
    wait_count(&alice, "delivered", 1, deadline);
    bob.assert_received_exactly_once("alice", &[TEXT.to_owned()]);
    stop(&alice, alice_run);
    stop(&bob, bob_run);
    radios.stop();
}
