//! `cairn-bench reconcile`: our set reconciliation next to negentropy, on the same sets.
//!
//! Two sets of `--n` items share all but `--diff` (half of the differing items on each
//! side); ids are 32 random bytes from a seeded ChaCha RNG. Both protocols run in memory,
//! every message passing through its encoding. We count:
//!
//! - **bytes**: every encoded message, both directions, plus [`FRAMING_BYTES`] per message
//!   for the session framing around it (a message tag and a length);
//! - **round trips**: flights (maximal runs of messages in one direction) halved, rounded
//!   up: Summary → Symbols → Want is 3 flights = 2 round trips;
//! - **ok**: both sides ended knowing exactly the true difference.
//!
//! Our messages are at most `--mtu - 8` bytes (the session keeps 8 bytes of the frame). The
//! negentropy crate refuses frame limits under 4096 bytes, so below that it runs with 4096
//! (its messages would then need fragmenting on the real link; `negentropy_frame_limit`
//! says which limit applied). Negentropy's bytes stop when its initiator knows the
//! difference; the request for the missing items (our `Want`) is not counted for it.
//!
//! Timings: `ours_ms` is a whole session from the raw key lists (short ids, summary,
//! symbols, decoding); `negentropy_ms` excludes building and sorting its storage, which a
//! node keeps between sessions (`negentropy_setup_ms`).

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{bail, Context};
use cairn_sync::envelope::ItemId;
use cairn_sync::recon::{ReconMessage, ReconOutcome, Reconciler, Salt, ShortId};
use cairn_sync::store::{recon_key, ReconKey};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Items in each set.
    #[arg(long, default_value_t = 1_000_000)]
    pub n: u64,
    /// Items in exactly one of the two sets (half on each side).
    #[arg(long, default_value_t = 100)]
    pub diff: u64,
    /// Link frame size in bytes (200 for LoRa, 65536 for LAN).
    #[arg(long, default_value_t = 65536)]
    pub mtu: usize,
    /// Seed for the ids, timestamps and session salt.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON (the only output mode; accepted for symmetry with other benchmarks).
    #[arg(long)]
    pub json: bool,
}

/// Bytes of session framing counted per message (message tag + length varint).
pub const FRAMING_BYTES: usize = 2;
/// Bytes of each frame the session keeps for itself.
const SESSION_OVERHEAD: usize = 8;
/// Smallest frame limit the negentropy crate accepts.
const NEGENTROPY_MIN_FRAME: usize = 4096;

struct Item {
    timestamp: u64,
    id: [u8; 32],
}

/// The two sets: `common` in both, `s_only` at the summarizer / negentropy initiator,
/// `c_only` at the coder / negentropy responder.
struct Sets {
    common: Vec<Item>,
    s_only: Vec<Item>,
    c_only: Vec<Item>,
}

fn generate(args: &Args, rng: &mut ChaCha20Rng) -> Sets {
    let mut item = || {
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        // Creation times spread over 30 days, as in a carrier's buffer.
        let timestamp = 1_790_000_000 + rng.next_u64() % (30 * 24 * 3600);
        Item { timestamp, id }
    };
    let s_count = args.diff / 2;
    let c_count = args.diff - s_count;
    let common_count = args.n.saturating_sub(c_count);
    Sets {
        common: (0..common_count).map(|_| item()).collect(),
        s_only: (0..s_count).map(|_| item()).collect(),
        c_only: (0..c_count).map(|_| item()).collect(),
    }
}

fn key_of(item: &Item) -> ReconKey {
    recon_key(&ItemId(item.id))
}

fn keys<'a>(parts: impl IntoIterator<Item = &'a [Item]>) -> Vec<ReconKey> {
    parts.into_iter().flatten().map(key_of).collect()
}

#[derive(Default)]
struct Traffic {
    bytes: usize,
    messages: usize,
    flights: usize,
    largest_message: usize,
}

impl Traffic {
    fn flight(&mut self, sizes: impl IntoIterator<Item = usize>) {
        let mut any = false;
        for size in sizes {
            any = true;
            self.bytes += size + FRAMING_BYTES;
            self.messages += 1;
            self.largest_message = self.largest_message.max(size);
        }
        self.flights += usize::from(any);
    }

    fn round_trips(&self) -> usize {
        self.flights.div_ceil(2)
    }
}

/// Runs our protocol; returns the traffic and both outcomes.
fn run_ours(
    salt: Salt,
    s_keys: Vec<ReconKey>,
    c_keys: Vec<ReconKey>,
    max_len: usize,
) -> anyhow::Result<(Traffic, ReconOutcome, ReconOutcome)> {
    let mut s = Reconciler::summarizer(salt, s_keys, max_len);
    let mut c = Reconciler::coder(salt, c_keys, max_len);
    let mut traffic = Traffic::default();
    // Each loop iteration is one S→C flight and one C→S flight.
    for _ in 0..64 {
        let to_c = drain(&mut s)?;
        traffic.flight(to_c.iter().map(Vec::len));
        for bytes in &to_c {
            c.handle_message(ReconMessage::from_bytes(bytes)?)
                .context("coder")?;
        }
        let to_s = drain(&mut c)?;
        traffic.flight(to_s.iter().map(Vec::len));
        for bytes in &to_s {
            s.handle_message(ReconMessage::from_bytes(bytes)?)
                .context("summarizer")?;
        }
        if to_c.is_empty() && to_s.is_empty() {
            break;
        }
    }
    match (s.outcome(), c.outcome()) {
        (Some(so), Some(co)) => Ok((traffic, so.clone(), co.clone())),
        _ => bail!("our reconciliation did not finish"),
    }
}

fn drain(r: &mut Reconciler) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(m) = r.poll_message() {
        out.push(m.to_bytes());
    }
    Ok(out)
}

/// Runs negentropy with `s` as initiator; returns traffic, have ids, need ids.
fn run_negentropy(
    s: &NegentropyStorageVector,
    c: &NegentropyStorageVector,
    frame_limit: u64,
) -> anyhow::Result<(Traffic, Vec<Id>, Vec<Id>)> {
    let mut initiator = Negentropy::borrowed(s, frame_limit)?;
    let mut responder = Negentropy::borrowed(c, frame_limit)?;
    let mut traffic = Traffic::default();
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut message = initiator.initiate()?;
    for _ in 0..1000 {
        traffic.flight([message.len()]);
        let response = responder.reconcile(&message)?;
        traffic.flight([response.len()]);
        match initiator.reconcile_with_ids(&response, &mut have, &mut need)? {
            Some(next) => message = next,
            None => return Ok((traffic, have, need)),
        }
    }
    bail!("negentropy did not finish in 1000 round trips")
}

fn storage(parts: [&[Item]; 2]) -> anyhow::Result<NegentropyStorageVector> {
    let mut st = NegentropyStorageVector::with_capacity(parts[0].len() + parts[1].len());
    for item in parts.into_iter().flatten() {
        st.insert(item.timestamp, Id::from_byte_array(item.id))?;
    }
    st.seal()?;
    Ok(st)
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

fn per_diff(bytes: usize, diff: u64) -> Option<f64> {
    (diff > 0).then(|| (bytes as f64 / diff as f64 * 10.0).round() / 10.0)
}

pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    if args.mtu <= SESSION_OVERHEAD || args.mtu > 65536 {
        bail!(
            "--mtu must be between {} and 65536 bytes",
            SESSION_OVERHEAD + 1
        );
    }
    if args.diff > 2 * args.n {
        bail!("--diff must be at most twice --n");
    }
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);
    let sets = generate(args, &mut rng);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let salt = Salt(salt);
    let max_len = args.mtu - SESSION_OVERHEAD;

    // ---- ours ----
    let s_keys = keys([sets.common.as_slice(), &sets.s_only]);
    let c_keys = keys([sets.common.as_slice(), &sets.c_only]);
    let start = Instant::now();
    let (ours, s_out, c_out) = run_ours(salt, s_keys, c_keys, max_len)?;
    let ours_ms = ms(start);
    let sorted = |items: &[Item]| {
        let mut k: Vec<ReconKey> = items.iter().map(key_of).collect();
        k.sort_unstable();
        k
    };
    let mut c_only_short: Vec<ShortId> = sets
        .c_only
        .iter()
        .map(|i| salt.short_id(key_of(i)))
        .collect();
    c_only_short.sort_unstable();
    let ours_ok = s_out.remote_lacks == sorted(&sets.s_only)
        && s_out.local_lacks == c_only_short
        && c_out.remote_lacks == sorted(&sets.c_only);

    // ---- negentropy ----
    let start = Instant::now();
    let s_store = storage([&sets.common, &sets.s_only])?;
    let c_store = storage([&sets.common, &sets.c_only])?;
    let negentropy_setup_ms = ms(start);
    let frame_limit = max_len.max(NEGENTROPY_MIN_FRAME);
    let start = Instant::now();
    let (neg, have, need) = run_negentropy(&s_store, &c_store, frame_limit as u64)?;
    let negentropy_ms = ms(start);
    let ids = |items: &[Item]| items.iter().map(|i| i.id).collect::<BTreeSet<_>>();
    let to_set = |v: &[Id]| v.iter().map(|id| *id.as_bytes()).collect::<BTreeSet<_>>();
    let negentropy_ok = to_set(&have) == ids(&sets.s_only) && to_set(&need) == ids(&sets.c_only);

    Ok(json!({
        "n": args.n,
        "diff": args.diff,
        "mtu": args.mtu,
        "seed": args.seed,
        "max_message_len": max_len,
        "framing_bytes_per_message": FRAMING_BYTES,
        "ok": ours_ok && negentropy_ok,
        "ours_ok": ours_ok,
        "negentropy_ok": negentropy_ok,
        "ours_bytes": ours.bytes,
        "ours_bytes_per_diff": per_diff(ours.bytes, args.diff),
        "ours_round_trips": ours.round_trips(),
        "ours_messages": ours.messages,
        "ours_largest_message": ours.largest_message,
        "ours_ms": ours_ms,
        "negentropy_bytes": neg.bytes,
        "negentropy_bytes_per_diff": per_diff(neg.bytes, args.diff),
        "negentropy_round_trips": neg.round_trips(),
        "negentropy_messages": neg.messages,
        "negentropy_largest_message": neg.largest_message,
        "negentropy_frame_limit": frame_limit,
        "negentropy_ms": negentropy_ms,
        "negentropy_setup_ms": negentropy_setup_ms,
        "ratio": (neg.bytes as f64 / ours.bytes as f64 * 100.0).round() / 100.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_is_exact_for_both_protocols() {
        for (diff, mtu) in [(0, 65536), (1, 200), (40, 200), (40, 65536)] {
            let args = Args {
                n: 3000,
                diff,
                mtu,
                seed: 7,
                json: true,
            };
            let report = run(&args).unwrap();
            assert_eq!(report["ok"], true, "{report}");
            assert!(report["ours_largest_message"].as_u64().unwrap() <= (mtu - 8) as u64);
        }
    }
}
