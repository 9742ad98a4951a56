//! Routing and buffer policy: who gets a copy of what, and what a full buffer gives up.
//!
//! Pure decisions over item metadata. The session asks; the store is never touched here.
//!
//! Routing is epidemic within scopes, bounded by a per-envelope copy budget: spray, then
//! focus (Spyropoulos et al., "Spray and Focus", 2007).
//!
//! * **Spray.** A node holding `c > 1` copies splits them with a carrier it meets, in
//!   proportion to how many peers each met in the last hour (half each when equal: binary
//!   spray-and-wait), so `c` copies spread in about `log2 c` meetings and more of them land
//!   on people who move around.
//! * **Focus.** A node holding the last copy does not just wait for the destination: it hands
//!   the copy over, custody and all, to a clearly busier peer. The copy moves; it does not
//!   multiply. It is dropped here only once the peer confirms it has stored it
//!   ([`crate::wire::Message::Custody`]), so a cut link never loses it. The sender of a
//!   message keeps its own copy (passive, for the destination only) until the receipt comes
//!   back.
//!
//! Why busyness and not "who met the destination last" (the classic focus utility): on the
//! Helsinki trace, moving copies towards recent encounters with the destination made both
//! delivery and latency *worse* than not moving them at all, even with the utility fitted to
//! the trace: copies chase where the destination was and bunch up there. Busyness is
//! destination-blind, so copies stay spread out, and it needs nothing but a count in the
//! hello: nobody learns whom anyone met. See `docs/sync-protocol.md` for the figures.
//!
//! Receipts (tombstones) spread without limit, because every copy they purge saves buffer and
//! airtime.

use crate::envelope::ScopeTag;
use crate::store::{ItemKind, ItemMeta, Origin};

/// How copies are handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingPolicy {
    /// Cap on the copy budget this node honours for envelopes it receives from others, so a
    /// careless or hostile sender cannot make the team flood. Own envelopes keep theirs.
    pub max_copies_accepted: u8,
    /// Move last copies to busier peers (the focus phase). Off: plain spray-and-wait.
    pub focus: bool,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            max_copies_accepted: 32,
            focus: true,
        }
    }
}

/// The window over which a node counts the peers it met ([`Sociability`]).
pub const ACTIVITY_WINDOW_SECS: u64 = 3600;

/// How many distinct peers each side met in the last [`ACTIVITY_WINDOW_SECS`], not counting
/// each other: a node that meets more people is more likely to meet any given destination
/// soon (in the Helsinki trace, a node that met 60 peers in the last hour meets a given node
/// within 30 minutes 2.4 times as often as one that met fewer than 15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sociability {
    pub own: u32,
    pub peer: u32,
}

impl Sociability {
    /// Whether the peer is clearly the better carrier: half again as busy as we are, plus
    /// one, so that two similar nodes do not pass a copy back and forth.
    pub fn peer_is_busier(&self) -> bool {
        u64::from(self.peer) * 2 > u64::from(self.own) * 3 + 2
    }

    /// Copies to hand over out of `copies > 1`: in proportion to how busy the peer is next
    /// to us (half each when equal), keeping at least one and giving at least one.
    pub fn spray_grant(&self, copies: u8) -> u8 {
        let (own, peer) = (u64::from(self.own) + 1, u64::from(self.peer) + 1);
        let c = u64::from(copies);
        let grant = (c * peer + (own + peer) / 2) / (own + peer);
        grant.clamp(1, c.saturating_sub(1).max(1)) as u8
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
    /// Copies we keep afterwards (unchanged when the peer is the destination). 0 keeps the
    /// item for its destination only.
    pub keep: u8,
    /// We hand over our copy: drop it once the peer confirms custody.
    pub release: bool,
}

fn delivery(meta: &ItemMeta) -> Handover {
    Handover {
        grant: 1,
        keep: meta.copies,
        release: false,
    }
}

/// Whether to send `meta`'s item to `peer`, and how the copy budget splits.
pub fn handover(
    meta: &ItemMeta,
    peer: &PeerWants,
    routing: &RoutingPolicy,
    sociability: Sociability,
) -> Option<Handover> {
    if !peer.wants(&meta.scope) {
        return None;
    }
    match meta.kind {
        // Anti-packets spread epidemically: each one purges copies and saves airtime.
        ItemKind::Tombstone { .. } => Some(delivery(meta)),
        // Delivery: the destination consumes it and answers with a tombstone.
        ItemKind::Envelope if peer.is_destination(&meta.scope) => Some(delivery(meta)),
        ItemKind::Envelope if meta.copies > 1 => {
            let grant = if routing.focus {
                sociability.spray_grant(meta.copies)
            } else {
                meta.copies / 2
            };
            Some(Handover {
                grant,
                keep: meta.copies - grant,
                release: false,
            })
        }
        ItemKind::Envelope if meta.copies == 1 && routing.focus && sociability.peer_is_busier() => {
            Some(match meta.origin {
                // Our own message: the copy moves on, ours stays for the receipt.
                Origin::Local => Handover {
                    grant: 1,
                    keep: 0,
                    release: false,
                },
                Origin::Remote => Handover {
                    grant: 1,
                    keep: 1,
                    release: true,
                },
            })
        }
        ItemKind::Envelope => None,
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

    fn spray_and_wait() -> RoutingPolicy {
        RoutingPolicy {
            focus: false,
            ..RoutingPolicy::default()
        }
    }

    fn met(own: u32, peer: u32) -> Sociability {
        Sociability { own, peer }
    }

    fn split(h: Option<Handover>) -> Option<(u8, u8, bool)> {
        h.map(|h| (h.grant, h.keep, h.release))
    }

    fn carrier() -> PeerWants {
        PeerWants {
            carries_for_others: true,
            scopes: vec![ScopeTag([9; 8])],
        }
    }

    #[test]
    fn binary_spray_halves_then_waits_for_destination() {
        let destination = PeerWants {
            carries_for_others: true,
            scopes: vec![ScopeTag([1; 8])],
        };
        let r = spray_and_wait();
        let busy = met(1, 50);
        let env = |copies| meta(ItemKind::Envelope, 1, copies);
        assert_eq!(
            split(handover(&env(8), &carrier(), &r, busy)),
            Some((4, 4, false))
        );
        assert_eq!(
            split(handover(&env(3), &carrier(), &r, busy)),
            Some((1, 2, false))
        );
        // Without focus a last copy waits for the destination, however busy the peer.
        assert_eq!(handover(&env(1), &carrier(), &r, busy), None);
        assert_eq!(
            split(handover(&env(1), &destination, &r, met(0, 0))),
            Some((1, 1, false))
        );
    }

    #[test]
    fn spray_gives_busier_peers_more_copies_but_never_all() {
        let r = RoutingPolicy::default();
        let env = |copies| meta(ItemKind::Envelope, 1, copies);
        let grant = |copies, own, peer| {
            handover(&env(copies), &carrier(), &r, met(own, peer)).map(|h| (h.grant, h.keep))
        };
        assert_eq!(grant(8, 10, 10), Some((4, 4)));
        assert_eq!(grant(8, 2, 40), Some((7, 1)));
        assert_eq!(grant(8, 40, 2), Some((1, 7)));
        assert_eq!(grant(2, 0, 1000), Some((1, 1)));
        assert_eq!(grant(255, 0, 0), Some((128, 127)));
    }

    #[test]
    fn focus_moves_the_last_copy_only_to_a_clearly_busier_peer() {
        let r = RoutingPolicy::default();
        let last = meta(ItemKind::Envelope, 1, 1);
        // Custody moves: the peer gets the copy, ours goes when it confirms.
        assert_eq!(
            split(handover(&last, &carrier(), &r, met(10, 40))),
            Some((1, 1, true))
        );
        assert_eq!(
            split(handover(&last, &carrier(), &r, met(0, 2))),
            Some((1, 1, true))
        );
        // Not clearly busier: the copy stays, so similar nodes do not pass it back and forth.
        assert_eq!(handover(&last, &carrier(), &r, met(10, 16)), None);
        assert_eq!(handover(&last, &carrier(), &r, met(0, 1)), None);
        assert_eq!(handover(&last, &carrier(), &r, met(40, 10)), None);
        // The sender's own last copy moves on but stays here, passive, for the receipt.
        let own = ItemMeta {
            origin: Origin::Local,
            ..last.clone()
        };
        assert_eq!(
            split(handover(&own, &carrier(), &r, met(0, 9))),
            Some((1, 0, false))
        );
        let passive = ItemMeta {
            copies: 0,
            ..own.clone()
        };
        assert_eq!(handover(&passive, &carrier(), &r, met(0, 90)), None);
    }

    #[test]
    fn tombstones_always_spread_and_non_carriers_get_only_their_scopes() {
        let phone = PeerWants {
            carries_for_others: false,
            scopes: vec![ScopeTag([2; 8])],
        };
        let r = RoutingPolicy::default();
        let tombstone = |scope| {
            meta(
                ItemKind::Tombstone {
                    target: ItemId([0; 32]),
                },
                scope,
                1,
            )
        };
        let none = met(0, 0);
        assert!(handover(&tombstone(2), &phone, &r, none).is_some());
        assert!(handover(&tombstone(3), &phone, &r, none).is_none());
        assert!(handover(&meta(ItemKind::Envelope, 3, 8), &phone, &r, none).is_none());
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
