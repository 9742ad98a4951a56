//! The store survives `SIGKILL`: every batch whose commit returned is there after a restart,
//! and no batch is ever half there.
//!
//! The test runs its own binary again as a child (selected by an environment variable) that
//! commits numbered batches to an [`LmdbStore`] in a loop and prints each batch's number once
//! `commit` returned. The parent kills it with `SIGKILL` at varying moments, reopens the
//! store, and checks it against what the child reported. The same directory is reused across
//! rounds, so each child also starts on a store that was killed under the previous one.

#![allow(clippy::unwrap_used)] // A test: a failed expectation is meant to panic.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cairn_sync::envelope::{ItemId, Priority, ScopeTag};
use cairn_sync::store::{
    ItemKind, ItemMeta, LmdbConfig, LmdbStore, Origin, Store, StoredItem, Usage, WriteBatch,
    WriteOp,
};
use cairn_sync::time::Timestamp;

/// Set in the child's environment to the store directory it must write to.
const CHILD_DIR_VAR: &str = "CAIRN_CRASH_TEST_STORE_DIR";
const CHILD_TEST_NAME: &str = "child_commits_batches_until_killed";
/// Peer-state key under which each batch records its own number, in the same transaction.
const PROGRESS_KEY: &[u8] = b"crash-test-progress";
const ITEMS_PER_BATCH: u32 = 40;
/// Large enough that a commit writes several pages, so kills land inside commits too.
const BODY_LEN: usize = 1500;

fn item(batch: u64, index: u32) -> StoredItem {
    let mut seed = [0u8; 12];
    seed[..8].copy_from_slice(&batch.to_le_bytes());
    seed[8..].copy_from_slice(&index.to_le_bytes());
    let id = ItemId(*blake3::hash(&seed).as_bytes());
    // Bodies differ per item so a torn or misplaced write cannot look right.
    let encoded: Vec<u8> = (0..BODY_LEN).map(|i| id.0[i % 32] ^ (i as u8)).collect();
    StoredItem {
        id,
        meta: ItemMeta {
            kind: ItemKind::Envelope,
            priority: Priority::Normal,
            scope: ScopeTag([index as u8; 8]),
            expires_at_secs: 1_000_000 + batch,
            created_at_secs: batch,
            stored_at: Timestamp::from_secs(batch),
            len: BODY_LEN as u32,
            copies: 1,
            origin: Origin::Remote,
        },
        encoded,
    }
}

fn config() -> LmdbConfig {
    // A small initial map, so children also grow the map (and get killed while doing so).
    LmdbConfig {
        initial_map_bytes: 1 << 20,
        ..LmdbConfig::default()
    }
}

fn progress(store: &LmdbStore) -> Option<u64> {
    let state = store.peer_state(PROGRESS_KEY).unwrap()?;
    Some(u64::from_le_bytes(state.try_into().unwrap()))
}

/// The child: not a test on its own (returns at once unless the parent selected it).
#[test]
fn child_commits_batches_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let mut store = LmdbStore::open(Path::new(&dir), config()).unwrap();
    let mut batch_no = progress(&store).map_or(0, |p| p + 1);
    loop {
        let mut batch = WriteBatch::new();
        for index in 0..ITEMS_PER_BATCH {
            batch.push(WriteOp::PutItem(item(batch_no, index)));
        }
        batch.push(WriteOp::PutPeerState {
            peer: PROGRESS_KEY.to_vec(),
            state: batch_no.to_le_bytes().to_vec(),
        });
        store.commit(batch).unwrap();
        println!("committed {batch_no}");
        batch_no += 1;
    }
}

/// Reopens the store and checks it holds exactly batches `0..=progress`, each whole, with
/// usage counters that match. Returns the progress.
fn check_store(dir: &Path, reported: Option<u64>) -> Option<u64> {
    let store = LmdbStore::open(dir, config()).expect("the store opens after SIGKILL");
    let progress = progress(&store);
    // Every batch whose commit returned (it was printed after) is there.
    assert!(
        progress >= reported,
        "lost a committed batch: store at {progress:?}, child reported {reported:?}"
    );
    let batches = progress.map_or(0, |p| p + 1);
    for batch_no in 0..batches + 2 {
        let present = (0..ITEMS_PER_BATCH)
            .filter(|&i| {
                let expected = item(batch_no, i);
                match store.get(&expected.id).unwrap() {
                    Some(found) => {
                        assert_eq!(found, expected, "item {i} of batch {batch_no} is damaged");
                        true
                    }
                    None => false,
                }
            })
            .count() as u32;
        let expected = if batch_no < batches {
            ITEMS_PER_BATCH
        } else {
            0
        };
        assert_eq!(
            present, expected,
            "batch {batch_no} is half there (progress {progress:?})"
        );
    }
    let items = u64::from(ITEMS_PER_BATCH) * batches;
    assert_eq!(
        store.usage().unwrap(),
        Usage {
            items,
            bytes: items * BODY_LEN as u64
        }
    );
    assert_eq!(
        store.eviction_order(usize::MAX).unwrap().len() as u64,
        items
    );
    progress
}

#[test]
fn committed_batches_survive_sigkill_and_none_is_half_there() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut reported_total: Option<u64> = None;
    // Delays after the child's first reported commit: from "at once" to a few hundred ms.
    for (round, delay_ms) in [0u64, 45, 130, 260, 410].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                CHILD_TEST_NAME,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    if tx.send(n.trim().parse::<u64>().unwrap()).is_err() {
                        break;
                    }
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the child commits");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL on Unix: no destructors, no flush, no goodbye.
        child.wait().unwrap();
        reader.join().unwrap();
        let last = rx.try_iter().last().unwrap_or(first);
        reported_total = Some(last);
        let progress = check_store(dir.path(), reported_total);
        eprintln!("round {round}: killed after batch {last} was reported, store at {progress:?}");
    }
    assert!(reported_total.is_some());
}
