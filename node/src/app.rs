//! The application's message database: what the user sent and received, and how far each
//! outgoing message has got. Not the sync store: that one holds sealed envelopes (ours and
//! others') for carrying; this one holds the user's conversations, for the `cairn` command and
//! the daemon, sealed under the identity's storage key ([`crate::at_rest`]): without the
//! identity (and its passphrase, if it has one) the files show how many messages there are,
//! not who wrote what to whom.
//!
//! An LMDB environment in `HOME/app/`, shared by every process of the node at once: the
//! `cairn` command queues messages and reads them while the daemon seals, delivers and records
//! them. LMDB arbitrates between the processes with its lock file, and this module keeps no
//! in-memory copy of anything stored, so each call sees what the others committed. Each
//! write method is one LMDB transaction: a crash leaves it done or not done, never half done.
//!
//! A message's life:
//!
//! ```text
//! outgoing:  queue ─► Queued ─mark_sealed─► Queued (envelope set) ─► Relayed ─► Delivered
//!                                                                  └────────────► Delivered
//! incoming:  record_received ─► Received
//! ```
//!
//! Statuses only move forward: a late "relayed" report never turns a delivered message back.
//!
//! ```
//! use cairn_node::app::{AppDb, Status};
//! # use rand_core_06::SeedableRng;
//! # let mut rng = rand_chacha_03::ChaCha20Rng::seed_from_u64(1);
//! # let me = cairn_node::identity::Identity::generate(&mut rng);
//! # let bob = cairn_node::identity::Identity::generate(&mut rng).public_key();
//! let home = tempfile::tempdir().unwrap();
//! let db = AppDb::open(home.path(), &me).unwrap();
//! let id = db.queue(bob, "meet at the ridge", 1_780_000_000).unwrap();
//! assert_eq!(db.queued(10).unwrap()[0].id, id);
//! assert_eq!(db.messages(Some(&bob)).unwrap()[0].status, Status::Queued);
//! ```
//!
//! Record format (value of `messages`, keyed by id as 8 big-endian bytes): `version(1) ‖
//! direction(1) ‖ status(1) ‖ has envelope(1) ‖ envelope(32) ‖ sealed(flags(1) ‖ peer(32) ‖
//! sent_at(u64 LE) ‖ received_at(u64 LE) ‖ text (UTF-8, the rest))`, sealed with the id,
//! version and direction as associated data; `flags` says which times are present (absent ones
//! are zeros). What changes as a message travels (its status and envelope) stays outside the
//! seal, so following a message costs no cryptography: the status says no more than the
//! counters beside it, and envelope ids are public on the mesh.
//! Contact names are indexed by keyed hashes of the name and of the identity, each entry
//! sealed. Schema 1 kept all of it in the clear; opening such a database seals it, in one
//! transaction (LMDB does not wipe the pages it frees, so remnants of the clear records can
//! stay in the file until their pages are reused).

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use cairn_sync::envelope::ItemId;
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithTls};

use crate::at_rest::SealKey;
use crate::contact::DisplayName;
use crate::identity::{private_file, Identity, IdentityPublicKey};

/// Longest message text, in UTF-8 bytes. Far below what an envelope can carry
/// ([`cairn_sync::envelope::MAX_BODY_LEN`]), so the sealing overhead and any framing the daemon
/// adds always fit; long enough for any text message a person types.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Directory of the database inside the node's home.
pub const APP_DIR_NAME: &str = "app";

/// The schema this build reads and writes.
const SCHEMA_VERSION: u32 = 2;
/// The schema that kept everything in the clear.
const SCHEMA_CLEAR: u32 = 1;
const RECORD_VERSION: u8 = 2;
const RECORD_VERSION_CLEAR: u8 = 1;
/// version, direction, status, has envelope, envelope: what a record keeps outside its seal.
const RECORD_HEADER_LEN: usize = 1 + 1 + 1 + 1 + 32;
/// flags, peer, sent_at, received_at: the sealed part before the text.
const RECORD_SECRET_LEN: usize = 1 + 32 + 8 + 8;
/// Schema 1's record (everything in the clear): version, direction, status, flags, peer,
/// sent_at, received_at, envelope, then the text.
const RECORD_CLEAR_LEN: usize = 1 + 1 + 1 + 1 + 32 + 8 + 8 + 32;
const FLAG_SENT_AT: u8 = 0x01;
const FLAG_RECEIVED_AT: u8 = 0x02;
const FLAG_ENVELOPE: u8 = 0x04;

const KEY_SCHEMA: &[u8] = b"schema";
const KEY_NEXT_ID: &[u8] = b"next_id";

/// The map starts small (LMDB files are sparse, but the map is reserved address space) and
/// doubles when full, up to [`MAX_MAP_BYTES`].
// A map is address space, not disk: the file grows only as pages are written. Starting at
// 1 GiB means two processes sharing the database (the CLI and the daemon) practically never
// meet a resize by the other (MDB_MAP_RESIZED), which LMDB makes awkward to adopt.
const INITIAL_MAP_BYTES: usize = 1 << 30;
/// 16 GiB on 64-bit targets (millions of maximum-length messages), 1 GiB elsewhere.
const MAX_MAP_BYTES: u64 = 16 << 30;
/// LMDB's map size must be a multiple of the OS page size; 64 KiB covers every platform.
const MAP_GRANULE: usize = 64 * 1024;
/// Attempts at one transaction before giving up (each failed one grew or re-read the map).
const MAX_ATTEMPTS: usize = 64;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written on this node, for a contact.
    Outgoing,
    /// From a contact, to this node.
    Incoming,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Direction::Outgoing => 0,
            Direction::Incoming => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Direction::Outgoing),
            1 => Some(Direction::Incoming),
            _ => None,
        }
    }
}

/// How far a message has got. Outgoing messages go `Queued` → `Relayed` → `Delivered` and
/// never back; incoming ones are `Received`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Written, not yet handed to any other node.
    Queued,
    /// At least one other node carries it.
    Relayed,
    /// The recipient acknowledged it.
    Delivered,
    /// An incoming message.
    Received,
}

impl Status {
    /// The name scripts see (`cairn messages --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Relayed => "relayed",
            Status::Delivered => "delivered",
            Status::Received => "received",
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Status::Queued => 0,
            Status::Relayed => 1,
            Status::Delivered => 2,
            Status::Received => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Status::Queued),
            1 => Some(Status::Relayed),
            2 => Some(Status::Delivered),
            3 => Some(Status::Received),
            _ => None,
        }
    }

    /// Key of this status's counter in the `meta` table.
    fn counter_key(self) -> &'static [u8] {
        match self {
            Status::Queued => b"count/queued",
            Status::Relayed => b"count/relayed",
            Status::Delivered => b"count/delivered",
            Status::Received => b"count/received",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Local to this node, increasing in the order messages were written or received.
    pub id: u64,
    pub direction: Direction,
    /// The contact: recipient of an outgoing message, sender of an incoming one.
    pub peer: IdentityPublicKey,
    pub text: String,
    /// Unix seconds: when it was written (outgoing), or the sender's claim (incoming).
    pub sent_at: Option<u64>,
    /// Unix seconds this node received it (incoming); unknown for outgoing messages.
    pub received_at: Option<u64>,
    pub status: Status,
    /// The sealed envelope in the sync store, once the daemon made it.
    pub envelope: Option<ItemId>,
}

/// A message that arrived, for [`AppDb::record_received_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub from: IdentityPublicKey,
    pub text: String,
    /// The sender's claim, unix seconds.
    pub sent_at: u64,
    /// When this node received it, unix seconds.
    pub received_at: u64,
    pub envelope: ItemId,
}

/// Messages by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: u64,
    pub relayed: u64,
    pub delivered: u64,
    pub received: u64,
}

/// Why the message database refused an operation or could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error("could not access {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the message database failed")]
    Lmdb(#[source] heed::Error),
    #[error("the message database is full ({bytes} bytes); delete old messages or free space")]
    Full { bytes: u64 },
    #[error(
        "the message database was written by a newer version of Cairn (schema {version}); \
         update Cairn"
    )]
    NewerSchema { version: u32 },
    #[error("the message database is corrupt ({reason})")]
    Corrupt { reason: &'static str },
    #[error(
        "the message database cannot be opened with this identity: it belongs to another \
         identity, or it is damaged"
    )]
    Sealed,
    #[error("the message database was opened without the identity")]
    Locked,
    #[error("the message is empty")]
    EmptyText,
    #[error("the message is {len} bytes long; the most is {MAX_TEXT_BYTES} bytes")]
    TextTooLong { len: usize },
    #[error("no message with id {id}")]
    UnknownMessage { id: u64 },
    #[error("message {id} is not a queued outgoing message")]
    NotQueued { id: u64 },
    #[error("message {id} is already sealed in another envelope")]
    AlreadySealed { id: u64 },
    #[error("envelope {} already belongs to message {id}", .envelope.to_hex())]
    EnvelopeInUse { envelope: ItemId, id: u64 },
    #[error("contact name refused: {reason}")]
    InvalidName { reason: String },
    #[error("the name {name:?} is already used by another contact")]
    NameTaken { name: String },
}

/// Why one attempt at a transaction failed.
enum TxnError {
    /// The map is too small for the transaction: grow it and try again.
    MapFull,
    /// Another process grew the map: adopt its size and try again.
    MapResized,
    App(AppError),
}

impl From<heed::Error> for TxnError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => TxnError::MapFull,
            heed::Error::Mdb(MdbError::MapResized) => TxnError::MapResized,
            other => TxnError::App(AppError::Lmdb(other)),
        }
    }
}

impl From<AppError> for TxnError {
    fn from(e: AppError) -> Self {
        TxnError::App(e)
    }
}

type Db = Database<'static, Bytes, Bytes>;

/// The message database of one node. See the module docs.
///
/// One handle per process (heed refuses to open an environment twice in a process); share it
/// between threads by reference or `Arc`. Other processes open their own.
pub struct AppDb {
    env: Env<WithTls>,
    /// id (u64 BE) → record.
    messages: Db,
    /// envelope id → message id (u64 BE): finds a message from a receipt, and makes
    /// `record_received` idempotent.
    by_envelope: Db,
    /// id (u64 BE) → nothing: outgoing messages waiting to be sealed, so the daemon's poll
    /// does not scan the whole history.
    outbox: Db,
    /// name key of the lower-cased local contact name → sealed(identity (32) ‖ name as typed).
    names: Db,
    /// peer key of the identity → sealed(identity (32) ‖ local contact name).
    peer_names: Db,
    /// Schema version, next id, counts by status.
    meta: Db,
    /// Held shared by every transaction of this handle and exclusively to resize the map:
    /// LMDB allows a resize only while the process has no transaction open.
    resize_lock: RwLock<()>,
    path: PathBuf,
    /// `None` when opened without the identity ([`AppDb::open_counts_only`]).
    keys: Option<Keys>,
}

/// The keys that seal what the database holds.
struct Keys {
    records: SealKey,
    /// Names index keys for contact names, and seals their entries.
    names: SealKey,
    /// Names index keys for identities, and seals their entries.
    peers: SealKey,
}

impl Keys {
    fn of(identity: &Identity) -> Self {
        let root = identity.storage_key();
        Keys {
            records: root.subkey("app messages"),
            names: root.subkey("app contact names"),
            peers: root.subkey("app contact identities"),
        }
    }

    fn record_aad(id: u64, direction: Direction) -> [u8; 10] {
        let mut aad = [0u8; 10];
        aad[..8].copy_from_slice(&id.to_be_bytes());
        aad[8] = RECORD_VERSION;
        aad[9] = direction.to_byte();
        aad
    }

    fn seal_record(&self, record: &MessageRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            RECORD_HEADER_LEN
                + crate::at_rest::SEAL_OVERHEAD
                + RECORD_SECRET_LEN
                + record.text.len(),
        );
        out.extend_from_slice(&RecordHeader::of(record).encode());
        out.extend(self.records.seal(
            &Self::record_aad(record.id, record.direction),
            &encode_record_secret(record),
        ));
        out
    }

    fn open_record(&self, id: u64, bytes: &[u8]) -> Result<MessageRecord, AppError> {
        let header = RecordHeader::decode(bytes)?;
        let secret = self
            .records
            .open(
                &Self::record_aad(id, header.direction),
                &bytes[RECORD_HEADER_LEN..],
            )
            .ok_or(AppError::Sealed)?;
        decode_record_secret(id, header, &secret)
    }

    fn name_key(&self, name: &str) -> [u8; 32] {
        self.names.name(name_key(name).as_bytes())
    }

    fn peer_key(&self, peer: &IdentityPublicKey) -> [u8; 32] {
        self.peers.name(peer.as_bytes())
    }

    /// `sealed(identity ‖ name)`, bound to the index key it is stored under.
    fn seal_entry(
        key: &SealKey,
        index: &[u8; 32],
        peer: &IdentityPublicKey,
        name: &str,
    ) -> Vec<u8> {
        let mut entry = Vec::with_capacity(32 + name.len());
        entry.extend_from_slice(peer.as_bytes());
        entry.extend_from_slice(name.as_bytes());
        key.seal(index, &entry)
    }

    fn open_by_name(
        &self,
        index: &[u8],
        sealed: &[u8],
    ) -> Result<(IdentityPublicKey, String), AppError> {
        Self::open_entry(&self.names, index, sealed)
    }

    fn open_by_peer(
        &self,
        index: &[u8],
        sealed: &[u8],
    ) -> Result<(IdentityPublicKey, String), AppError> {
        Self::open_entry(&self.peers, index, sealed)
    }

    fn open_entry(
        key: &SealKey,
        index: &[u8],
        sealed: &[u8],
    ) -> Result<(IdentityPublicKey, String), AppError> {
        let entry = key.open(index, sealed).ok_or(AppError::Sealed)?;
        let (peer, name) = decode_name_entry(&entry)?;
        Ok((peer, name.to_owned()))
    }
}

impl std::fmt::Debug for AppDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AppDb {
    /// Opens (creating if needed) the database of `identity` in `home/app/`.
    pub fn open(home: &Path, identity: &Identity) -> Result<Self, AppError> {
        Self::open_with_map_size(home, Some(identity), INITIAL_MAP_BYTES)
    }

    /// Opens the database without the identity: only [`AppDb::counts`] works (the counts are
    /// not sealed), everything else fails with [`AppError::Locked`]. For `cairn status`,
    /// which should not need the passphrase.
    pub fn open_counts_only(home: &Path) -> Result<Self, AppError> {
        Self::open_with_map_size(home, None, INITIAL_MAP_BYTES)
    }

    fn keys(&self) -> Result<&Keys, AppError> {
        self.keys.as_ref().ok_or(AppError::Locked)
    }

    fn open_with_map_size(
        home: &Path,
        identity: Option<&Identity>,
        initial_map_bytes: usize,
    ) -> Result<Self, AppError> {
        let path = home.join(APP_DIR_NAME);
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AppError::Io { path, source }
        };
        private_file::create_home(home).map_err(io_error(home))?;
        private_file::create_home(&path).map_err(io_error(&path))?;
        let mut options = EnvOpenOptions::new();
        options
            .map_size(round_to_granule(initial_map_bytes))
            .max_dbs(8);
        // SAFETY: the memory map is undefined behaviour only if the files are modified behind
        // LMDB's back. Only LMDB writes them, and it arbitrates between processes with its
        // lock file; heed refuses a second open of the same environment in this process.
        let env = unsafe { options.open(&path) }.map_err(AppError::Lmdb)?;
        // Another process (the daemon) may have grown the map past our initial size: adopt
        // the size recorded in the environment before the first transaction, which would
        // otherwise fail with MDB_MAP_RESIZED.
        // SAFETY: no transaction of this environment exists yet in this process.
        unsafe { env.resize(0) }.map_err(AppError::Lmdb)?;
        // Reader slots of a process killed mid-read would pin old pages forever.
        env.clear_stale_readers().map_err(AppError::Lmdb)?;
        let wtxn = env.write_txn().map_err(AppError::Lmdb)?;
        let dbs: [Db; 6] = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let mut create =
                    |name: &str| opener.create_database::<Bytes, Bytes>(wtxn, Some(name));
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit([
                    create("messages")?,
                    create("by_envelope")?,
                    create("outbox")?,
                    create("names")?,
                    create("peer_names")?,
                    create("meta")?,
                ]))
            })
            .map_err(AppError::Lmdb)?
            .commit()
            .ok_or(AppError::Corrupt {
                reason: "could not create the tables",
            })?;
        let [messages, by_envelope, outbox, names, peer_names, meta] = dbs;
        let db = AppDb {
            env,
            messages,
            by_envelope,
            outbox,
            names,
            peer_names,
            meta,
            resize_lock: RwLock::new(()),
            path,
            keys: identity.map(Keys::of),
        };
        db.write(|wtxn| {
            match db.meta.get(wtxn, KEY_SCHEMA)? {
                None => db
                    .meta
                    .put(wtxn, KEY_SCHEMA, &SCHEMA_VERSION.to_le_bytes())?,
                Some(bytes) => {
                    let version = bytes.try_into().map(u32::from_le_bytes).map_err(|_| {
                        AppError::Corrupt {
                            reason: "schema version is not 4 bytes",
                        }
                    })?;
                    if version > SCHEMA_VERSION {
                        return Err(AppError::NewerSchema { version }.into());
                    }
                    // Sealed at the first open that has the keys.
                    if version == SCHEMA_CLEAR && db.keys.is_some() {
                        db.seal_schema_1(wtxn)?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(db)
    }

    /// Seals a database of schema 1 (everything in the clear), in the caller's transaction.
    fn seal_schema_1(&self, wtxn: &mut RwTxn<'_>) -> Result<(), TxnError> {
        let mut records = Vec::new();
        for entry in self.messages.iter(wtxn)? {
            let (key, value) = entry?;
            let id = decode_id(key)?;
            records.push(decode_record_clear(id, value)?);
        }
        for record in &records {
            self.messages.put(
                wtxn,
                &record.id.to_be_bytes(),
                &self.keys()?.seal_record(record),
            )?;
        }
        let mut names = Vec::new();
        for entry in self.peer_names.iter(wtxn)? {
            let (key, value) = entry?;
            names.push((decode_peer(key)?, decode_text(value)?.to_owned()));
        }
        self.names.clear(wtxn)?;
        self.peer_names.clear(wtxn)?;
        for (peer, name) in &names {
            self.put_name(wtxn, peer, name)?;
        }
        self.meta
            .put(wtxn, KEY_SCHEMA, &SCHEMA_VERSION.to_le_bytes())?;
        Ok(())
    }

    /// Writes both index entries of `peer`'s local name.
    fn put_name(
        &self,
        wtxn: &mut RwTxn<'_>,
        peer: &IdentityPublicKey,
        name: &str,
    ) -> Result<(), TxnError> {
        let keys = self.keys()?;
        let name_key = keys.name_key(name);
        let peer_key = keys.peer_key(peer);
        let by_name = Keys::seal_entry(&keys.names, &name_key, peer, name);
        let by_peer = Keys::seal_entry(&keys.peers, &peer_key, peer, name);
        self.names.put(wtxn, &name_key, &by_name)?;
        self.peer_names.put(wtxn, &peer_key, &by_peer)?;
        Ok(())
    }

    /// The local name of `peer` as stored, if any.
    fn stored_name(
        &self,
        txn: &RoTxn<'_>,
        peer: &IdentityPublicKey,
    ) -> Result<Option<String>, TxnError> {
        let peer_key = self.keys()?.peer_key(peer);
        match self.peer_names.get(txn, &peer_key)? {
            None => Ok(None),
            Some(sealed) => {
                let (owner, name) = self.keys()?.open_by_peer(&peer_key, sealed)?;
                if owner != *peer {
                    return Err(AppError::Corrupt {
                        reason: "a name entry is filed under another identity",
                    }
                    .into());
                }
                Ok(Some(name))
            }
        }
    }

    /// Directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a message to `to` (status [`Status::Queued`]) and returns its id.
    pub fn queue(&self, to: IdentityPublicKey, text: &str, now_secs: u64) -> Result<u64, AppError> {
        check_text(text)?;
        if text.is_empty() {
            return Err(AppError::EmptyText);
        }
        self.write(|wtxn| {
            let id = self.take_id(wtxn)?;
            let record = MessageRecord {
                id,
                direction: Direction::Outgoing,
                peer: to,
                text: text.to_owned(),
                sent_at: Some(now_secs),
                received_at: None,
                status: Status::Queued,
                envelope: None,
            };
            self.messages
                .put(wtxn, &id.to_be_bytes(), &self.keys()?.seal_record(&record))?;
            self.outbox.put(wtxn, &id.to_be_bytes(), &[])?;
            self.add_to_count(wtxn, Status::Queued, 1)?;
            Ok(id)
        })
    }

    /// Up to `limit` outgoing messages still waiting to be sealed, oldest first: the daemon's
    /// work list.
    pub fn queued(&self, limit: usize) -> Result<Vec<MessageRecord>, AppError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            for entry in self.outbox.iter(rtxn)?.take(limit) {
                let (key, _) = entry?;
                let id = decode_id(key)?;
                match self.record(rtxn, id)? {
                    Some(record) => out.push(record),
                    None => {
                        return Err(AppError::Corrupt {
                            reason: "the outbox names a missing message",
                        }
                        .into())
                    }
                }
            }
            Ok(out)
        })
    }

    /// Records that the daemon sealed message `id` into `envelope` (in the sync store). The
    /// message stays [`Status::Queued`] until another node takes it. Repeating the call with
    /// the same envelope is harmless.
    pub fn mark_sealed(&self, id: u64, envelope: ItemId) -> Result<(), AppError> {
        self.mark_sealed_all(&[(id, envelope)])
    }

    /// [`AppDb::mark_sealed`] for many messages in one transaction (the daemon seals what was
    /// queued offline in batches). All or nothing.
    pub fn mark_sealed_all(&self, sealed: &[(u64, ItemId)]) -> Result<(), AppError> {
        self.write(|wtxn| {
            for &(id, envelope) in sealed {
                self.seal_one(wtxn, id, envelope)?;
            }
            Ok(())
        })
    }

    fn seal_one(&self, wtxn: &mut RwTxn<'_>, id: u64, envelope: ItemId) -> Result<(), TxnError> {
        let (stored, mut record) = self
            .stored_header(wtxn, id)?
            .ok_or(AppError::UnknownMessage { id })?;
        if record.direction != Direction::Outgoing {
            return Err(AppError::NotQueued { id }.into());
        }
        match record.envelope {
            Some(existing) if existing == envelope => return Ok(()),
            Some(_) => return Err(AppError::AlreadySealed { id }.into()),
            None => {}
        }
        if record.status != Status::Queued {
            return Err(AppError::NotQueued { id }.into());
        }
        if let Some(owner) = self.by_envelope.get(wtxn, &envelope.0)? {
            let owner = decode_id(owner)?;
            return Err(AppError::EnvelopeInUse {
                envelope,
                id: owner,
            }
            .into());
        }
        record.envelope = Some(envelope);
        self.put_header(wtxn, id, stored, record)?;
        self.by_envelope.put(wtxn, &envelope.0, &id.to_be_bytes())?;
        self.outbox.delete(wtxn, &id.to_be_bytes())?;
        Ok(())
    }

    /// Another node took the envelope: `Queued` becomes `Relayed`. Does nothing for any
    /// other status (a message is never downgraded) or for an envelope that is not one of
    /// our outgoing messages (the daemon also carries others' envelopes).
    pub fn mark_relayed(&self, envelope: &ItemId) -> Result<(), AppError> {
        self.advance_outgoing(envelope, Status::Relayed)
    }

    /// The recipient acknowledged the envelope: the message becomes `Delivered`, from
    /// `Queued` or `Relayed`. Does nothing for an envelope that is not one of our outgoing
    /// messages.
    pub fn mark_delivered(&self, envelope: &ItemId) -> Result<(), AppError> {
        self.advance_outgoing(envelope, Status::Delivered)
    }

    fn advance_outgoing(&self, envelope: &ItemId, to: Status) -> Result<(), AppError> {
        self.advance_all(std::slice::from_ref(envelope), to)
    }

    /// Moves every one of our outgoing messages among `envelopes` forward to `to` (never
    /// back), in one transaction. Envelopes that are not ours are ignored.
    pub fn advance_all(&self, envelopes: &[ItemId], to: Status) -> Result<(), AppError> {
        self.write(|wtxn| {
            for envelope in envelopes {
                let Some(id) = self.by_envelope.get(wtxn, &envelope.0)? else {
                    continue;
                };
                let id = decode_id(id)?;
                let (stored, mut record) =
                    self.stored_header(wtxn, id)?.ok_or(AppError::Corrupt {
                        reason: "the envelope index names a missing message",
                    })?;
                if record.direction != Direction::Outgoing || record.status >= to {
                    continue;
                }
                let from = record.status;
                record.status = to;
                self.put_header(wtxn, id, stored, record)?;
                self.add_to_count(wtxn, from, -1)?;
                self.add_to_count(wtxn, to, 1)?;
            }
            Ok(())
        })
    }

    /// Stores a message a contact sent, returning its id. Idempotent per envelope: the same
    /// envelope recorded again (it came over two paths) returns the first id and changes
    /// nothing.
    pub fn record_received(
        &self,
        from: IdentityPublicKey,
        text: &str,
        sent_at: u64,
        received_at: u64,
        envelope: ItemId,
    ) -> Result<u64, AppError> {
        let ids = self.record_received_all(&[Incoming {
            from,
            text: text.to_owned(),
            sent_at,
            received_at,
            envelope,
        }])?;
        ids.into_iter()
            .next()
            .ok_or(AppError::UnknownMessage { id: 0 })
    }

    /// [`AppDb::record_received`] for many messages in one transaction. All or nothing.
    pub fn record_received_all(&self, incoming: &[Incoming]) -> Result<Vec<u64>, AppError> {
        for message in incoming {
            check_text(&message.text)?;
        }
        self.write(|wtxn| {
            let mut ids = Vec::with_capacity(incoming.len());
            for message in incoming {
                if let Some(id) = self.by_envelope.get(wtxn, &message.envelope.0)? {
                    ids.push(decode_id(id)?);
                    continue;
                }
                let id = self.take_id(wtxn)?;
                let record = MessageRecord {
                    id,
                    direction: Direction::Incoming,
                    peer: message.from,
                    text: message.text.clone(),
                    sent_at: Some(message.sent_at),
                    received_at: Some(message.received_at),
                    status: Status::Received,
                    envelope: Some(message.envelope),
                };
                self.messages
                    .put(wtxn, &id.to_be_bytes(), &self.keys()?.seal_record(&record))?;
                self.by_envelope
                    .put(wtxn, &message.envelope.0, &id.to_be_bytes())?;
                self.add_to_count(wtxn, Status::Received, 1)?;
                ids.push(id);
            }
            Ok(ids)
        })
    }

    /// One message by id.
    pub fn message(&self, id: u64) -> Result<Option<MessageRecord>, AppError> {
        self.read(|rtxn| self.record(rtxn, id))
    }

    /// Every message (or those with one contact), in id order.
    pub fn messages(
        &self,
        with: Option<&IdentityPublicKey>,
    ) -> Result<Vec<MessageRecord>, AppError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            for entry in self.messages.iter(rtxn)? {
                let (key, value) = entry?;
                let record = self.keys()?.open_record(decode_id(key)?, value)?;
                if with.is_none_or(|peer| record.peer == *peer) {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    /// Messages by status.
    pub fn counts(&self) -> Result<Counts, AppError> {
        self.read(|rtxn| {
            Ok(Counts {
                queued: self.count(rtxn, Status::Queued)?,
                relayed: self.count(rtxn, Status::Relayed)?,
                delivered: self.count(rtxn, Status::Delivered)?,
                received: self.count(rtxn, Status::Received)?,
            })
        })
    }

    /// Gives `peer` the local name `name`, which the user chose (it may differ from the
    /// name in their contact code). Names are unique, ignoring case; a peer's earlier name is
    /// replaced.
    pub fn set_contact_name(&self, peer: IdentityPublicKey, name: &str) -> Result<(), AppError> {
        DisplayName::new(name).map_err(|e| AppError::InvalidName {
            reason: match e {
                crate::contact::ContactCodeError::InvalidDisplayName { reason } => {
                    reason.to_owned()
                }
                other => other.to_string(),
            },
        })?;
        self.write(|wtxn| {
            let key = self.keys()?.name_key(name);
            if let Some(sealed) = self.names.get(wtxn, &key)? {
                let (owner, _) = self.keys()?.open_by_name(&key, sealed)?;
                if owner != peer {
                    return Err(AppError::NameTaken {
                        name: name.to_owned(),
                    }
                    .into());
                }
            }
            if let Some(old) = self.stored_name(wtxn, &peer)? {
                self.names.delete(wtxn, &self.keys()?.name_key(&old))?;
            }
            self.put_name(wtxn, &peer, name)
        })
    }

    /// The local name of `peer`, if the user gave one.
    pub fn contact_name(&self, peer: &IdentityPublicKey) -> Result<Option<String>, AppError> {
        self.read(|rtxn| self.stored_name(rtxn, peer))
    }

    /// The contact with local name `name` (ignoring case).
    pub fn contact_by_name(&self, name: &str) -> Result<Option<IdentityPublicKey>, AppError> {
        let key = self.keys()?.name_key(name);
        self.read(|rtxn| match self.names.get(rtxn, &key)? {
            None => Ok(None),
            Some(sealed) => Ok(Some(self.keys()?.open_by_name(&key, sealed)?.0)),
        })
    }

    /// Every local contact name, by identity.
    pub fn contact_names(&self) -> Result<Vec<(IdentityPublicKey, String)>, AppError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            for entry in self.peer_names.iter(rtxn)? {
                let (key, sealed) = entry?;
                out.push(self.keys()?.open_by_peer(key, sealed)?);
            }
            out.sort();
            Ok(out)
        })
    }

    /// Forgets the local name of `peer` (when the contact is removed).
    pub fn remove_contact_name(&self, peer: &IdentityPublicKey) -> Result<(), AppError> {
        self.write(|wtxn| {
            if let Some(old) = self.stored_name(wtxn, peer)? {
                self.names.delete(wtxn, &self.keys()?.name_key(&old))?;
                self.peer_names.delete(wtxn, &self.keys()?.peer_key(peer))?;
            }
            Ok(())
        })
    }

    /// Record `id` as stored, and its header (read without the keys).
    fn stored_header(
        &self,
        txn: &RoTxn<'_>,
        id: u64,
    ) -> Result<Option<(Vec<u8>, RecordHeader)>, TxnError> {
        match self.messages.get(txn, &id.to_be_bytes())? {
            None => Ok(None),
            Some(stored) => Ok(Some((stored.to_vec(), RecordHeader::decode(stored)?))),
        }
    }

    /// Stores record `id` with a new header and its sealed part unchanged.
    fn put_header(
        &self,
        wtxn: &mut RwTxn<'_>,
        id: u64,
        mut stored: Vec<u8>,
        header: RecordHeader,
    ) -> Result<(), TxnError> {
        stored[..RECORD_HEADER_LEN].copy_from_slice(&header.encode());
        self.messages.put(wtxn, &id.to_be_bytes(), &stored)?;
        Ok(())
    }

    fn record(&self, txn: &RoTxn<'_>, id: u64) -> Result<Option<MessageRecord>, TxnError> {
        match self.messages.get(txn, &id.to_be_bytes())? {
            None => Ok(None),
            Some(value) => Ok(Some(self.keys()?.open_record(id, value)?)),
        }
    }

    fn take_id(&self, wtxn: &mut RwTxn<'_>) -> Result<u64, TxnError> {
        let next = match self.meta.get(wtxn, KEY_NEXT_ID)? {
            None => 1,
            Some(bytes) => decode_u64(bytes, "the next id is not 8 bytes")?,
        };
        let after = next.checked_add(1).ok_or(AppError::Corrupt {
            reason: "message ids are exhausted",
        })?;
        self.meta.put(wtxn, KEY_NEXT_ID, &after.to_le_bytes())?;
        Ok(next)
    }

    fn count(&self, txn: &RoTxn<'_>, status: Status) -> Result<u64, TxnError> {
        match self.meta.get(txn, status.counter_key())? {
            None => Ok(0),
            Some(bytes) => Ok(decode_u64(bytes, "a message count is not 8 bytes")?),
        }
    }

    fn add_to_count(
        &self,
        wtxn: &mut RwTxn<'_>,
        status: Status,
        delta: i64,
    ) -> Result<(), TxnError> {
        let current = self.count(wtxn, status)?;
        let updated = current.checked_add_signed(delta).ok_or(AppError::Corrupt {
            reason: "a message count went below zero",
        })?;
        self.meta
            .put(wtxn, status.counter_key(), &updated.to_le_bytes())?;
        Ok(())
    }

    /// Runs `f` in a read transaction, retrying if another process grew the map.
    fn read<R>(&self, f: impl Fn(&RoTxn<'_>) -> Result<R, TxnError>) -> Result<R, AppError> {
        for _ in 0..MAX_ATTEMPTS {
            let outcome = {
                let _shared = self
                    .resize_lock
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                match self.env.read_txn() {
                    Ok(rtxn) => f(&rtxn),
                    Err(e) => Err(e.into()),
                }
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(TxnError::MapResized) => self.adopt_map_size()?,
                Err(TxnError::MapFull) => return Err(self.full()),
                Err(TxnError::App(e)) => return Err(e),
            }
        }
        Err(self.full())
    }

    /// Runs `f` in one write transaction and commits it, growing the map (or adopting the
    /// size another process set) and retrying as needed.
    fn write<R>(&self, f: impl Fn(&mut RwTxn<'_>) -> Result<R, TxnError>) -> Result<R, AppError> {
        for _ in 0..MAX_ATTEMPTS {
            let outcome = {
                let _shared = self
                    .resize_lock
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                (|| {
                    let mut wtxn = self.env.write_txn()?;
                    // On error the transaction is dropped here, which aborts it.
                    let value = f(&mut wtxn)?;
                    wtxn.commit()?;
                    Ok(value)
                })()
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(TxnError::MapFull) => self.grow_map()?,
                Err(TxnError::MapResized) => self.adopt_map_size()?,
                Err(TxnError::App(e)) => return Err(e),
            }
        }
        Err(self.full())
    }

    fn max_map_bytes() -> usize {
        usize::try_from(MAX_MAP_BYTES).unwrap_or(1 << 30)
    }

    fn full(&self) -> AppError {
        AppError::Full {
            bytes: self.env.info().map_size as u64,
        }
    }

    /// Doubles the map, up to [`MAX_MAP_BYTES`].
    fn grow_map(&self) -> Result<(), AppError> {
        let _exclusive = self
            .resize_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.env.info().map_size;
        let max = round_to_granule(Self::max_map_bytes());
        if current >= max {
            return Err(self.full());
        }
        let new_size = round_to_granule(current.saturating_mul(2)).min(max);
        tracing::debug!(current, new_size, "growing the message database map");
        // SAFETY: LMDB allows a resize only while this process has no transaction open on the
        // environment. Every transaction of this handle runs under `resize_lock` held shared,
        // and we hold it exclusively; heed's single-open rule means no other handle to this
        // environment exists in this process. Other processes are told by LMDB
        // (`MDB_MAP_RESIZED`) and adopt the new size.
        unsafe { self.env.resize(new_size) }.map_err(AppError::Lmdb)
    }

    /// Adopts the map size another process set.
    fn adopt_map_size(&self) -> Result<(), AppError> {
        let _exclusive = self
            .resize_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: as in `grow_map`. Size 0 asks LMDB for the size recorded in the file.
        unsafe { self.env.resize(0) }.map_err(AppError::Lmdb)
    }
}

fn round_to_granule(bytes: usize) -> usize {
    bytes
        .div_ceil(MAP_GRANULE)
        .saturating_mul(MAP_GRANULE)
        .max(MAP_GRANULE)
}

fn check_text(text: &str) -> Result<(), AppError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(AppError::TextTooLong { len: text.len() });
    }
    Ok(())
}

/// Names are unique ignoring case: "Bob" and "bob" would be one person to the reader.
fn name_key(name: &str) -> String {
    name.to_lowercase()
}

fn decode_id(bytes: &[u8]) -> Result<u64, AppError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| AppError::Corrupt {
            reason: "a message id is not 8 bytes",
        })
}

fn decode_u64(bytes: &[u8], reason: &'static str) -> Result<u64, AppError> {
    bytes
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| AppError::Corrupt { reason })
}

fn decode_text(bytes: &[u8]) -> Result<&str, AppError> {
    std::str::from_utf8(bytes).map_err(|_| AppError::Corrupt {
        reason: "stored text is not UTF-8",
    })
}

fn decode_peer(bytes: &[u8]) -> Result<IdentityPublicKey, AppError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| AppError::Corrupt {
        reason: "an identity key is not 32 bytes",
    })?;
    // Checked when written (`queue` and `record_received` take an `IdentityPublicKey`).
    Ok(IdentityPublicKey::from_stored_bytes(bytes))
}

fn decode_name_entry(bytes: &[u8]) -> Result<(IdentityPublicKey, &str), AppError> {
    if bytes.len() < 32 {
        return Err(AppError::Corrupt {
            reason: "a name entry is too short",
        });
    }
    let (peer, name) = bytes.split_at(32);
    Ok((decode_peer(peer)?, decode_text(name)?))
}

/// What a record keeps outside its seal: what changes as the message travels.
#[derive(Clone, Copy)]
struct RecordHeader {
    direction: Direction,
    status: Status,
    envelope: Option<ItemId>,
}

impl RecordHeader {
    fn of(record: &MessageRecord) -> Self {
        RecordHeader {
            direction: record.direction,
            status: record.status,
            envelope: record.envelope,
        }
    }

    fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut out = [0u8; RECORD_HEADER_LEN];
        out[0] = RECORD_VERSION;
        out[1] = self.direction.to_byte();
        out[2] = self.status.to_byte();
        if let Some(envelope) = self.envelope {
            out[3] = 1;
            out[4..].copy_from_slice(&envelope.0);
        }
        out
    }

    /// The header of a stored record (which must also hold a sealed part).
    fn decode(bytes: &[u8]) -> Result<Self, AppError> {
        let corrupt = |reason| AppError::Corrupt { reason };
        if bytes.len() < RECORD_HEADER_LEN + crate::at_rest::SEAL_OVERHEAD {
            return Err(corrupt("a message record is too short"));
        }
        if bytes[0] != RECORD_VERSION {
            return Err(corrupt("a message record has an unknown version"));
        }
        let direction =
            Direction::from_byte(bytes[1]).ok_or(corrupt("a message has an unknown direction"))?;
        let status =
            Status::from_byte(bytes[2]).ok_or(corrupt("a message has an unknown status"))?;
        let envelope = match bytes[3] {
            0 => None,
            1 => Some(ItemId(
                bytes[4..RECORD_HEADER_LEN]
                    .try_into()
                    .map_err(|_| corrupt("a message record is too short"))?,
            )),
            _ => return Err(corrupt("a message record has a bad envelope flag")),
        };
        Ok(RecordHeader {
            direction,
            status,
            envelope,
        })
    }
}

fn time_flags(record: &MessageRecord) -> u8 {
    let mut flags = 0;
    if record.sent_at.is_some() {
        flags |= FLAG_SENT_AT;
    }
    if record.received_at.is_some() {
        flags |= FLAG_RECEIVED_AT;
    }
    flags
}

/// The sealed part of a record: who and what. Wiped after use.
fn encode_record_secret(record: &MessageRecord) -> zeroize::Zeroizing<Vec<u8>> {
    let mut out =
        zeroize::Zeroizing::new(Vec::with_capacity(RECORD_SECRET_LEN + record.text.len()));
    out.push(time_flags(record));
    out.extend_from_slice(record.peer.as_bytes());
    out.extend_from_slice(&record.sent_at.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&record.received_at.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(record.text.as_bytes());
    out
}

fn decode_record_secret(
    id: u64,
    header: RecordHeader,
    bytes: &[u8],
) -> Result<MessageRecord, AppError> {
    if bytes.len() < RECORD_SECRET_LEN {
        return Err(AppError::Corrupt {
            reason: "a message record is too short",
        });
    }
    let (fields, text) = bytes.split_at(RECORD_SECRET_LEN);
    let flags = fields[0];
    let sent_at = decode_u64(&fields[33..41], "bad time")?;
    let received_at = decode_u64(&fields[41..49], "bad time")?;
    Ok(MessageRecord {
        id,
        direction: header.direction,
        peer: decode_peer(&fields[1..33])?,
        text: decode_text(text)?.to_owned(),
        sent_at: (flags & FLAG_SENT_AT != 0).then_some(sent_at),
        received_at: (flags & FLAG_RECEIVED_AT != 0).then_some(received_at),
        status: header.status,
        envelope: header.envelope,
    })
}

/// A record of schema 1, all in the clear (read once, to seal it).
fn decode_record_clear(id: u64, bytes: &[u8]) -> Result<MessageRecord, AppError> {
    let corrupt = |reason| AppError::Corrupt { reason };
    if bytes.len() < RECORD_CLEAR_LEN {
        return Err(corrupt("a message record is too short"));
    }
    if bytes[0] != RECORD_VERSION_CLEAR {
        return Err(corrupt("a message record has an unknown version"));
    }
    let (header, text) = bytes.split_at(RECORD_CLEAR_LEN);
    let direction =
        Direction::from_byte(header[1]).ok_or(corrupt("a message has an unknown direction"))?;
    let status = Status::from_byte(header[2]).ok_or(corrupt("a message has an unknown status"))?;
    let flags = header[3];
    let sent_at = decode_u64(&header[36..44], "bad time")?;
    let received_at = decode_u64(&header[44..52], "bad time")?;
    let envelope: [u8; 32] = header[52..84]
        .try_into()
        .map_err(|_| corrupt("a message record is too short"))?;
    Ok(MessageRecord {
        id,
        direction,
        peer: decode_peer(&header[4..36])?,
        text: decode_text(text)?.to_owned(),
        sent_at: (flags & FLAG_SENT_AT != 0).then_some(sent_at),
        received_at: (flags & FLAG_RECEIVED_AT != 0).then_some(received_at),
        status,
        envelope: (flags & FLAG_ENVELOPE != 0).then_some(ItemId(envelope)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::identity::Identity;
    use rand_core_06::SeedableRng;

    fn peer(seed: u64) -> IdentityPublicKey {
        let mut rng = rand_chacha_03::ChaCha20Rng::seed_from_u64(seed);
        Identity::generate(&mut rng).public_key()
    }

    fn envelope(n: u8) -> ItemId {
        ItemId([n; 32])
    }

    /// The identity whose database the tests open.
    fn me() -> Identity {
        let mut rng = rand_chacha_03::ChaCha20Rng::seed_from_u64(1000);
        Identity::generate(&mut rng)
    }

    fn counts_by_scan(db: &AppDb) -> Counts {
        let mut counts = Counts::default();
        for m in db.messages(None).unwrap() {
            match m.status {
                Status::Queued => counts.queued += 1,
                Status::Relayed => counts.relayed += 1,
                Status::Delivered => counts.delivered += 1,
                Status::Received => counts.received += 1,
            }
        }
        counts
    }

    #[test]
    fn outgoing_status_only_moves_forward() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let bob = peer(1);
        let id = db.queue(bob, "hello", 100).unwrap();
        assert_eq!(db.queued(10).unwrap().len(), 1);

        // A receipt for an envelope we do not know yet changes nothing.
        db.mark_relayed(&envelope(1)).unwrap();
        assert_eq!(db.message(id).unwrap().unwrap().status, Status::Queued);

        db.mark_sealed(id, envelope(1)).unwrap();
        db.mark_sealed(id, envelope(1)).unwrap(); // repeating is harmless
        assert!(matches!(
            db.mark_sealed(id, envelope(2)),
            Err(AppError::AlreadySealed { .. })
        ));
        assert!(db.queued(10).unwrap().is_empty(), "sealed: no longer work");
        let sealed = db.message(id).unwrap().unwrap();
        assert_eq!(sealed.status, Status::Queued);
        assert_eq!(sealed.envelope, Some(envelope(1)));

        db.mark_relayed(&envelope(1)).unwrap();
        assert_eq!(db.message(id).unwrap().unwrap().status, Status::Relayed);
        db.mark_delivered(&envelope(1)).unwrap();
        assert_eq!(db.message(id).unwrap().unwrap().status, Status::Delivered);
        // A late relay report does not downgrade.
        db.mark_relayed(&envelope(1)).unwrap();
        assert_eq!(db.message(id).unwrap().unwrap().status, Status::Delivered);
        assert_eq!(
            db.counts().unwrap(),
            Counts {
                delivered: 1,
                ..Counts::default()
            }
        );
        assert_eq!(db.counts().unwrap(), counts_by_scan(&db));
    }

    #[test]
    fn delivery_can_skip_relayed() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let id = db.queue(peer(1), "direct", 100).unwrap();
        db.mark_sealed(id, envelope(9)).unwrap();
        db.mark_delivered(&envelope(9)).unwrap();
        assert_eq!(db.message(id).unwrap().unwrap().status, Status::Delivered);
        assert_eq!(db.counts().unwrap(), counts_by_scan(&db));
    }

    #[test]
    fn received_is_idempotent_per_envelope_and_never_marked() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let alice = peer(2);
        let first = db
            .record_received(alice, "hi", 50, 60, envelope(3))
            .unwrap();
        let again = db
            .record_received(alice, "hi", 50, 70, envelope(3))
            .unwrap();
        assert_eq!(first, again);
        let all = db.messages(None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].received_at, Some(60));
        assert_eq!(all[0].direction, Direction::Incoming);
        // Receipts name outgoing messages only.
        db.mark_delivered(&envelope(3)).unwrap();
        assert_eq!(db.message(first).unwrap().unwrap().status, Status::Received);
        assert!(matches!(
            db.mark_sealed(first, envelope(4)),
            Err(AppError::NotQueued { .. })
        ));
        assert_eq!(db.counts().unwrap().received, 1);
        assert_eq!(db.counts().unwrap(), counts_by_scan(&db));
    }

    #[test]
    fn text_is_bounded_and_not_empty() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            db.queue(peer(1), &long, 1),
            Err(AppError::TextTooLong { .. })
        ));
        assert!(matches!(
            db.record_received(peer(1), &long, 1, 1, envelope(1)),
            Err(AppError::TextTooLong { .. })
        ));
        assert!(matches!(db.queue(peer(1), "", 1), Err(AppError::EmptyText)));
        let max = "é".repeat(MAX_TEXT_BYTES / 2);
        let id = db.queue(peer(1), &max, 1).unwrap();
        assert_eq!(db.message(id).unwrap().unwrap().text, max);
        assert_eq!(db.messages(None).unwrap().len(), 1);
    }

    #[test]
    fn messages_filter_by_peer_in_id_order() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let (bob, carol) = (peer(1), peer(2));
        let a = db.queue(bob, "one", 1).unwrap();
        let _ = db.queue(carol, "two", 2).unwrap();
        let c = db.record_received(bob, "three", 3, 4, envelope(7)).unwrap();
        let with_bob: Vec<u64> = db
            .messages(Some(&bob))
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(with_bob, vec![a, c]);
        assert!(a < c);
    }

    #[test]
    fn survives_reopening_and_ids_keep_increasing() {
        let home = tempfile::tempdir().unwrap();
        let first = {
            let db = AppDb::open(home.path(), &me()).unwrap();
            db.queue(peer(1), "before", 1).unwrap()
        };
        // The first handle is dropped (closed) before the second opens: heed refuses two
        // handles to one environment in a process. Other processes are tested in
        // tests/cli.rs.
        let db = AppDb::open(home.path(), &me()).unwrap();
        let second = db.queue(peer(1), "after", 2).unwrap();
        assert!(second > first);
        assert_eq!(db.queued(10).unwrap().len(), 2);
        assert_eq!(db.counts().unwrap().queued, 2);
    }

    #[test]
    fn queued_respects_the_limit_oldest_first() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let ids: Vec<u64> = (0..5)
            .map(|i| db.queue(peer(1), &format!("m{i}"), i).unwrap())
            .collect();
        let got: Vec<u64> = db.queued(3).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(got, ids[..3]);
    }

    #[test]
    fn the_map_grows_when_full() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open_with_map_size(home.path(), Some(&me()), 64 * 1024).unwrap();
        let text = "y".repeat(MAX_TEXT_BYTES);
        for i in 0..200 {
            db.queue(peer(1), &text, i).unwrap();
        }
        assert_eq!(db.counts().unwrap().queued, 200);
        assert!(db.env.info().map_size > 64 * 1024);
    }

    #[test]
    fn contact_names_are_unique_ignoring_case() {
        let home = tempfile::tempdir().unwrap();
        let db = AppDb::open(home.path(), &me()).unwrap();
        let (bob, carol) = (peer(1), peer(2));
        db.set_contact_name(bob, "Bob").unwrap();
        assert!(matches!(
            db.set_contact_name(carol, "bob"),
            Err(AppError::NameTaken { .. })
        ));
        assert_eq!(db.contact_by_name("BOB").unwrap(), Some(bob));
        // Renaming frees the old name.
        db.set_contact_name(bob, "Robert").unwrap();
        assert_eq!(db.contact_by_name("bob").unwrap(), None);
        db.set_contact_name(carol, "Bob").unwrap();
        assert_eq!(db.contact_name(&carol).unwrap().as_deref(), Some("Bob"));
        assert_eq!(db.contact_names().unwrap().len(), 2);
        assert!(matches!(
            db.set_contact_name(carol, " padded"),
            Err(AppError::InvalidName { .. })
        ));
        db.remove_contact_name(&carol).unwrap();
        assert_eq!(db.contact_by_name("bob").unwrap(), None);
    }

    #[test]
    fn record_round_trips_every_optional_field_sealed_to_its_place() {
        let record = MessageRecord {
            id: 7,
            direction: Direction::Incoming,
            peer: peer(3),
            text: "zürich ⛰".into(),
            sent_at: None,
            received_at: Some(0),
            status: Status::Received,
            envelope: Some(envelope(5)),
        };
        let keys = Keys::of(&me());
        let bytes = keys.seal_record(&record);
        assert_eq!(keys.open_record(7, &bytes).unwrap(), record);
        assert!(!bytes.windows(6).any(|w| w == "zürich".as_bytes()));
        assert!(!bytes.windows(32).any(|w| w == record.peer.as_bytes()));
        assert!(keys.open_record(7, &bytes[..bytes.len() - 1]).is_err());
        // Moved to another id, or read with another identity's keys: refused.
        assert!(matches!(keys.open_record(8, &bytes), Err(AppError::Sealed)));
        let theirs = Keys::of(&Identity::generate(
            &mut rand_chacha_03::ChaCha20Rng::seed_from_u64(2000),
        ));
        assert!(matches!(
            theirs.open_record(7, &bytes),
            Err(AppError::Sealed)
        ));
        // The clear header: a bad status or envelope flag is refused before any opening.
        for (at, value) in [(2, 9), (3, 2), (0, 1)] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(matches!(
                keys.open_record(7, &bad),
                Err(AppError::Corrupt { .. })
            ));
        }
        // The direction is bound to the seal: flipping it is caught.
        let mut flipped = bytes.clone();
        flipped[1] = Direction::Outgoing.to_byte();
        assert!(matches!(
            keys.open_record(7, &flipped),
            Err(AppError::Sealed)
        ));
    }

    #[test]
    fn the_files_hold_no_text_name_or_identity_in_the_clear() {
        let home = tempfile::tempdir().unwrap();
        {
            let db = AppDb::open(home.path(), &me()).unwrap();
            let id = db.queue(peer(1), "meet at the ridge", 10).unwrap();
            db.mark_sealed(id, envelope(1)).unwrap();
            db.mark_delivered(&envelope(1)).unwrap();
            db.record_received(peer(2), "bring the rope", 11, 12, envelope(2))
                .unwrap();
            db.set_contact_name(peer(1), "Bobbington").unwrap();
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(home.path().join(APP_DIR_NAME)).unwrap() {
            files.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        for secret in [
            &b"meet at the ridge"[..],
            b"bring the rope",
            b"Bobbington",
            b"bobbington",
            peer(1).as_bytes(),
            peer(2).as_bytes(),
        ] {
            assert!(
                !files.windows(secret.len()).any(|w| w == secret),
                "{:?} is in the clear",
                String::from_utf8_lossy(secret)
            );
        }
        // Another identity cannot read it; ours still can.
        let theirs = Identity::generate(&mut rand_chacha_03::ChaCha20Rng::seed_from_u64(2000));
        let other = AppDb::open(home.path(), &theirs).unwrap();
        assert!(matches!(other.messages(None), Err(AppError::Sealed)));
        assert!(matches!(other.contact_by_name("Bobbington"), Ok(None)));
        drop(other);
        let db = AppDb::open(home.path(), &me()).unwrap();
        let all = db.messages(None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].status, Status::Delivered);
        assert_eq!(db.contact_by_name("bobbington").unwrap(), Some(peer(1)));
        drop(db);
        // Without the identity: the counts, and nothing else.
        let locked = AppDb::open_counts_only(home.path()).unwrap();
        assert_eq!(locked.counts().unwrap().delivered, 1);
        assert_eq!(locked.counts().unwrap().received, 1);
        assert!(matches!(locked.messages(None), Err(AppError::Locked)));
        assert!(matches!(locked.contact_names(), Err(AppError::Locked)));
        assert!(matches!(
            locked.queue(peer(1), "no", 1),
            Err(AppError::Locked)
        ));
    }

    #[test]
    fn a_database_of_schema_1_is_sealed_when_opened() {
        let home = tempfile::tempdir().unwrap();
        let record = MessageRecord {
            id: 1,
            direction: Direction::Outgoing,
            peer: peer(1),
            text: "written before sealing".into(),
            sent_at: Some(5),
            received_at: None,
            status: Status::Queued,
            envelope: None,
        };
        {
            // What an earlier version left: clear records and names, schema 1.
            let db = AppDb::open(home.path(), &me()).unwrap();
            db.write(|wtxn| {
                let mut clear = vec![RECORD_VERSION_CLEAR, 0, 0, FLAG_SENT_AT];
                clear.extend_from_slice(record.peer.as_bytes());
                clear.extend_from_slice(&5u64.to_le_bytes());
                clear.extend_from_slice(&[0; 8 + 32]);
                clear.extend_from_slice(record.text.as_bytes());
                db.messages.put(wtxn, &1u64.to_be_bytes(), &clear)?;
                db.meta.put(wtxn, KEY_NEXT_ID, &2u64.to_le_bytes())?;
                db.outbox.put(wtxn, &1u64.to_be_bytes(), &[])?;
                let mut entry = peer(1).as_bytes().to_vec();
                entry.extend_from_slice(b"Bob");
                db.names.put(wtxn, b"bob", &entry)?;
                db.peer_names.put(wtxn, peer(1).as_bytes(), b"Bob")?;
                db.meta.put(wtxn, KEY_SCHEMA, &SCHEMA_CLEAR.to_le_bytes())?;
                Ok(())
            })
            .unwrap();
        }
        let db = AppDb::open(home.path(), &me()).unwrap();
        assert_eq!(db.messages(None).unwrap(), vec![record.clone()]);
        assert_eq!(db.queued(10).unwrap(), vec![record]);
        assert_eq!(db.contact_by_name("BOB").unwrap(), Some(peer(1)));
        assert_eq!(
            db.contact_names().unwrap(),
            vec![(peer(1), "Bob".to_owned())]
        );
        // The stored value is sealed now. (LMDB may keep the page with the clear one until it
        // reuses it: see the module docs.)
        let text = b"written before sealing";
        let stored = db
            .read(|rtxn| {
                Ok(db
                    .messages
                    .get(rtxn, &1u64.to_be_bytes())?
                    .map(<[u8]>::to_vec))
            })
            .unwrap()
            .unwrap();
        assert_eq!(stored[0], RECORD_VERSION);
        assert!(!stored.windows(text.len()).any(|w| w == text));
    }
}
