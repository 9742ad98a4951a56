//! `cairn-bench lan`: two real nodes on loopback, Alice writing to Bob, end to end.
//!
//! Alice and Bob get fresh homes in a temporary directory on disk (LMDB commits are real
//! fsyncs; the report names the filesystem) and pair in person, as `cairn demo` does. Each
//! runs the real daemon in this process ([`NodeHandle`]): the LAN transport with mDNS off
//! (`discovery: false`, Alice dials Bob as a static peer, so nothing multicasts), Noise hop
//! sessions over TCP on 127.0.0.1, the sync engine, and the core task that seals, opens and
//! records. Every text is [`BODY_LEN`] bytes and goes the whole way: `queue` in Alice's
//! message database, sealed into her sync store, synced, stored in Bob's, opened, recorded
//! in his message database, receipt published.
//!
//! Four measurements:
//!
//! - **first delivered**: a fresh pair, one message queued while Alice is down; the clock
//!   runs from Alice's start (TCP connect, handshake, first tick) until Bob has it.
//! - **backlog**: a fresh pair, `--backlog` messages queued while Alice is down; messages
//!   per second from Alice's start until Bob has all: what the nodes move when `queue` (one
//!   transaction per message) is not the limit.
//! - **paced**: `--paced-n` messages, one every `--paced-every-ms`: latency without a backlog.
//! - **throughput**: `--n` messages queued as fast as `queue` goes; messages per second from
//!   the first `queue` to the last arrival, and latency under that load.
//!
//! Alice's messages are queued by a child process (`cairn-bench lan-queue`), as `cairn send`
//! does beside a running daemon: LMDB environments may be opened once per process, and the
//! daemon holds Alice's. Each text carries its index and the Unix millisecond it was queued;
//! arrival is the moment this process hears the node's "received" story, which the core
//! publishes after committing the message to Bob's database. Stories are read through their
//! `Debug` form: the node crate does not export the type by name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cairn_node::app::AppDb;
use cairn_node::daemon::testbed::{create_home, pair_in_person, PairingSide};
use cairn_node::daemon::{NodeHandle, NodeOptions};
use cairn_node::identity::{Identity, IdentityPublicKey};
use cairn_transports::lan::Interfaces;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Messages in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub n: u64,
    /// Messages in the paced (light load) latency run; 0 skips it.
    #[arg(long, default_value_t = 200)]
    pub paced_n: u64,
    /// Milliseconds between paced messages.
    #[arg(long, default_value_t = 20)]
    pub paced_every_ms: u64,
    /// Messages queued while Alice is down, then drained from her start: what the nodes
    /// move when queueing is not the limit (default: as many as --n; 0 skips it).
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Give up when no message arrives for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub stall_secs: u64,
    /// Directory to create the homes in (default: the system temp dir). Put it on the disk
    /// you want to measure: a tmpfs makes fsync free.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print every story the nodes tell on stderr, stamped with Unix milliseconds.
    #[arg(long)]
    pub log_stories: bool,
    /// Print JSON (the only output mode; accepted for symmetry with other benchmarks).
    #[arg(long)]
    pub json: bool,
}

/// `cairn-bench lan-queue`: the child process that queues Alice's messages.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// Alice's home.
    #[arg(long)]
    pub home: PathBuf,
    /// Bob's identity key, 64 hex digits.
    #[arg(long)]
    pub to: String,
    /// Which run the texts belong to (one word).
    #[arg(long)]
    pub run: String,
    #[arg(long)]
    pub n: u64,
    /// Microseconds from one `queue` to the next; 0 queues back to back.
    #[arg(long, default_value_t = 0)]
    pub every_us: u64,
}

/// Bytes of every text.
pub const BODY_LEN: usize = 256;

const BASELINES_NOTE: &str = "for scale, not measured by this benchmark: dtn7-rs moves about \
     1,400 bundles/s and LXMF about 20-30 messages/s over loopback on this machine";

/// Longest wait for one node to start or for the pair to link.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

const ALICE: &str = "Alice";
const BOB: &str = "Bob";

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Text `index` of run `run`, queued at `queued_ms`, padded to [`BODY_LEN`] bytes.
fn text_for(run: &str, index: u64, queued_ms: u64) -> String {
    let mut text = format!("cairn-bench {run} {index:010} {queued_ms:013} ");
    let pad = BODY_LEN.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('.', pad));
    text
}

/// The run, index and queue time a text carries.
fn parse_text(text: &str) -> Option<(&str, u64, u64)> {
    let mut words = text.split(' ');
    if words.next()? != "cairn-bench" {
        return None;
    }
    let run = words.next()?;
    let index = words.next()?.parse().ok()?;
    let queued_ms = words.next()?.parse().ok()?;
    Some((run, index, queued_ms))
}

/// What a story's `Debug` form says in field `name`: a string's contents, an `ItemId(..)`'s
/// hex, or the raw value up to the next comma.
fn field<'a>(debug: &'a str, name: &str) -> Option<&'a str> {
    let start = debug.find(&format!("{name}: "))? + name.len() + 2;
    let rest = &debug[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.split('"').next();
    }
    if let Some(id) = rest.strip_prefix("ItemId(") {
        return id.split(')').next();
    }
    rest.split([',', ' ', '}']).next()
}

/// One story, as heard.
struct Heard {
    at_ms: u64,
    node: String,
    debug: String,
}

impl Heard {
    fn is(&self, node: &str, kind: &str) -> bool {
        self.node == node
            && self
                .debug
                .strip_prefix(kind)
                .is_some_and(|rest| rest.starts_with(' ') || rest.is_empty())
    }
}

/// The stories of both nodes, stamped as they arrive.
struct Ears<S> {
    stories: mpsc::UnboundedReceiver<(String, S)>,
    /// Print every story on stderr (`--log-stories`).
    log: bool,
}

impl<S: std::fmt::Debug> Ears<S> {
    async fn next(&mut self, timeout: Duration) -> Option<Heard> {
        match tokio::time::timeout(timeout, self.stories.recv()).await {
            Ok(Some((node, story))) => {
                let heard = Heard {
                    at_ms: now_ms(),
                    node,
                    debug: format!("{story:?}"),
                };
                if self.log {
                    eprintln!("{} {}: {}", heard.at_ms, heard.node, heard.debug);
                }
                Some(heard)
            }
            _ => None,
        }
    }

    /// Waits for a story `done` accepts; fails after `timeout` naming `step`.
    async fn wait_for(
        &mut self,
        step: &str,
        timeout: Duration,
        mut done: impl FnMut(&Heard) -> bool,
    ) -> anyhow::Result<Heard> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(heard) = self.next(left).await else {
                bail!("timed out after {timeout:?} waiting for: {step}");
            };
            if done(&heard) {
                return Ok(heard);
            }
        }
    }
}

/// Two paired homes.
struct Pair {
    alice_home: PathBuf,
    bob_home: PathBuf,
    alice: Identity,
    bob: Identity,
}

impl Pair {
    fn create(dir: &Path) -> anyhow::Result<Pair> {
        let alice_home = dir.join("alice");
        let bob_home = dir.join("bob");
        let pair = Pair {
            alice: create_home(&alice_home, ALICE, "cairn bench team")?,
            bob: create_home(&bob_home, BOB, "cairn bench team")?,
            alice_home,
            bob_home,
        };
        pair_in_person(
            PairingSide {
                home: &pair.alice_home,
                identity: &pair.alice,
                calls_peer: BOB,
            },
            PairingSide {
                home: &pair.bob_home,
                identity: &pair.bob,
                calls_peer: ALICE,
            },
        )?;
        Ok(pair)
    }

    fn bob_key(&self) -> IdentityPublicKey {
        self.bob.public_key()
    }
}

/// A node on 127.0.0.1 (a port the system picks) with mDNS off, dialing only `peers`.
/// The caller sets `stories`: its type is not exported by name, so only inference can.
fn options(home: &Path, peers: Vec<SocketAddr>) -> NodeOptions {
    NodeOptions {
        home: home.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        interfaces: Interfaces::LoopbackOnly,
        discovery: false,
        peers,
        lan: true,
        serial: Vec::new(),
        stories: None,
    }
}

async fn start(options: NodeOptions) -> anyhow::Result<NodeHandle> {
    let home = options.home.clone();
    tokio::time::timeout(STEP_TIMEOUT, NodeHandle::start(options))
        .await
        .with_context(|| format!("the node in {} took too long to start", home.display()))?
        .with_context(|| format!("starting the node in {}", home.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(hex: &str) -> anyhow::Result<IdentityPublicKey> {
    let mut key = [0u8; 32];
    anyhow::ensure!(hex.len() == 64, "--to must be 64 hex digits");
    for (i, byte) in key.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("--to must be 64 hex digits")?;
    }
    IdentityPublicKey::from_bytes(key).context("--to is not an identity key")
}

/// The child side: queues `--n` texts in Alice's message database, each its own transaction
/// (as `cairn send` does), and reports when it started and finished.
pub fn queue(args: &QueueArgs) -> anyhow::Result<serde_json::Value> {
    let to = parse_key(&args.to)?;
    let identity = Identity::load(&args.home, None)
        .with_context(|| format!("unlocking the identity in {}", args.home.display()))?;
    let app = AppDb::open(&args.home, &identity)
        .with_context(|| format!("opening the message database in {}", args.home.display()))?;
    let first_ms = now_ms();
    let started = Instant::now();
    for index in 0..args.n {
        if args.every_us > 0 {
            let due = Duration::from_micros(args.every_us.saturating_mul(index));
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
        let at = now_ms();
        app.queue(to, &text_for(&args.run, index, at), at / 1000)
            .with_context(|| format!("queueing message {index}"))?;
    }
    Ok(json!({
        "queued": args.n,
        "first_ms": first_ms,
        "last_ms": now_ms(),
        "secs": started.elapsed().as_secs_f64(),
    }))
}

/// Starts the child that queues `n` texts of run `run` at Alice's.
fn spawn_queuer(
    pair: &Pair,
    run: &str,
    n: u64,
    every_us: u64,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("finding this program to run the queuer")?;
    tokio::process::Command::new(exe)
        .arg("lan-queue")
        .arg("--home")
        .arg(&pair.alice_home)
        .args(["--to", &hex(pair.bob_key().as_bytes())])
        .args(["--run", run])
        .args(["--n", &n.to_string()])
        .args(["--every-us", &every_us.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the queuer (cairn-bench lan-queue)")
}

/// Waits for the queuer to exit and reads its report.
async fn finish_queuer(mut child: tokio::process::Child) -> anyhow::Result<serde_json::Value> {
    let (status, stdout) = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_string(&mut stdout).await?;
        }
        let status = child.wait().await?;
        anyhow::Ok((status, stdout))
    })
    .await
    .context("the queuer did not exit")??;
    anyhow::ensure!(status.success(), "the queuer failed: {status}");
    serde_json::from_str(&stdout).context("reading the queuer's report")
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn spread(mut values: Vec<u64>) -> serde_json::Value {
    values.sort_unstable();
    json!({
        "p50_ms": percentile(&values, 50.0),
        "p99_ms": percentile(&values, 99.0),
        "max_ms": values.last(),
    })
}

/// Links that may fail in a row, without a message arriving, before a run gives up.
const LINK_FAILURES_MAX: u32 = 5;

/// Stories further apart than this belong to different ticks of the core.
const BURST_GAP_MS: u64 = 5;

/// What one run of queued messages did.
struct RunReport {
    n: u64,
    /// (queued, sealed at Alice if heard, arrived at Bob), Unix ms, by index.
    messages: Vec<(u64, Option<u64>, u64)>,
    /// Where the clock starts: the first `queue`, or the node's start for a backlog.
    window_start_ms: u64,
    last_arrived_ms: u64,
    first_sealed_ms: Option<u64>,
    last_sealed_ms: Option<u64>,
    /// Bursts of "sealed" stories (more than [`BURST_GAP_MS`] apart): the core tells a
    /// whole tick's batch at once, after the batch, so this counts the ticks that sealed.
    sealing_ticks: u64,
    receipts: u64,
    last_receipt_ms: Option<u64>,
    queuer: serde_json::Value,
}

impl RunReport {
    fn latencies(&self) -> Vec<u64> {
        self.messages
            .iter()
            .map(|(queued, _, arrived)| arrived.saturating_sub(*queued))
            .collect()
    }

    fn to_json(&self) -> serde_json::Value {
        let secs = |from: u64, to: u64| to.saturating_sub(from).max(1) as f64 / 1000.0;
        let window_s = secs(self.window_start_ms, self.last_arrived_ms);
        let queue_s = self.queuer["secs"].as_f64().unwrap_or(0.0);
        let sealing_s = match (self.first_sealed_ms, self.last_sealed_ms) {
            (Some(a), Some(b)) => Some(secs(a, b)),
            _ => None,
        };
        let to_sealed: Vec<u64> = self
            .messages
            .iter()
            .filter_map(|(q, s, _)| s.map(|s| s.saturating_sub(*q)))
            .collect();
        let sealed_to_arrived: Vec<u64> = self
            .messages
            .iter()
            .filter_map(|(_, s, a)| s.map(|s| a.saturating_sub(s)))
            .collect();
        json!({
            "n": self.n,
            "seconds": window_s,
            "messages_per_s": self.n as f64 / window_s,
            "latency": spread(self.latencies()),
            "queue_s": queue_s,
            "queue_per_s": if queue_s > 0.0 { Some(self.n as f64 / queue_s) } else { None },
            "sealed_per_s": sealing_s.map(|s| self.n as f64 / s),
            "sealing_ticks": self.sealing_ticks,
            "sealed_per_tick": self.n as f64 / self.sealing_ticks.max(1) as f64,
            "queued_to_sealed": spread(to_sealed),
            "sealed_to_received": spread(sealed_to_arrived),
            "receipts_back": self.receipts,
            "receipts_all_back_s": self
                .last_receipt_ms
                .filter(|_| self.receipts == self.n)
                .map(|at| secs(self.window_start_ms, at)),
        })
    }
}

/// Listens until Bob has all `n` texts of run `run` (and then until Alice has every receipt,
/// or `stall` passes without one). `queuer` is the child queueing them, if any is.
async fn measure_run<S: std::fmt::Debug>(
    ears: &mut Ears<S>,
    run: &str,
    n: u64,
    stall: Duration,
    mut queuer: Option<tokio::process::Child>,
) -> anyhow::Result<RunReport> {
    let mut arrived: Vec<Option<(u64, u64, String)>> = vec![None; n as usize];
    let mut received = 0u64;
    let mut sealed: HashMap<String, u64> = HashMap::new();
    let mut sealing_ticks = 0u64;
    let mut last_sealed_ms = None;
    let mut first_sealed_ms = None;
    let mut receipts = 0u64;
    let mut last_receipt_ms = None;
    let mut counted_receipts = std::collections::HashSet::new();
    let mut progress = Instant::now();
    // Links that failed since the last progress, and why the last one did.
    let mut failed_links = 0u32;
    let mut link_error = None;
    while received < n || receipts < n {
        let left = stall.saturating_sub(progress.elapsed());
        let heard = match ears.next(left).await {
            Some(heard) if progress.elapsed() < stall => Some(heard),
            _ => None,
        };
        let Some(heard) = heard else {
            if received < n {
                let queuer = queuer.as_mut().and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "stalled: Bob has {received} of {n} messages of run {run:?} and none more \
                     arrived for {stall:?} (Alice sealed {}; queuer exit: {queuer:?}; last link \
                     error: {link_error:?})",
                    sealed.len()
                );
            }
            break; // Every message arrived; some receipts did not come back in time.
        };
        if heard.is(BOB, "Received") {
            let Some((text_run, index, queued_ms)) =
                field(&heard.debug, "text").and_then(parse_text)
            else {
                continue;
            };
            let envelope = field(&heard.debug, "envelope")
                .unwrap_or_default()
                .to_owned();
            let slot = arrived.get_mut(index as usize);
            if text_run == run {
                if let Some(slot @ None) = slot {
                    *slot = Some((queued_ms, heard.at_ms, envelope));
                    received += 1;
                    progress = Instant::now();
                    failed_links = 0;
                }
            }
        } else if heard.is(ALICE, "Sealed") {
            if last_sealed_ms.is_none_or(|last| heard.at_ms > last + BURST_GAP_MS) {
                sealing_ticks += 1;
            }
            first_sealed_ms.get_or_insert(heard.at_ms);
            last_sealed_ms = Some(heard.at_ms);
            if let Some(envelope) = field(&heard.debug, "envelope") {
                sealed.insert(envelope.to_owned(), heard.at_ms);
            }
        } else if heard.is(ALICE, "Meeting") {
            let ended_by = field(&heard.debug, "ended_by").unwrap_or_default();
            if ended_by.starts_with("hop:") || ended_by.starts_with("sync:") {
                failed_links += 1;
                link_error = Some(ended_by.to_owned());
                if failed_links >= LINK_FAILURES_MAX {
                    bail!(
                        "Alice's link to Bob failed {failed_links} times in a row without \
                         delivering (Bob has {received} of {n} messages of run {run:?}): \
                         {ended_by}"
                    );
                }
            }
        } else if heard.is(ALICE, "Delivered") {
            if let Some(envelope) = field(&heard.debug, "envelope") {
                if sealed.contains_key(envelope) && counted_receipts.insert(envelope.to_owned()) {
                    receipts += 1;
                    last_receipt_ms = Some(heard.at_ms);
                    progress = Instant::now();
                }
            }
        }
    }
    let queuer = match queuer {
        Some(child) => finish_queuer(child).await?,
        None => serde_json::Value::Null,
    };
    let messages: Vec<(u64, Option<u64>, u64)> = arrived
        .into_iter()
        .flatten()
        .map(|(queued, at, envelope)| (queued, sealed.get(&envelope).copied(), at))
        .collect();
    Ok(RunReport {
        n,
        window_start_ms: messages.iter().map(|m| m.0).min().unwrap_or(0),
        last_arrived_ms: messages.iter().map(|m| m.2).max().unwrap_or(0),
        messages,
        first_sealed_ms,
        last_sealed_ms,
        sealing_ticks,
        receipts,
        last_receipt_ms,
        queuer,
    })
}

/// A fresh pair, one message queued while Alice is down: how long from Alice's start until
/// Bob has it.
async fn first_delivered(dir: &Path, log: bool) -> anyhow::Result<serde_json::Value> {
    let pair = Pair::create(dir)?;
    let queued_ms = now_ms();
    AppDb::open(&pair.alice_home, &pair.alice)?.queue(
        pair.bob_key(),
        &text_for("first", 0, queued_ms),
        queued_ms / 1000,
    )?;
    let (tx, stories) = mpsc::unbounded_channel();
    let mut ears = Ears { stories, log };
    let mut bob = options(&pair.bob_home, Vec::new());
    bob.stories = Some(tx.clone());
    let bob = start(bob).await?;
    let mut alice = options(&pair.alice_home, bob.local_addr().into_iter().collect());
    alice.stories = Some(tx);
    let started = Instant::now();
    let alice = start(alice).await?;
    let node_start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (mut link_up_ms, mut sealed_ms) = (None, None);
    ears.wait_for("Bob receives the first message", STEP_TIMEOUT, |heard| {
        let since = started.elapsed().as_secs_f64() * 1000.0;
        if heard.is(ALICE, "LinkUp") {
            link_up_ms.get_or_insert(since);
        } else if heard.is(ALICE, "Sealed") {
            sealed_ms.get_or_insert(since);
        }
        heard.is(BOB, "Received")
    })
    .await?;
    let delivered_ms = started.elapsed().as_secs_f64() * 1000.0;
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(json!({
        "first_delivered_ms": delivered_ms,
        "node_start_ms": node_start_ms,
        "alice_link_up_ms": link_up_ms,
        "alice_sealed_ms": sealed_ms,
    }))
}

/// A fresh pair; `n` texts queued while Alice is down (here, one transaction each, as
/// `cairn send` does); then Bob starts, then Alice, and the clock runs from Alice's start
/// until Bob has every text.
async fn backlog_drain(
    dir: &Path,
    n: u64,
    stall: Duration,
    log: bool,
) -> anyhow::Result<serde_json::Value> {
    let pair = Pair::create(dir)?;
    let queue_started = Instant::now();
    {
        let app = AppDb::open(&pair.alice_home, &pair.alice)?;
        for index in 0..n {
            let at = now_ms();
            app.queue(pair.bob_key(), &text_for("backlog", index, at), at / 1000)?;
        }
    }
    let queue_s = queue_started.elapsed().as_secs_f64();
    let (tx, stories) = mpsc::unbounded_channel();
    let mut ears = Ears { stories, log };
    let mut bob = options(&pair.bob_home, Vec::new());
    bob.stories = Some(tx.clone());
    let bob = start(bob).await?;
    let mut alice = options(&pair.alice_home, bob.local_addr().into_iter().collect());
    alice.stories = Some(tx);
    let started_ms = now_ms();
    if log {
        eprintln!("{started_ms} bench: {n} messages queued in {queue_s:.3} s; Alice starts");
    }
    let alice = start(alice).await?;
    let result = measure_run(&mut ears, "backlog", n, stall, None).await;
    // Stop both nodes even when the drain failed: the rest of the benchmark runs after this.
    alice.shutdown().await?;
    bob.shutdown().await?;
    let mut report = result?;
    report.window_start_ms = started_ms;
    let mut json = report.to_json();
    if let Some(object) = json.as_object_mut() {
        // Latency here is mostly time spent queued behind the backlog: not a latency figure.
        object.remove("latency");
        object.remove("queued_to_sealed");
        object.insert("queue_s".into(), json!(queue_s));
        object.insert("queue_per_s_alone".into(), json!(n as f64 / queue_s));
        object.remove("queue_per_s");
    }
    Ok(json)
}

/// The filesystem holding `path`, from the longest matching mount point in
/// `/proc/self/mountinfo`: "ext4 (/dev/vda at /)".
fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(kind), Some(source)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        let mount_point = mount_point.replace("\\040", " ");
        if path.starts_with(&mount_point)
            && best
                .as_ref()
                .is_none_or(|(len, _)| mount_point.len() >= *len)
        {
            best = Some((
                mount_point.len(),
                format!("{kind} ({source} at {mount_point})"),
            ));
        }
    }
    best.map(|(_, fs)| fs).unwrap_or_else(|| "unknown".into())
}

pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    anyhow::ensure!(args.stall_secs > 0, "--stall-secs must be at least 1");
    // Two workers, as the daemon runs: both nodes and this listener share them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<serde_json::Value> {
    let tempdir = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("creating a temporary directory for the homes")?;
    let filesystem = filesystem_of(tempdir.path());
    let stall = Duration::from_secs(args.stall_secs);
    let log = args.log_stories;

    let first = first_delivered(&tempdir.path().join("first"), log).await?;
    let backlog = match args.backlog.unwrap_or(args.n) {
        0 => None,
        // A failed backlog drain is a finding, not a reason to skip the other figures.
        n => Some(
            backlog_drain(&tempdir.path().join("backlog"), n, stall, log)
                .await
                .unwrap_or_else(|error| json!({ "n": n, "error": format!("{error:#}") })),
        ),
    };

    let pair = Pair::create(&tempdir.path().join("run"))?;
    let (tx, stories) = mpsc::unbounded_channel();
    let mut ears = Ears { stories, log };
    let mut bob = options(&pair.bob_home, Vec::new());
    bob.stories = Some(tx.clone());
    let bob = start(bob).await?;
    let mut alice = options(&pair.alice_home, bob.local_addr().into_iter().collect());
    alice.stories = Some(tx);
    let alice = start(alice).await?;
    ears.wait_for("Alice and Bob link", STEP_TIMEOUT, |heard| {
        heard.is(ALICE, "LinkUp")
    })
    .await?;

    let paced = if args.paced_n > 0 {
        let every_us = args.paced_every_ms.saturating_mul(1000);
        let queuer = spawn_queuer(&pair, "paced", args.paced_n, every_us)?;
        let report = measure_run(&mut ears, "paced", args.paced_n, stall, Some(queuer)).await?;
        let mut json = report.to_json();
        json["every_ms"] = json!(args.paced_every_ms);
        Some(json)
    } else {
        None
    };
    let queuer = spawn_queuer(&pair, "bulk", args.n, 0)?;
    let bulk = measure_run(&mut ears, "bulk", args.n, stall, Some(queuer)).await?;
    alice.shutdown().await?;
    bob.shutdown().await?;

    // What Bob's message database holds, read after his node let go of it.
    let counts = AppDb::open(&pair.bob_home, &pair.bob)?.counts()?;
    anyhow::ensure!(
        counts.received == args.n + args.paced_n,
        "Bob's message database holds {} received messages, expected {}",
        counts.received,
        args.n + args.paced_n
    );

    let mut latencies = bulk.latencies();
    latencies.sort_unstable();
    let throughput = bulk.to_json();
    let report = json!({
        "bench": "lan",
        "n": args.n,
        "body_bytes": BODY_LEN,
        "messages_per_s": throughput["messages_per_s"],
        "latency_p50_ms": percentile(&latencies, 50.0),
        "latency_p99_ms": percentile(&latencies, 99.0),
        "first_delivered_ms": first["first_delivered_ms"],
        "filesystem": filesystem,
        "transport": "TCP on 127.0.0.1, Noise hop sessions, mDNS off (static peer)",
        "throughput": throughput,
        "paced": paced,
        "backlog": backlog,
        "first": first,
        "targets": { "messages_per_s_min": 20_000 },
        "baselines_note": BASELINES_NOTE,
    });
    if !args.json {
        eprintln!(
            "{} messages of {BODY_LEN} bytes Alice -> Bob on loopback ({filesystem}): {:.0}/s, \
             latency p50 {} ms p99 {} ms; first delivered after {:.0} ms",
            args.n,
            report["messages_per_s"].as_f64().unwrap_or(0.0),
            report["latency_p50_ms"],
            report["latency_p99_ms"],
            report["first_delivered_ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_body_len_and_say_what_they_are() {
        let text = text_for("bulk", 42, 1_790_000_000_123);
        assert_eq!(text.len(), BODY_LEN);
        assert_eq!(parse_text(&text), Some(("bulk", 42, 1_790_000_000_123)));
        assert_eq!(parse_text("hello there"), None);
    }

    #[test]
    fn fields_come_out_of_story_debug_forms() {
        let debug = r#"Received { from: "Alice", text: "cairn-bench bulk 0000000007 1790000000000 ...", envelope: ItemId(00112233aabbccdd) }"#;
        assert_eq!(field(debug, "from"), Some("Alice"));
        assert_eq!(field(debug, "envelope"), Some("00112233aabbccdd"));
        assert_eq!(
            field(debug, "text").and_then(parse_text),
            Some(("bulk", 7, 1_790_000_000_000))
        );
        assert_eq!(
            field("Sealed { to: \"Bob\", bytes: 371 }", "bytes"),
            Some("371")
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn hex_keys_round_trip() {
        let identity = Identity::generate(&mut rand_core_06::OsRng);
        let key = identity.public_key();
        assert_eq!(parse_key(&hex(key.as_bytes())).unwrap(), key);
        assert!(parse_key("00").is_err());
    }

    /// Two real nodes on loopback: the first message arrives.
    #[test]
    fn the_first_message_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let report = runtime
            .block_on(first_delivered(dir.path(), false))
            .unwrap();
        assert!(report["first_delivered_ms"].as_f64().is_some());
    }
}
