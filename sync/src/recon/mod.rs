//! Set reconciliation: two peers learn which items each lacks, at a cost proportional to
//! the *difference* between their sets, not their size.
//!
//! Pure protocol core (no clock, I/O or randomness: the session passes in the salt). One
//! [`Reconciler`] per side per session, driven like quinn-proto: [`Reconciler::handle_message`]
//! for input, [`Reconciler::poll_message`] for output, [`Reconciler::outcome`] when done.
//!
//! ```text
//!  summarizer S                                   coder C
//!  Summary{count, digest, 16 sketches}  ───────▶  equal count+digest? ──▶ Equal (done: 1 RTT)
//!                                                 else estimate d̂, then either
//!                                       ◀───────  IdList (all of C's short ids), or
//!                                       ◀───────  Symbols 0..m (rateless IBLT, m ≈ 2.2·d̂)
//!  subtract own symbols, peel;
//!  not yet decodable? More              ───────▶  Symbols m..3m  (~10 % of sessions)
//!  decoded: Want(ids S lacks)           ───────▶  done
//! ```
//!
//! Items are named on the wire by session-salted 64-bit short ids ([`Salt::short_id`]).
//! At the end the summarizer knows both directions of the difference and the coder learns,
//! from `Want`, what the summarizer lacks; the summarizer sends the coder what the coder
//! lacks without being asked. Hence [`ReconOutcome`]: `remote_lacks` (our keys to send) on
//! both sides, `local_lacks` (short ids already requested) on the summarizer only.
//!
//! Costs at a million items and 100 differences (`cairn-bench reconcile`): about 40 bytes
//! per difference in 2 round trips (3 when the estimate was low), against ~1.6 KB for
//! negentropy, at a 64 KiB or a 200-byte MTU alike; equal sets cost one round trip of
//! ~50 bytes. CPU: ~50-100 ms per side per session at a million items (short ids and the
//! symbol walk), in release.
//!
//! Limits: a short id shared by two items of one set (probability ≈ N²/2⁶⁵ per session)
//! fails the session with [`ReconError::ShortIdCollision`]; one shared by an item on each
//! side hides that pair until a session with another salt. The caller passes each key once.

mod hash;
mod riblt;
mod summary;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use hash::{Salt, ShortId};
pub use riblt::CodedSymbol;
pub use summary::{Summary, SKETCHES};
pub use wire::{
    ReconMessage, ShortIdList, SymbolList, MAX_IDS_PER_MESSAGE, MAX_MESSAGE_LEN,
    MAX_SYMBOLS_PER_MESSAGE, MIN_MESSAGE_LEN,
};

use hash::SessionHashes;
use riblt::{DecodeStatus, Decoder, Side};

use crate::codec::{BoundedVec, CodecError};
use crate::store::ReconKey;

/// The largest set size a peer may announce. Far above any store Cairn runs, it keeps every
/// cap computed from a peer's claim well inside `u64` and inside the symbol index range.
pub const MAX_PEER_ITEMS: u64 = 1 << 32;

/// What a finished reconciliation found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconOutcome {
    /// Our items the peer lacks: send them. Known on both sides (the coder learns them from
    /// `Want`). Sorted by key.
    pub remote_lacks: Vec<ReconKey>,
    /// Short ids of the peer's items we lack. Only the summarizer learns these (it already
    /// asked for them with `Want`, so the coder will send them); always empty on the coder.
    /// Match arriving items with [`Salt::short_id`]. Sorted.
    pub local_lacks: Vec<ShortId>,
}

/// Why a reconciliation failed. The session is over after any error; a new session (with a
/// new salt) may be tried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconError {
    #[error("malformed reconciliation message: {0}")]
    Malformed(#[from] CodecError),
    #[error("unexpected {got} message while {state}")]
    UnexpectedMessage {
        got: &'static str,
        state: &'static str,
    },
    #[error("symbol stream out of order: expected index {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("coder_count must be present exactly in the first message of a reply")]
    MisplacedCount,
    #[error("peer announced {count} items, more than the {max} accepted")]
    PeerSetTooLarge { count: u64, max: u64 },
    #[error("peer sent more ids than the {announced} it announced")]
    IdListTooLong { announced: u64 },
    #[error("peer's id list ended after {got} of the {announced} ids it announced")]
    IdListTooShort { got: u64, announced: u64 },
    #[error("no decoding within the cap of {cap} symbols")]
    SymbolCapReached { cap: u64 },
    #[error("peer wants {got} items, more than the {have} we hold")]
    TooManyWants { got: u64, have: u64 },
    #[error("peer wants short id {0:#018x}, which is not in our set")]
    UnknownWant(u64),
    #[error("two items share a short id in this session; retry with a new salt")]
    ShortIdCollision,
}

/// One side of one reconciliation session.
#[derive(Debug)]
pub struct Reconciler {
    hashes: SessionHashes,
    keys: Vec<ReconKey>,
    /// `shorts[i]` is the short id of `keys[i]`: 8 bytes per item, the only per-item state.
    shorts: Vec<u64>,
    max_message_len: usize,
    state: State,
    outbox: VecDeque<Outgoing>,
    outcome: Option<ReconOutcome>,
}

#[derive(Debug)]
enum State {
    /// Summarizer: Summary sent, waiting for the coder's first reply message.
    AwaitReply,
    /// Summarizer: receiving a symbol stream.
    Symbols {
        decoder: Decoder,
        batch: Vec<CodedSymbol>,
        cap: u64,
    },
    /// Summarizer: receiving the coder's id list.
    IdList {
        ids: Vec<u64>,
        announced: u64,
    },
    /// Coder: waiting for the Summary.
    AwaitSummary,
    /// Coder: symbols sent up to `sent`; waiting for More or Want.
    Streaming {
        sent: u64,
        cap: u64,
    },
    /// Coder: id list or symbols sent, possibly some of Want received; waiting for Want.
    AwaitWant {
        wants: Vec<u64>,
    },
    Done,
    Failed,
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            Self::AwaitReply => "awaiting the coder's reply",
            Self::Symbols { .. } => "receiving symbols",
            Self::IdList { .. } => "receiving an id list",
            Self::AwaitSummary => "awaiting a summary",
            Self::Streaming { .. } => "awaiting More or Want",
            Self::AwaitWant { .. } => "awaiting Want",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// Queued output; long lists are cut into messages lazily in [`Reconciler::poll_message`].
#[derive(Debug)]
enum Outgoing {
    Message(ReconMessage),
    Symbols {
        next_start: u64,
        coder_count: Option<u64>,
        symbols: Vec<CodedSymbol>,
        pos: usize,
    },
    Ids {
        kind: IdsKind,
        ids: Vec<u64>,
        pos: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum IdsKind {
    IdList { coder_count: Option<u64> },
    Want,
}

impl Reconciler {
    /// The side that opens: its first [`poll_message`](Self::poll_message) is the
    /// [`Summary`] of `keys`. `max_message_len` is clamped to
    /// [`MIN_MESSAGE_LEN`]..=[`MAX_MESSAGE_LEN`].
    pub fn summarizer(salt: Salt, keys: Vec<ReconKey>, max_message_len: usize) -> Self {
        let mut this = Self::new(salt, keys, max_message_len, State::AwaitReply);
        let summary = Summary::of(&this.hashes, &this.shorts);
        this.outbox
            .push_back(Outgoing::Message(ReconMessage::Summary(summary)));
        this
    }

    /// The side that answers a [`Summary`].
    pub fn coder(salt: Salt, keys: Vec<ReconKey>, max_message_len: usize) -> Self {
        Self::new(salt, keys, max_message_len, State::AwaitSummary)
    }

    fn new(salt: Salt, keys: Vec<ReconKey>, max_message_len: usize, state: State) -> Self {
        let hashes = SessionHashes::new(&salt);
        let shorts = keys.iter().map(|&k| hashes.short(k)).collect();
        Self {
            hashes,
            keys,
            shorts,
            max_message_len: max_message_len.clamp(MIN_MESSAGE_LEN, MAX_MESSAGE_LEN),
            state,
            outbox: VecDeque::new(),
            outcome: None,
        }
    }

    /// The result, once both directions of the difference are settled for this side.
    #[must_use]
    pub fn outcome(&self) -> Option<&ReconOutcome> {
        self.outcome.as_ref()
    }

    /// Whether the session ended with an error.
    #[must_use]
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Feeds one message from the peer. After an error the reconciler is failed and
    /// refuses everything.
    pub fn handle_message(&mut self, message: ReconMessage) -> Result<(), ReconError> {
        let result = self.step(message);
        if result.is_err() {
            self.state = State::Failed;
            self.outbox.clear();
        }
        result
    }

    /// The next message to send, each at most `max_message_len` bytes encoded.
    #[must_use]
    pub fn poll_message(&mut self) -> Option<ReconMessage> {
        let max = self.max_message_len;
        let front = self.outbox.front_mut()?;
        let (message, finished) = match front {
            Outgoing::Message(_) => match self.outbox.pop_front() {
                Some(Outgoing::Message(m)) => return Some(m),
                _ => return None,
            },
            Outgoing::Symbols {
                next_start,
                coder_count,
                symbols,
                pos,
            } => {
                let empty = ReconMessage::Symbols {
                    start: *next_start,
                    coder_count: *coder_count,
                    last: true,
                    symbols: BoundedVec::default(),
                };
                let n = wire::items_per_message(max, empty.encoded_len(), CodedSymbol::WIRE_LEN)
                    .max(1)
                    .min(symbols.len() - *pos);
                let last = *pos + n == symbols.len();
                let message = ReconMessage::Symbols {
                    start: *next_start,
                    coder_count: coder_count.take(),
                    last,
                    symbols: BoundedVec(symbols[*pos..*pos + n].to_vec()),
                };
                *pos += n;
                *next_start += n as u64;
                (message, last)
            }
            Outgoing::Ids { kind, ids, pos } => {
                let make = |kind: IdsKind, last: bool, ids: ShortIdList| match kind {
                    IdsKind::IdList { coder_count } => ReconMessage::IdList {
                        coder_count,
                        last,
                        ids,
                    },
                    IdsKind::Want => ReconMessage::Want { last, ids },
                };
                let empty = make(*kind, true, BoundedVec::default());
                let n = wire::items_per_message(max, empty.encoded_len(), 8)
                    .max(1)
                    .min(ids.len() - *pos);
                let last = *pos + n == ids.len();
                let message = make(
                    *kind,
                    last,
                    BoundedVec(ids[*pos..*pos + n].iter().map(|&s| ShortId(s)).collect()),
                );
                *pos += n;
                if let IdsKind::IdList { coder_count } = kind {
                    *coder_count = None;
                }
                (message, last)
            }
        };
        if finished {
            self.outbox.pop_front();
        }
        debug_assert!(message.encoded_len() <= max);
        Some(message)
    }

    fn step(&mut self, message: ReconMessage) -> Result<(), ReconError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        self.state = match (state, message) {
            // ---- coder ----
            (State::AwaitSummary, ReconMessage::Summary(summary)) => {
                self.answer_summary(&summary)?
            }
            (State::Streaming { sent, cap }, ReconMessage::More) => {
                if sent >= cap {
                    return Err(ReconError::SymbolCapReached { cap });
                }
                let len = summary::next_batch_len(sent).min(cap - sent);
                self.queue_symbols(sent, len, None);
                State::Streaming {
                    sent: sent + len,
                    cap,
                }
            }
            (State::Streaming { .. }, ReconMessage::Want { last, ids }) => {
                self.receive_wants(Vec::new(), last, ids.0)?
            }
            (State::AwaitWant { wants }, ReconMessage::Want { last, ids }) => {
                self.receive_wants(wants, last, ids.0)?
            }
            // ---- summarizer ----
            (State::AwaitReply, ReconMessage::Equal) => {
                self.outcome = Some(ReconOutcome::default());
                State::Done
            }
            (
                State::AwaitReply,
                ReconMessage::Symbols {
                    start,
                    coder_count,
                    last,
                    symbols,
                },
            ) => {
                let coder_count = coder_count.ok_or(ReconError::MisplacedCount)?;
                check_peer_count(coder_count)?;
                let cap = symbol_cap(self.shorts.len() as u64, coder_count);
                let state = State::Symbols {
                    decoder: Decoder::default(),
                    batch: Vec::new(),
                    cap,
                };
                self.receive_symbols(state, start, None, last, symbols.0)?
            }
            (
                state @ State::Symbols { .. },
                ReconMessage::Symbols {
                    start,
                    coder_count,
                    last,
                    symbols,
                },
            ) => self.receive_symbols(state, start, coder_count, last, symbols.0)?,
            (
                State::AwaitReply,
                ReconMessage::IdList {
                    coder_count,
                    last,
                    ids,
                },
            ) => {
                let announced = coder_count.ok_or(ReconError::MisplacedCount)?;
                check_peer_count(announced)?;
                self.receive_ids(Vec::new(), announced, None, last, ids.0)?
            }
            (
                State::IdList {
                    ids: received,
                    announced,
                },
                ReconMessage::IdList {
                    coder_count,
                    last,
                    ids,
                },
            ) => self.receive_ids(received, announced, coder_count, last, ids.0)?,
            (state, message) => {
                return Err(ReconError::UnexpectedMessage {
                    got: message.kind(),
                    state: state.describe(),
                })
            }
        };
        Ok(())
    }

    /// Coder: compare, then answer with Equal, an id list or the first symbol batch.
    fn answer_summary(&mut self, theirs: &Summary) -> Result<State, ReconError> {
        check_peer_count(theirs.count)?;
        let ours = Summary::of(&self.hashes, &self.shorts);
        if ours.matches(theirs) {
            self.outbox
                .push_back(Outgoing::Message(ReconMessage::Equal));
            // The summarizer has nothing we lack and lacks nothing of ours.
            self.outcome = Some(ReconOutcome::default());
            return Ok(State::Done);
        }
        let own_count = self.shorts.len() as u64;
        let d_hat = ours.estimate_difference(theirs);
        let cap = symbol_cap(theirs.count, own_count);
        let first = summary::first_batch_len(d_hat).min(cap);
        if summary::prefer_id_list(own_count, first) {
            let mut ids = self.shorts.clone();
            ids.sort_unstable();
            self.outbox.push_back(Outgoing::Ids {
                kind: IdsKind::IdList {
                    coder_count: Some(own_count),
                },
                ids,
                pos: 0,
            });
            return Ok(State::AwaitWant { wants: Vec::new() });
        }
        self.queue_symbols(0, first, Some(own_count));
        Ok(State::Streaming { sent: first, cap })
    }

    fn queue_symbols(&mut self, start: u64, len: u64, coder_count: Option<u64>) {
        // `len` ≤ cap, which is O(set sizes): bounded by our own set (see `symbol_cap`).
        let mut symbols = vec![CodedSymbol::default(); len as usize];
        riblt::encode_range(&self.hashes, &self.shorts, start, &mut symbols);
        self.outbox.push_back(Outgoing::Symbols {
            next_start: start,
            coder_count,
            symbols,
            pos: 0,
        });
    }

    /// Coder: collect the summarizer's wants; on the last message, map them to our keys.
    fn receive_wants(
        &mut self,
        mut wants: Vec<u64>,
        last: bool,
        ids: Vec<ShortId>,
    ) -> Result<State, ReconError> {
        let have = self.shorts.len() as u64;
        let got = wants.len() as u64 + ids.len() as u64;
        if got > have {
            return Err(ReconError::TooManyWants { got, have });
        }
        wants.extend(ids.iter().map(|s| s.0));
        if !last {
            return Ok(State::AwaitWant { wants });
        }
        wants.sort_unstable();
        wants.dedup();
        let mut found = vec![false; wants.len()];
        let mut remote_lacks = Vec::with_capacity(wants.len());
        for (key, short) in self.keys.iter().zip(&self.shorts) {
            if let Ok(i) = wants.binary_search(short) {
                found[i] = true;
                remote_lacks.push(*key);
            }
        }
        if let Some(i) = found.iter().position(|f| !f) {
            return Err(ReconError::UnknownWant(wants[i]));
        }
        remote_lacks.sort_unstable();
        self.outcome = Some(ReconOutcome {
            remote_lacks,
            local_lacks: Vec::new(),
        });
        Ok(State::Done)
    }

    /// Summarizer: one message of the symbol stream; decode at the end of each batch.
    fn receive_symbols(
        &mut self,
        state: State,
        start: u64,
        coder_count: Option<u64>,
        last: bool,
        symbols: Vec<CodedSymbol>,
    ) -> Result<State, ReconError> {
        let State::Symbols {
            mut decoder,
            mut batch,
            cap,
        } = state
        else {
            return Err(ReconError::UnexpectedMessage {
                got: "Symbols",
                state: state.describe(),
            });
        };
        if coder_count.is_some() {
            return Err(ReconError::MisplacedCount);
        }
        let expected = decoder.len() + batch.len() as u64;
        if start != expected {
            return Err(ReconError::OutOfOrder {
                expected,
                got: start,
            });
        }
        if expected + symbols.len() as u64 > cap {
            return Err(ReconError::SymbolCapReached { cap });
        }
        batch.extend_from_slice(&symbols);
        if !last {
            return Ok(State::Symbols {
                decoder,
                batch,
                cap,
            });
        }
        match decoder.add_batch(&self.hashes, &self.shorts, &batch) {
            DecodeStatus::Complete => {
                let mut theirs = Vec::new();
                let mut ours = Vec::new();
                for &(short, side) in decoder.recovered() {
                    match side {
                        Side::Coder => theirs.push(short),
                        Side::Summarizer => ours.push(short),
                    }
                }
                self.finish_summarizer(theirs, ours);
                Ok(State::Done)
            }
            DecodeStatus::Collision => Err(ReconError::ShortIdCollision),
            DecodeStatus::Incomplete if decoder.len() >= cap => {
                Err(ReconError::SymbolCapReached { cap })
            }
            DecodeStatus::Incomplete => {
                self.outbox.push_back(Outgoing::Message(ReconMessage::More));
                Ok(State::Symbols {
                    decoder,
                    batch: Vec::new(),
                    cap,
                })
            }
        }
    }

    /// Summarizer: one message of the coder's id list; diff at the end.
    fn receive_ids(
        &mut self,
        mut received: Vec<u64>,
        announced: u64,
        coder_count: Option<u64>,
        last: bool,
        ids: Vec<ShortId>,
    ) -> Result<State, ReconError> {
        if coder_count.is_some() {
            return Err(ReconError::MisplacedCount);
        }
        let got = received.len() as u64 + ids.len() as u64;
        if got > announced {
            return Err(ReconError::IdListTooLong { announced });
        }
        received.extend(ids.iter().map(|s| s.0));
        if !last {
            return Ok(State::IdList {
                ids: received,
                announced,
            });
        }
        if got != announced {
            return Err(ReconError::IdListTooShort { got, announced });
        }
        received.sort_unstable();
        received.dedup();
        let mut ours = self.shorts.clone();
        ours.sort_unstable();
        ours.dedup();
        // Merge the two sorted lists.
        let (mut theirs_only, mut ours_only) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < received.len() || j < ours.len() {
            match (received.get(i), ours.get(j)) {
                (Some(a), Some(b)) if a == b => {
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a < b => {
                    theirs_only.push(*a);
                    i += 1;
                }
                (Some(a), None) => {
                    theirs_only.push(*a);
                    i += 1;
                }
                (_, Some(b)) => {
                    ours_only.push(*b);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.finish_summarizer(theirs_only, ours_only);
        Ok(State::Done)
    }

    /// Summarizer: the difference is known; queue Want and record the outcome.
    fn finish_summarizer(&mut self, mut theirs_only: Vec<u64>, mut ours_only: Vec<u64>) {
        theirs_only.sort_unstable();
        theirs_only.dedup();
        ours_only.sort_unstable();
        ours_only.dedup();
        let mut remote_lacks: Vec<ReconKey> = self
            .keys
            .iter()
            .zip(&self.shorts)
            .filter(|(_, short)| ours_only.binary_search(short).is_ok())
            .map(|(key, _)| *key)
            .collect();
        remote_lacks.sort_unstable();
        self.outcome = Some(ReconOutcome {
            remote_lacks,
            local_lacks: theirs_only.iter().map(|&s| ShortId(s)).collect(),
        });
        self.outbox.push_back(Outgoing::Ids {
            kind: IdsKind::Want,
            ids: theirs_only,
            pos: 0,
        });
    }
}

fn check_peer_count(count: u64) -> Result<(), ReconError> {
    if count > MAX_PEER_ITEMS {
        return Err(ReconError::PeerSetTooLarge {
            count,
            max: MAX_PEER_ITEMS,
        });
    }
    Ok(())
}

/// The longest symbol stream either side produces or accepts: decoding needs about 1.35-1.7
/// symbols per difference and the difference is at most |S| + |C|. The coder picks the id
/// list whenever its set is small next to the stream, so in practice the cap bounds the
/// coder's work by its own set size.
fn symbol_cap(summarizer_count: u64, coder_count: u64) -> u64 {
    summarizer_count
        .saturating_add(coder_count)
        .saturating_mul(2)
        .saturating_add(64)
}
