//! Routing and buffer policy: who gets a copy of what, and what a full buffer gives up.
//!
//! Pure decisions over item metadata. The session asks; the store is never touched here.
//!
//! Routing is epidemic within scopes, bounded by a per-envelope copy budget in the manner of
//! binary spray-and-wait: a node holding `c > 1` copies hands `c / 2` to a carrier it meets and
//! keeps the rest; a node holding one copy waits until it meets the destination. Receipts
//! (tombstones) spread without limit, because every copy they purge saves buffer and airtime.

use crate::envelope::ScopeTag;
use crate::store::{ItemKind, ItemMeta, Origin};

/// How copies are handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingPolicy {
    /// Cap on the copy budget this node honours for envelopes it receives from others, so a
    /// careless or hostile sender cannot make the team flood. Own envelopes keep theirs.
    pub max_copies_accepted: u8,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            max_copies_accepted: 32,
        }
    }
}

/// What a node is and wants; shared by all its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePolicy {
    /// Carry envelopes for scopes other than our own (team relays do; a phone low on space
    /// may not).
    pub carries_for_others: bool,
    /// Scopes this node is the destination of: envelopes tagged with one of them are
    /// delivered to its inbox and answered with a tombstone.
    pub scopes: Vec<ScopeTag>,
    pub routing: RoutingPolicy,
    /// Bytes of item encodings this node keeps at most; beyond it, others' items are evicted.
    pub quota_bytes: u64,
    /// Clocks in the field are wrong: an item is kept this long past its expiry, and an
    /// envelope may claim a creation time this far in our future. Briar allows a day.
    pub clock_skew_tolerance_secs: u64,
}

impl Default for NodePolicy {
    fn default() -> Self {
        NodePolicy {
            carries_for_others: true,
            scopes: Vec::new(),
            routing: RoutingPolicy::default(),
            quota_bytes: 256 * 1024 * 1024,
            clock_skew_tolerance_secs: 24 * 3600,
        }
    }
}

impl NodePolicy {
    /// Whether envelopes tagged `scope` end here.
    pub fn is_destination(&self, scope: &ScopeTag) -> bool {
        self.scopes.contains(scope)
    }

    /// Whether an item with this expiry is gone for good at `now_secs`.
    pub fn is_expired(&self, expires_at_secs: u64, now_secs: u64) -> bool {
        expires_at_secs.saturating_add(self.clock_skew_tolerance_secs) < now_secs
    }

    /// Whether an envelope claims to be created too far in our future to be believed.
    pub fn is_from_future(&self, created_at_secs: u64, now_secs: u64) -> bool {
        created_at_secs > now_secs.saturating_add(self.clock_skew_tolerance_secs)
    }
}

/// What a peer told us about itself in its hello.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerWants {
    pub carries_for_others: bool,
    /// Sorted and deduplicated.
    pub scopes: Vec<ScopeTag>,
}

impl PeerWants {
    pub fn wants(&self, scope: &ScopeTag) -> bool {
        self.carries_for_others || self.scopes.binary_search(scope).is_ok()
    }
    pub fn is_destination(&self, scope: &ScopeTag) -> bool {
        self.scopes.binary_search(scope).is_ok()
    }
}

/// The decision to hand an item to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    /// Copies the peer receives with the item.
    pub grant: u8,
    /// Copies we keep afterwards (unchanged when the peer is the destination).
    pub keep: u8,
}

/// Whether to send `meta`'s item to `peer`, and how the copy budget splits.
pub fn handover(meta: &ItemMeta, peer: &PeerWants) -> Option<Handover> {
    if !peer.wants(&meta.scope) {
        return None;
    }
    match meta.kind {
        // Anti-packets spread epidemically: each one purges copies and saves airtime.
        ItemKind::Tombstone { .. } => Some(Handover {
            grant: 1,
            keep: meta.copies,
        }),
        ItemKind::Envelope => {
            if peer.is_destination(&meta.scope) {
                // Delivery: the destination consumes it and answers with a tombstone.
                Some(Handover {
                    grant: 1,
                    keep: meta.copies,
                })
            } else if meta.copies > 1 {
                let grant = meta.copies / 2;
                Some(Handover {
                    grant,
                    keep: meta.copies - grant,
                })
            } else {
                None
            }
        }
    }
}

/// Copies to record for an envelope received with `granted` copies.
pub fn accepted_copies(policy: &NodePolicy, granted: u8, origin: Origin) -> u8 {
    let granted = granted.max(1);
    match origin {
        Origin::Local => granted,
        Origin::Remote => granted.min(policy.routing.max_copies_accepted.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ItemId, Priority};
    use crate::time::Timestamp;

    fn meta(kind: ItemKind, scope: u8, copies: u8) -> ItemMeta {
        ItemMeta {
            kind,
            priority: Priority::Normal,
            scope: ScopeTag([scope; 8]),
            expires_at_secs: 100,
            created_at_secs: 0,
            stored_at: Timestamp::ZERO,
            len: 10,
            copies,
            origin: Origin::Remote,
        }
    }

    #[test]
    fn binary_spray_halves_then_waits_for_destination() {
        let carrier = PeerWants {
            carries_for_others: true,
            scopes: vec![ScopeTag([9; 8])],
        };
        let destination = PeerWants {
            carries_for_others: true,
            scopes: vec![ScopeTag([1; 8])],
        };
        let h = handover(&meta(ItemKind::Envelope, 1, 8), &carrier).unwrap();
        assert_eq!((h.grant, h.keep), (4, 4));
        let h = handover(&meta(ItemKind::Envelope, 1, 3), &carrier).unwrap();
        assert_eq!((h.grant, h.keep), (1, 2));
        assert_eq!(handover(&meta(ItemKind::Envelope, 1, 1), &carrier), None);
        let h = handover(&meta(ItemKind::Envelope, 1, 1), &destination).unwrap();
        assert_eq!((h.grant, h.keep), (1, 1));
    }

    #[test]
    fn tombstones_always_spread_and_non_carriers_get_only_their_scopes() {
        let phone = PeerWants {
            carries_for_others: false,
            scopes: vec![ScopeTag([2; 8])],
        };
        assert!(handover(
            &meta(
                ItemKind::Tombstone {
                    target: ItemId([0; 32])
                },
                2,
                1
            ),
            &phone
        )
        .is_some());
        assert!(handover(
            &meta(
                ItemKind::Tombstone {
                    target: ItemId([0; 32])
                },
                3,
                1
            ),
            &phone
        )
        .is_none());
        assert!(handover(&meta(ItemKind::Envelope, 3, 8), &phone).is_none());
    }

    #[test]
    fn skew_tolerance_keeps_late_messages() {
        let p = NodePolicy {
            clock_skew_tolerance_secs: 10,
            ..NodePolicy::default()
        };
        assert!(!p.is_expired(100, 105));
        assert!(p.is_expired(100, 111));
        assert!(!p.is_from_future(110, 100));
        assert!(p.is_from_future(111, 100));
    }
}
