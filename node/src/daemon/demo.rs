//! `cairn demo`: three real nodes on this machine tell the story of one message.
//!
//! Alice, Carol (a team member who carries messages) and Bob each get a home in a temporary
//! directory: an identity, an LMDB store, a message database. Alice and Bob pair in person.
//! The nodes run the real daemon: mDNS discovery and TCP, confined to the loopback interface
//! (nothing leaves the machine), Noise hop sessions, the sync engine. Alice and Bob are never
//! up at the same time, so Alice's message can only reach Bob through Carol, and the receipt
//! can only come back the same way. The demo exits 0 once Alice has the receipt.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use super::core::Story;
use super::node::{NodeHandle, NodeOptions};
use super::testbed::{create_home, pair_in_person, PairingSide};
use crate::app::AppDb;
use cairn_transports::lan::Interfaces;

const TEXT: &str = "Water at the east spring is safe. Meet at the north cairn at dusk.";

/// Longest any step may take before the demo gives up and says which step failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

type Stories = mpsc::UnboundedReceiver<(String, Story)>;

struct Cast {
    homes: HashMap<&'static str, PathBuf>,
    names_by_key: HashMap<[u8; 32], &'static str>,
    started: Instant,
}

impl Cast {
    fn say(&self, line: impl AsRef<str>) {
        println!(
            "[{:>6.2} s] {}",
            self.started.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }

    fn who(&self, key: &Option<[u8; 32]>) -> &'static str {
        key.and_then(|k| self.names_by_key.get(&k).copied())
            .unwrap_or("someone")
    }
}

pub fn demo() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_demo())
}

async fn run_demo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut cast = Cast {
        homes: HashMap::new(),
        names_by_key: HashMap::new(),
        started: Instant::now(),
    };
    println!(
        "Cairn demo: three nodes on this machine, over mDNS and TCP on the loopback interface."
    );
    println!("Homes in {}\n", dir.path().display());

    let mut identities = HashMap::new();
    for name in ["Alice", "Carol", "Bob"] {
        let home = dir.path().join(name.to_lowercase());
        let identity = create_home(&home, name, "cairn demo team")?;
        cast.names_by_key
            .insert(*identity.public_key().as_bytes(), name);
        cast.homes.insert(name, home);
        identities.insert(name, identity);
    }
    cast.say("Alice, Carol and Bob each have an identity (Ed25519) and a device key (X25519).");
    pair_in_person(
        PairingSide {
            home: &cast.homes["Alice"],
            identity: &identities["Alice"],
            calls_peer: "Bob",
        },
        PairingSide {
            home: &cast.homes["Bob"],
            identity: &identities["Bob"],
            calls_peer: "Alice",
        },
    )?;
    cast.say("Alice and Bob paired in person: each scanned the other's code, and the phones checked commitments and confirmations.");
    cast.say("Carol is on the same team (same network key) but knows neither of them.");

    let alice_app = AppDb::open(&cast.homes["Alice"], &identities["Alice"])?;
    let bob_key = identities["Bob"].public_key();
    alice_app.queue(bob_key, TEXT, super::shared::now_ms() / 1000)?;
    drop(alice_app);
    cast.say(format!(
        "Alice writes to Bob: \"{TEXT}\" (Bob is nowhere near)."
    ));

    let (tx, mut stories) = mpsc::unbounded_channel();

    println!("\n-- Alice meets Carol --");
    let alice = start(&cast, "Alice", &tx).await?;
    let carol = start(&cast, "Carol", &tx).await?;
    wait_for(
        &cast,
        &mut stories,
        "Carol takes the message from Alice",
        |name, story| name == "Alice" && matches!(story, Story::Relayed { .. }),
    )
    .await?;
    alice.shutdown().await?;
    cast.say("Alice leaves. Only Carol has the message now, and she cannot read it.");
    drain(&cast, &mut stories, Duration::from_millis(300)).await;

    println!("\n-- Carol meets Bob --");
    let bob = start(&cast, "Bob", &tx).await?;
    wait_for(
        &cast,
        &mut stories,
        "Bob receives the message",
        |name, story| name == "Bob" && matches!(story, Story::Received { .. }),
    )
    .await?;
    wait_for(
        &cast,
        &mut stories,
        "Bob's receipt purges Carol's copy",
        |name, story| name == "Carol" && matches!(story, Story::ReceiptCarried { .. }),
    )
    .await?;
    bob.shutdown().await?;
    cast.say("Bob leaves.");
    drain(&cast, &mut stories, Duration::from_millis(300)).await;

    println!("\n-- Alice meets Carol again --");
    let alice = start(&cast, "Alice", &tx).await?;
    wait_for(
        &cast,
        &mut stories,
        "Alice gets Bob's receipt",
        |name, story| name == "Alice" && matches!(story, Story::Delivered { .. }),
    )
    .await?;
    alice.shutdown().await?;
    carol.shutdown().await?;
    drain(&cast, &mut stories, Duration::from_millis(200)).await;

    let alice_app = AppDb::open(&cast.homes["Alice"], &identities["Alice"])?;
    let bob_app = AppDb::open(&cast.homes["Bob"], &identities["Bob"])?;
    let sent = alice_app.messages(None)?;
    let got = bob_app.messages(None)?;
    println!();
    cast.say(format!(
        "Done. Alice's message is {}; Bob has {} message(s): \"{}\".",
        sent.first().map(|m| m.status.as_str()).unwrap_or("missing"),
        got.len(),
        got.first().map(|m| m.text.as_str()).unwrap_or("")
    ));
    if sent.first().map(|m| m.status.as_str()) != Some("delivered") || got.len() != 1 {
        bail!("the message did not make the round trip");
    }
    Ok(())
}

async fn start(
    cast: &Cast,
    name: &'static str,
    stories: &mpsc::UnboundedSender<(String, Story)>,
) -> anyhow::Result<NodeHandle> {
    let node = NodeHandle::start(NodeOptions {
        home: cast.homes[name].clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        interfaces: Interfaces::LoopbackOnly,
        discovery: true,
        peers: Vec::new(),
        lan: true,
        serial: Vec::new(),
        stories: Some(stories.clone()),
    })
    .await
    .with_context(|| format!("starting {name}'s node"))?;
    cast.say(format!(
        "{name} is up, listening on {} and advertising on mDNS (loopback only).",
        node.local_addr().context("the LAN is on")?
    ));
    Ok(node)
}

/// Tells the story until `done` matches one, or fails after [`STEP_TIMEOUT`].
async fn wait_for(
    cast: &Cast,
    stories: &mut Stories,
    step: &str,
    done: impl Fn(&str, &Story) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, stories.recv()).await;
        let Ok(Some((name, story))) = next else {
            bail!("timed out waiting for: {step}");
        };
        tell(cast, &name, &story);
        if done(&name, &story) {
            return Ok(());
        }
    }
}

/// Tells what happens in the next `for` (meetings ending after a node left).
async fn drain(cast: &Cast, stories: &mut Stories, r#for: Duration) {
    let deadline = tokio::time::Instant::now() + r#for;
    while let Ok(Some((name, story))) = tokio::time::timeout_at(deadline, stories.recv()).await {
        tell(cast, &name, &story);
    }
}

fn tell(cast: &Cast, name: &str, story: &Story) {
    let short = |id: &cairn_sync::envelope::ItemId| id.to_hex()[..8].to_owned();
    match story {
        Story::Discovered { addrs } => {
            cast.say(format!("{name} discovers a node on mDNS at {addrs:?}."))
        }
        Story::LinkUp { peer, key } => cast.say(format!(
            "{name} ⇄ {}: Noise handshake done (XXpsk0, identities checked; to {name}, {peer}); syncing.",
            cast.who(&Some(*key))
        )),
        Story::LinkDown { key, .. } => {
            cast.say(format!("{name} ⇄ {}: link closed.", cast.who(&Some(*key))))
        }
        Story::Sealed { to, envelope, bytes } => cast.say(format!(
            "{name} seals the message for {to}: envelope {} ({bytes} bytes, 29 of them sealing).",
            short(envelope)
        )),
        Story::Relayed { envelope } => cast.say(format!(
            "{name} handed envelope {} to a carrier: status \"relayed\".",
            short(envelope)
        )),
        Story::Received { from, text, envelope } => cast.say(format!(
            "{name} opens envelope {} from {from}: \"{text}\". Receipt published.",
            short(envelope)
        )),
        Story::ReceiptCarried { envelope } => cast.say(format!(
            "{name} gets the receipt for {} and drops her copy.",
            short(envelope)
        )),
        Story::Delivered { envelope } => cast.say(format!(
            "{name} gets the receipt for {}: status \"delivered\".",
            short(envelope)
        )),
        Story::Meeting {
            peer,
            items_sent,
            items_received,
            bytes_sent,
            bytes_received,
            millis,
            ..
        } => cast.say(format!(
            "{name}'s meeting with {} ended after {:.2} s: {items_sent} item(s) out, {items_received} in; {bytes_sent} bytes out, {bytes_received} in.",
            cast.who(peer),
            *millis as f64 / 1000.0
        )),
        Story::Queued { .. } => {}
    }
}
