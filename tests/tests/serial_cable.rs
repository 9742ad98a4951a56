//! Two `cairn run` processes joined by a serial cable (`--serial PATH --radio raw`): two
//! pseudo-terminals and a relay the test controls ([`cairn_tests::cable`]). No network at
//! all: both daemons run without the LAN.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use cairn_tests::cable::Cable;
use cairn_tests::harness::{wait_until, Node};

const NETWORK: &str = "river crossing crew";

/// Longest one step may take.
const STEP: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(5);

fn pair(dir: &Path) -> (Node, Node) {
    let alice = Node::init(dir, "alice", NETWORK);
    let bob = Node::init(dir, "bob", NETWORK);
    alice.add_contact(&bob);
    bob.add_contact(&alice);
    (alice, bob)
}

fn on_cable(end: &Path) -> Vec<String> {
    vec![
        "--serial".into(),
        format!("{}:57600", end.display()),
        "--radio".into(),
        "raw".into(),
    ]
}

fn run(node: &Node, end: &Path) -> cairn_tests::harness::Daemon {
    let args = on_cable(end);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.run(&args)
}

fn wait_count(node: &Node, status: &str, count: usize, limit: Duration) {
    wait_until(
        &format!("{count} message(s) {status} at {}", node.name),
        limit,
        || (node.count_status(status) == count).then_some(()),
    );
}

#[test]
fn two_nodes_on_a_cable_exchange_a_message_and_its_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path());
    let cable = Cable::new(dir.path(), None);
    const TEXT: &str = "the ford is passable below the old mill";
    alice.send("bob", TEXT);
    let alice_run = run(&alice, &cable.a);
    let bob_run = run(&bob, &cable.b);
    let got = wait_until("bob to receive the message over the cable", STEP, || {
        bob.messages()
            .into_iter()
            .find(|m| m.direction == "incoming")
    });
    assert_eq!((got.from.as_str(), got.text.as_str()), ("alice", TEXT));
    wait_count(&alice, "delivered", 1, STEP);
    // And the other way.
    bob.send("alice", "understood, crossing at dawn");
    let back = wait_until("alice to receive bob's answer", STEP, || {
        alice
            .messages()
            .into_iter()
            .find(|m| m.direction == "incoming")
    });
    assert_eq!(back.text, "understood, crossing at dawn");
    wait_count(&bob, "delivered", 1, STEP);
    assert!(alice_run.log().contains("meeting") || alice_run.log().contains("LinkUp"));
    for daemon in [alice_run, bob_run] {
        let name = daemon.name.clone();
        let status = daemon.terminate(STOP);
        assert!(status.success(), "{name} exited with {status}");
    }
    let (a_to_b, b_to_a) = cable.carried();
    assert!(a_to_b > 0 && b_to_a > 0);
}

#[test]
fn noise_a_cut_and_an_unplugged_cable_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path());
    // 57 600 baud carries about 5.8 kB/s: slow enough that the faults below land in the
    // middle of the transfer (about 80 kB).
    let mut cable = Cable::new(dir.path(), Some(5_760));
    let texts: Vec<String> = (0..120)
        .map(|i| {
            format!(
                "{i:02} {}",
                "field report: water, food, and the road north. ".repeat(12)
            )
        })
        .collect();
    for text in &texts {
        alice.send("bob", text);
    }
    let alice_run = run(&alice, &cable.a);
    let bob_run = run(&bob, &cable.b);
    wait_until("the transfer to start", STEP, || {
        (cable.carried().0 > 4_000).then_some(())
    });
    // Line noise: garbage between frames and bits flipped inside them.
    cable.inject_noise(b"\x7e\x00\xffgarbage on the line\x7d\x7e\x7e\x01\x02");
    cable.flip_bits_every(997);
    std::thread::sleep(Duration::from_millis(1_500));
    cable.flip_bits_every(0);
    // The cable is cut mid-message for a few seconds.
    cable.cut();
    std::thread::sleep(Duration::from_secs(3));
    cable.mend();
    std::thread::sleep(Duration::from_millis(1_500));
    // Then pulled out and plugged back in (the ports vanish and come back).
    cable.unplug();
    std::thread::sleep(Duration::from_secs(2));
    cable.plug_in();
    wait_count(&bob, "received", texts.len(), Duration::from_secs(120));
    bob.assert_received_exactly_once("alice", &texts);
    wait_count(&alice, "delivered", texts.len(), STEP);
    let alice_log = alice_run.log();
    assert!(
        alice_log.contains("serial port lost"),
        "the unplugged cable was noticed:\n{alice_log}"
    );
    for daemon in [alice_run, bob_run] {
        let name = daemon.name.clone();
        let status = daemon.terminate(STOP);
        assert!(status.success(), "{name} exited with {status}");
    }
}

#[test]
fn a_port_that_does_not_exist_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Node::init(dir.path(), "alice", NETWORK);
    let missing = dir.path().join("no-such-port");
    let output = alice
        .command()
        .arg("run")
        .args(on_cable(&missing))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-port") && stderr.contains("plugged in"),
        "{stderr}"
    );
}
