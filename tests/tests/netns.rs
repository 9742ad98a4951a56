//! `cairn run` across network namespaces, with real multicast mDNS on veth links.
//!
//! Three namespaces in a chain, two network segments: Alice's and Bob's are each joined to
//! Carol's by a veth pair, and Carol has an address on both segments. mDNS does not cross
//! segments, so Alice and Bob never see each other: Alice's message can only reach Bob, and
//! the receipt come back, through Carol, who runs the whole time.
//!
//! Everything runs inside namespaces this test creates (named after its pid, so parallel
//! runs do not collide) and removes again, also on panic. Skipped, saying why, where they
//! cannot be made (not root, no iproute2).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_tests::harness::{wait_until, Node};
use cairn_tests::namespace::Netns;

const NETWORK: &str = "river crossing team";

/// Discovery over multicast, a meeting and a sync; generous for a loaded machine.
const STEP: Duration = Duration::from_secs(30);

/// Longest a daemon may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);

#[test]
fn a_node_on_two_segments_carries_between_them() {
    let tag = std::process::id();
    let alice_ns = match Netns::create(&format!("cairn-a-{tag}")) {
        Ok(ns) => ns,
        Err(error) => {
            eprintln!(
                "skipped a_node_on_two_segments_carries_between_them: it needs network \
                 namespaces (`ip netns add`, as root): {error}"
            );
            return;
        }
    };
    let carol_ns = Netns::create(&format!("cairn-c-{tag}")).unwrap();
    let bob_ns = Netns::create(&format!("cairn-b-{tag}")).unwrap();
    // Interface names are per namespace: the same ones in every run.
    alice_ns
        .link_veth(
            ("cairn0", "10.77.1.1/24"),
            &carol_ns,
            ("cairn1", "10.77.1.2/24"),
        )
        .unwrap();
    bob_ns
        .link_veth(
            ("cairn0", "10.77.2.1/24"),
            &carol_ns,
            ("cairn2", "10.77.2.2/24"),
        )
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let alice = Node::init(dir.path(), "alice", NETWORK).in_netns(&alice_ns.name);
    let carol = Node::init(dir.path(), "carol", NETWORK).in_netns(&carol_ns.name);
    let bob = Node::init(dir.path(), "bob", NETWORK).in_netns(&bob_ns.name);
    alice.add_contact(&bob);
    bob.add_contact(&alice);
    const TEXT: &str = "the ford is passable until noon";
    alice.send("bob", TEXT);

    // No interface restriction, default listening address: what a user runs.
    let alice_run = alice.run(&[]);
    let carol_run = carol.run(&[]);
    let bob_run = bob.run(&[]);

    let received = wait_until("bob to receive alice's message through carol", STEP, || {
        bob.messages()
            .into_iter()
            .find(|m| m.direction == "incoming")
    });
    assert_eq!(
        (received.from.as_str(), received.text.as_str()),
        ("alice", TEXT)
    );
    wait_until("alice to get bob's receipt", STEP, || {
        let messages = alice.messages();
        (messages.len() == 1 && messages[0].status == "delivered").then_some(())
    });

    // The links were made over the veth segments, found by multicast: Alice's and Bob's
    // only to Carol, on their own segment.
    let (alice_log, bob_log, carol_log) = (alice_run.log(), bob_run.log(), carol_run.log());
    assert!(
        alice_log.contains("remote=10.77.1.2:"),
        "alice has no link to carol on her segment:\n{alice_log}"
    );
    assert!(
        bob_log.contains("remote=10.77.2.2:"),
        "bob has no link to carol on his segment:\n{bob_log}"
    );
    assert!(
        !alice_log.contains("10.77.2.1") && !bob_log.contains("10.77.1.1"),
        "alice and bob saw each other across segments"
    );
    assert!(
        carol_log.contains("10.77.1.1") && carol_log.contains("10.77.2.1"),
        "carol did not link on both segments:\n{carol_log}"
    );

    for run in [alice_run, bob_run, carol_run] {
        let name = run.name.clone();
        let stopped = run.terminate(STOP);
        assert!(stopped.success(), "{name}'s daemon exited with {stopped}");
    }
    assert_eq!(bob.messages().len(), 1, "bob got the message exactly once");
    assert_eq!(
        carol.messages(),
        vec![],
        "carol cannot read what she carried"
    );
}
