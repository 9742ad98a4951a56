//! `cairn-bench store`: durable ingest into the LMDB store, as a sync session does it.
//!
//! A peer streams envelopes; the engine commits each received frame batch in one write
//! transaction (one fsync). We ingest `--n` real envelopes with 256-byte bodies in batches
//! of `--batch`, then measure what a carrier cares about: envelopes per second, bytes of RAM
//! per stored message in the reconciliation index, disk bytes per message and how long a
//! restart takes (reopen + index rebuild). The same ingest one envelope per commit, over the
//! first min(N, 2000) envelopes, is the in-run baseline that shows what batching buys.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use cairn_sync::envelope::{Envelope, Item, ItemId, Priority, ReceiptLock, ScopeTag};
use cairn_sync::store::{
    ItemMeta, LmdbConfig, LmdbStore, Origin, Store, StoredItem, WriteBatch, WriteOp,
};
use cairn_sync::time::Timestamp;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Envelopes to ingest.
    #[arg(long, default_value_t = 100_000)]
    pub n: u64,
    /// Envelopes per commit (one commit per received frame batch).
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Only print the JSON report (no human summary on stderr).
    #[arg(long)]
    pub json: bool,
    /// Directory to create the temporary stores in (default: the system temp dir). Put it
    /// on the disk you want to measure: a tmpfs makes fsync free.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Seed for the envelope bodies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

const BODY_LEN: usize = 256;
const UNBATCHED_MAX: u64 = 2000;
/// Envelopes are created one per 10 ms of sender time, spread over 16 scopes.
const START_SECS: u64 = 1_790_000_000;

/// Builds envelope `i`: encodes it and hashes the encoding into its id, as the engine does
/// for each received envelope.
fn envelope(i: u64, rng: &mut ChaCha20Rng) -> StoredItem {
    let mut body = vec![0u8; BODY_LEN];
    rng.fill_bytes(&mut body);
    let envelope = Envelope {
        created_at_secs: START_SECS + i / 100,
        lifetime_secs: 14 * 24 * 3600,
        scope: ScopeTag([(i % 16) as u8; 8]),
        priority: Priority::Normal,
        copy_budget: 4,
        receipt_lock: ReceiptLock(body[..12].try_into().unwrap_or([0; 12])),
        body,
    };
    let encoded = envelope.encode();
    let id = envelope.id();
    let item = Item::Envelope(envelope);
    StoredItem {
        id,
        meta: ItemMeta {
            kind: item.kind(),
            priority: item.priority(),
            scope: item.scope(),
            expires_at_secs: item.expires_at_secs(),
            created_at_secs: item.created_at_secs(),
            stored_at: Timestamp::from_secs(START_SECS + i / 100),
            len: encoded.len() as u32,
            copies: 4,
            origin: Origin::Remote,
        },
        encoded,
    }
}

fn config(n: u64) -> LmdbConfig {
    let mut config = LmdbConfig::with_quota(n.saturating_mul(BODY_LEN as u64 + 64));
    config.initial_map_bytes = 64 << 20;
    config
}

/// Ids kept from the ingest to look up after the reopen.
const SAMPLED_IDS: u64 = 1000;

/// Ingests envelopes `0..n` in commits of `batch`; returns the seconds spent building
/// (encode + hash) and committing, and the ids of about [`SAMPLED_IDS`] envelopes spread
/// over the run.
fn ingest(
    store: &mut LmdbStore,
    n: u64,
    batch: u64,
    seed: u64,
) -> anyhow::Result<(f64, Vec<ItemId>)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sample_every = (n / SAMPLED_IDS).max(1);
    let mut sampled = Vec::new();
    let mut elapsed = 0.0;
    let mut next = 0;
    while next < n {
        let end = (next + batch).min(n);
        let started = Instant::now();
        let ops = (next..end)
            .map(|i| {
                let item = envelope(i, &mut rng);
                if i % sample_every == 0 {
                    sampled.push(item.id);
                }
                WriteOp::PutItem(item)
            })
            .collect();
        store
            .commit(WriteBatch { ops })
            .with_context(|| format!("committing envelope {next}.."))?;
        elapsed += started.elapsed().as_secs_f64();
        next = end;
    }
    Ok((elapsed, sampled))
}

fn open(path: &Path, n: u64) -> anyhow::Result<LmdbStore> {
    LmdbStore::open(path, config(n))
        .with_context(|| format!("opening an LMDB store in {}", path.display()))
}

pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let tempdir = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("creating a temporary directory for the stores")?;

    // Baseline: one commit (one fsync) per envelope.
    let unbatched_n = args.n.min(UNBATCHED_MAX);
    let unbatched_dir = tempdir.path().join("unbatched");
    let unbatched_s = {
        let mut store = open(&unbatched_dir, unbatched_n)?;
        ingest(&mut store, unbatched_n, 1, args.seed)?.0
    };
    std::fs::remove_dir_all(&unbatched_dir).ok();

    let path = tempdir.path().join("batched");
    let mut store = open(&path, args.n)?;
    let (ingest_s, sampled) = ingest(&mut store, args.n, args.batch, args.seed)?;
    let usage = store.usage()?;
    anyhow::ensure!(
        usage.items == args.n,
        "stored {} of {} envelopes",
        usage.items,
        args.n
    );
    let index_bytes = store.recon_index_bytes();
    let disk_bytes = store.disk_bytes()?;
    let map_bytes = store.map_bytes();
    drop(store);

    let started = Instant::now();
    let store = open(&path, args.n)?;
    let reopen_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(store.usage()? == usage, "usage changed across reopen");
    let index_bytes_reopened = store.recon_index_bytes();
    // Every offered id is looked up (`contains`) during a sync: what one costs at this size,
    // and a check that the reopened store finds what was ingested.
    let started = Instant::now();
    for id in &sampled {
        anyhow::ensure!(
            store.contains(id)?,
            "an ingested envelope is missing after reopen"
        );
    }
    let contains_us = started.elapsed().as_secs_f64() * 1e6 / sampled.len().max(1) as f64;
    drop(store);

    let n = args.n as f64;
    let per_s = n / ingest_s;
    let unbatched_per_s = unbatched_n as f64 / unbatched_s;
    let report = json!({
        "bench": "store",
        "n": args.n,
        "batch": args.batch,
        "body_bytes": BODY_LEN,
        "stored_bytes": usage.bytes,
        "ingest_s": ingest_s,
        "envelopes_per_s": per_s,
        "commits_per_s": (args.n.div_ceil(args.batch)) as f64 / ingest_s,
        "unbatched_n": unbatched_n,
        "envelopes_per_s_unbatched": unbatched_per_s,
        "ratio": per_s / unbatched_per_s,
        "recon_index_bytes": index_bytes,
        "index_bytes_per_msg": index_bytes as f64 / n,
        "index_bytes_per_msg_after_reopen": index_bytes_reopened as f64 / n,
        "reopen_ms": reopen_ms,
        "contains_us": contains_us,
        "disk_bytes": disk_bytes,
        "disk_bytes_per_msg": disk_bytes as f64 / n,
        "map_bytes": map_bytes,
        "targets": {
            "envelopes_per_s_min": 50_000,
            "index_bytes_per_msg_max": 32,
        },
    });
    if !args.json {
        eprintln!(
            "ingested {} envelopes in batches of {}: {per_s:.0}/s ({unbatched_per_s:.0}/s one per \
             commit), index {:.1} B/msg, disk {:.0} B/msg, reopen {reopen_ms:.0} ms",
            args.n,
            args.batch,
            index_bytes as f64 / n,
            disk_bytes as f64 / n,
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_figure() {
        let args = Args {
            n: 300,
            batch: 100,
            json: true,
            dir: None,
            seed: 7,
        };
        let report = run(&args).unwrap();
        for key in [
            "envelopes_per_s",
            "index_bytes_per_msg",
            "reopen_ms",
            "contains_us",
            "disk_bytes_per_msg",
            "envelopes_per_s_unbatched",
            "ratio",
        ] {
            assert!(
                report[key].as_f64().is_some_and(|v| v > 0.0),
                "{key}: {}",
                report[key]
            );
        }
        assert_eq!(report["unbatched_n"], 300);
    }
}
