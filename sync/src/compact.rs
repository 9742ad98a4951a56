//! Compact items: an item sent in a form only its peer can rebuild.
//!
//! Most of an envelope's bytes are not information for the one peer who is its recipient
//! and who meets its sender directly: that peer can recompute the recipient tag, the receipt
//! lock and the whole sealed body from the plaintext and the keys the two share. On a LoRa
//! channel those bytes cost airtime. So the sync session lets the application say, per
//! peer, "this item can go as these few bytes" ([`Compactor::compact`]) and, at the other
//! end, "these bytes from this peer stand for this item" ([`Compactor::expand`]).
//!
//! The session treats a rebuilt item exactly as one received whole: the rebuilt encoding is
//! decoded, its id computed, and every check (expiry, tombstones, forged receipts, quota)
//! runs as for any other item. Sync itself knows nothing of seals: the node implements the
//! trait (`cairn-node`'s `direct` module). The hop session authenticates who sent the
//! compact bytes, which is what lets the receiver trust the plaintext without a second
//! authentication tag.

use crate::envelope::Item;

/// The application's two halves of compact transfer. `peer` is the identity key the hop
/// session authenticated ([`crate::session::SyncSession::peer_key`]).
pub trait Compactor: Send + Sync + std::fmt::Debug {
    /// A compact form of `item` for `peer`, or `None` when it cannot rebuild it (not the
    /// recipient, keys gone, not a text, ...). Must be deterministic.
    fn compact(&self, peer: &[u8], item: &Item) -> Option<Vec<u8>>;

    /// The item `data` from `peer` stands for, or `None` when it does not rebuild (unknown
    /// sender, keys gone, malformed). A `None` is not an error: the item comes the long way,
    /// through reconciliation.
    fn expand(&self, peer: &[u8], data: &[u8], now_secs: u64) -> Option<Item>;
}
