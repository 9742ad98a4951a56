//! The node's core: the application side of the sync engine.
//!
//! One task owns it. It seals queued messages into the sync store, opens what is delivered
//! to us, publishes receipts, keeps the message database's statuses in step with what the
//! links report, rolls the sealing keys forward every day (deleting old ones), and writes
//! the status file `cairn status` reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cairn_sync::envelope::{Item, ItemId, Priority};
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::{self, SyncEvent};
use cairn_sync::store::{ItemKind, Origin, Store, WriteBatch, WriteOp};
use cairn_sync::time::Timestamp;

use super::shared::{now_ms, Change, NodeEvent, Shared};
use crate::app::{AppDb, Incoming, Status};
use crate::contact::ContactBook;
use crate::identity::{Identity, IdentityPublicKey};
use crate::seal::{period_of, SealedHeader};

use crate::direct::{
    DirectContact, COPY_BUDGET, KIND_TEXT, MESSAGE_LIFETIME_SECS, PAYLOAD_V1, SHORT_TEXT,
};

/// Everything the core task owns.
pub struct Core {
    pub home: PathBuf,
    pub identity: Identity,
    pub name: String,
    pub shared: Arc<Shared>,
    pub app: AppDb,
    pub book: ContactBook,
    book_stamp: Option<std::time::SystemTime>,
    today: u64,
    /// Queued messages that cannot be sealed yet (no keys with the recipient), warned about
    /// once and skipped until the contacts change.
    unsealable: std::collections::HashSet<u64>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

/// What the log and the demo hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Story {
    Queued {
        to: String,
        text: String,
    },
    Sealed {
        to: String,
        envelope: ItemId,
        bytes: usize,
    },
    Received {
        from: String,
        text: String,
        envelope: ItemId,
    },
    Relayed {
        envelope: ItemId,
    },
    Delivered {
        envelope: ItemId,
    },
    /// A link is up: `peer` as this node would name it, `key` its identity.
    LinkUp {
        peer: String,
        key: [u8; 32],
    },
    LinkDown {
        peer: String,
        key: [u8; 32],
    },
    /// A receipt for someone else's message arrived: the copy carried here is gone.
    ReceiptCarried {
        envelope: ItemId,
    },
    /// mDNS found a node at these addresses.
    Discovered {
        addrs: Vec<std::net::SocketAddr>,
    },
    /// A meeting ended.
    Meeting {
        peer: Option<[u8; 32]>,
        items_sent: u64,
        items_received: u64,
        bytes_sent: u64,
        bytes_received: u64,
        millis: u64,
        ended_by: String,
    },
}

impl Core {
    pub fn new(
        home: &Path,
        identity: Identity,
        name: String,
        shared: Arc<Shared>,
        app: AppDb,
    ) -> anyhow::Result<Core> {
        let book = ContactBook::open(home, &identity)
            .with_context(|| format!("opening the contact book in {}", home.display()))?;
        let mut core = Core {
            home: home.to_path_buf(),
            identity,
            name,
            shared,
            app,
            book,
            book_stamp: None,
            today: 0,
            unsealable: std::collections::HashSet::new(),
        };
        core.book_stamp = core.book_mtime();
        core.new_day(period_of(now_ms() / 1000))?;
        Ok(core)
    }

    /// The policy of this node's sessions: the recipient tags of the key window.
    pub fn policy_for(identity: &Identity, today: u64) -> NodePolicy {
        NodePolicy {
            scopes: identity.mailbox_key().tags_around(today),
            ..NodePolicy::default()
        }
    }

    fn book_mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.home.join(crate::contact::CONTACT_BOOK_FILE_NAME))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Runs the periodic work: a new day, contacts added by the CLI, queued messages.
    pub fn tick(&mut self, stories: &mut Vec<Story>) -> anyhow::Result<()> {
        let today = period_of(now_ms() / 1000);
        if today != self.today {
            self.new_day(today)?;
        }
        let stamp = self.book_mtime();
        if stamp != self.book_stamp {
            self.book = ContactBook::open(&self.home, &self.identity)?;
            self.book_stamp = stamp;
            self.unsealable.clear();
            self.refresh_direct();
        }
        self.seal_queued(stories)
    }

    /// Rolls every contact's keys to `today` (deleting the ones that fall out of the
    /// window, on disk too) and asks for today's tags.
    fn new_day(&mut self, today: u64) -> anyhow::Result<()> {
        self.today = today;
        self.book.advance_pair_keys(today)?;
        self.shared
            .set_policy(Core::policy_for(&self.identity, today));
        self.refresh_direct();
        Ok(())
    }

    /// Hands the contacts' current keys to direct delivery ([`crate::direct`]).
    fn refresh_direct(&self) {
        let today = self.today;
        let contacts: Vec<_> = self
            .book
            .list()
            .into_iter()
            .filter_map(|contact| {
                let mut keys = contact.pair_keys()?;
                keys.advance(today);
                Some((
                    *contact.identity().as_bytes(),
                    DirectContact {
                        keys,
                        mailbox: contact.mailbox_key(),
                    },
                ))
            })
            .collect();
        self.shared.direct.set_contacts(contacts);
    }

    /// The name the user gave a contact (`contacts add NAME`), else the one in its code.
    fn contact_name(&self, identity: &IdentityPublicKey) -> String {
        if let Ok(Some(name)) = self.app.contact_name(identity) {
            return name;
        }
        self.book
            .get(identity)
            .map(|c| c.display_name().as_str().to_owned())
            .unwrap_or_else(|| "someone".into())
    }

    /// Others' envelopes this node is carrying.
    pub fn carried(&self) -> anyhow::Result<u64> {
        // Every item the store holds (what a walk of its keys counted, without the walk:
        // this runs every second, and a carrier may hold a million items).
        Ok(self.shared.lock_store().usage()?.items)
    }

    /// Seals what `cairn send` queued and puts it in the sync store.
    fn seal_queued(&mut self, stories: &mut Vec<Story>) -> anyhow::Result<()> {
        // Batches of this many share one transaction in each database; the core comes up
        // for air between batches so links' events are not kept waiting.
        const BATCH: usize = 512;
        let started = std::time::Instant::now();
        loop {
            let queued = self.app.queued(BATCH + self.unsealable.len())?;
            let now_secs = now_ms() / 1000;
            let mut ids = Vec::new();
            let mut envelopes = Vec::new();
            let mut labels = Vec::new();
            let mut recipients = Vec::new();
            for message in queued {
                if self.unsealable.contains(&message.id) {
                    continue;
                }
                let contact = self.book.get(&message.peer).cloned();
                let Some((contact, mut keys)) = contact.and_then(|c| c.pair_keys().map(|k| (c, k)))
                else {
                    tracing::warn!(
                        id = message.id,
                        "a queued message waits: its recipient is not a contact with keys"
                    );
                    self.unsealable.insert(message.id);
                    continue;
                };
                keys.advance(self.today);
                let header = SealedHeader {
                    created_at_secs: now_secs,
                    lifetime_secs: MESSAGE_LIFETIME_SECS,
                    scope: contact.mailbox_key().tag(keys.today()),
                    priority: if message.text.len() <= SHORT_TEXT {
                        Priority::High
                    } else {
                        Priority::Normal
                    },
                    copy_budget: COPY_BUDGET,
                };
                let mut plaintext = Vec::with_capacity(2 + message.text.len());
                plaintext.extend_from_slice(&[PAYLOAD_V1, KIND_TEXT]);
                plaintext.extend_from_slice(message.text.as_bytes());
                let sealed = keys.seal(&header, &plaintext)?;
                ids.push(message.id);
                recipients.push(*contact.identity().as_bytes());
                labels.push(self.contact_name(&contact.identity()));
                envelopes.push(header.envelope(sealed));
            }
            if envelopes.is_empty() {
                return Ok(());
            }
            let stored = {
                let mut store = self.shared.lock_store();
                let policy = self.shared.policy();
                session::originate_all(
                    &mut *store,
                    &policy,
                    &envelopes,
                    Timestamp::from_millis(now_ms()),
                )
                .context("storing messages")?
            };
            let pairs: Vec<(u64, ItemId)> =
                ids.iter().copied().zip(stored.iter().copied()).collect();
            self.app.mark_sealed_all(&pairs)?;
            // A recipient we are linked to right now gets its message straight away; a round
            // with it would find nothing more, while carriers still need one.
            let changes: Vec<Change> = recipients
                .iter()
                .zip(&stored)
                .map(|(recipient, id)| Change {
                    from: None,
                    pushed_to: self.shared.push_to(*recipient, *id).then_some(*recipient),
                })
                .collect();
            self.shared.changed(changes);
            for ((envelope, id), to) in envelopes.iter().zip(stored).zip(labels) {
                stories.push(Story::Sealed {
                    to,
                    envelope: id,
                    bytes: envelope.encode().len(),
                });
            }
            if envelopes.len() < BATCH || started.elapsed() > std::time::Duration::from_millis(200)
            {
                return Ok(());
            }
        }
    }

    /// Events from the links, handled together: the database writes they cause share one
    /// transaction per kind, so a burst of a thousand deliveries costs a few fsyncs.
    pub fn handle_all(
        &mut self,
        events: Vec<NodeEvent>,
        stories: &mut Vec<Story>,
    ) -> anyhow::Result<()> {
        let mut delivered_to_us = Vec::new();
        let mut ours_delivered = Vec::new();
        let mut ours_sent = Vec::new();
        for event in events {
            match event {
                NodeEvent::Sync(SyncEvent::Delivered { id }) => delivered_to_us.push(id),
                NodeEvent::Sync(SyncEvent::ReceiptForOwn { id }) => ours_delivered.push(id),
                // A carrier confirmed it stored one of our envelopes (or a copy of someone
                // else's we carry: filtered below).
                NodeEvent::Sync(SyncEvent::PeerStored { id }) => ours_sent.push(id),
                NodeEvent::Sync(SyncEvent::ItemStored {
                    kind: ItemKind::Tombstone { target },
                    ..
                }) => stories.push(Story::ReceiptCarried { envelope: target }),
                NodeEvent::LinkUp { peer } => stories.push(Story::LinkUp {
                    peer: self.peer_label(&peer),
                    key: peer,
                }),
                NodeEvent::LinkDown { peer } => stories.push(Story::LinkDown {
                    peer: self.peer_label(&peer),
                    key: peer,
                }),
                NodeEvent::Sync(_) => {}
            }
        }
        if !ours_sent.is_empty() {
            // Only our own envelopes (a carrier sends others' too).
            let ours: Vec<ItemId> = {
                let store = self.shared.lock_store();
                let mut ours = Vec::new();
                for id in ours_sent {
                    if store
                        .meta(&id)?
                        .is_some_and(|m| m.origin == Origin::Local && m.kind == ItemKind::Envelope)
                    {
                        ours.push(id);
                    }
                }
                ours
            };
            self.app.advance_all(&ours, Status::Relayed)?;
            stories.extend(ours.into_iter().map(|envelope| Story::Relayed { envelope }));
        }
        if !ours_delivered.is_empty() {
            self.app.advance_all(&ours_delivered, Status::Delivered)?;
            stories.extend(
                ours_delivered
                    .into_iter()
                    .map(|envelope| Story::Delivered { envelope }),
            );
        }
        if !delivered_to_us.is_empty() {
            self.open_delivered(&delivered_to_us, stories)?;
        }
        Ok(())
    }

    fn peer_label(&self, peer: &[u8; 32]) -> String {
        match IdentityPublicKey::from_bytes(*peer) {
            Ok(identity) => match self.book.get(&identity) {
                Some(_) => self.contact_name(&identity),
                None => format!("a team member ({})", &hex_prefix(peer)),
            },
            Err(_) => "an unknown peer".into(),
        }
    }

    /// Envelopes for us arrived: find which contact sealed each, record the texts, publish
    /// the receipts. One that opens with nobody's keys is dropped from the inbox (it cannot
    /// be answered with a receipt: only its sender could).
    fn open_delivered(&mut self, ids: &[ItemId], stories: &mut Vec<Story>) -> anyhow::Result<()> {
        let contacts: Vec<(IdentityPublicKey, crate::seal::PairKeys)> = self
            .book
            .list()
            .into_iter()
            .filter_map(|c| c.pair_keys().map(|k| (c.identity(), k)))
            .collect();
        let now_secs = now_ms() / 1000;
        let mut incoming = Vec::new();
        let mut acks = Vec::new();
        let mut discards = Vec::new();
        for &id in ids {
            let entry = self.shared.lock_store().inbox_entry(&id)?;
            let Some(entry) = entry else {
                continue;
            };
            let Ok(Item::Envelope(envelope)) = Item::decode(&entry.encoded) else {
                discards.push((id, "not an envelope"));
                continue;
            };
            let header = SealedHeader::of(&envelope);
            let opened = contacts.iter().find_map(|(identity, keys)| {
                keys.open(&header, &envelope.receipt_lock, &envelope.body)
                    .ok()
                    .map(|opened| (*identity, opened))
            });
            let Some((from, opened)) = opened else {
                discards.push((id, "sealed by nobody we know (or altered)"));
                continue;
            };
            let text = match opened.plaintext.split_first_chunk::<2>() {
                Some(([PAYLOAD_V1, KIND_TEXT], text)) => String::from_utf8_lossy(text).into_owned(),
                _ => {
                    discards.push((id, "a payload this build does not understand"));
                    continue;
                }
            };
            incoming.push(Incoming {
                from,
                text,
                sent_at: envelope.created_at_secs,
                received_at: now_secs,
                envelope: id,
            });
            acks.push((id, opened.proof));
        }
        // The text is safe in the message database before the receipt tells anyone so.
        self.app.record_received_all(&incoming)?;
        if !acks.is_empty() {
            let receipts = {
                let mut store = self.shared.lock_store();
                session::acknowledge_all(&mut *store, &acks, Timestamp::from_millis(now_ms()))?
            };
            // Each receipt goes straight back to the message's sender (now, or when next
            // linked); carriers learn of it in their next round.
            let mut changes = Vec::new();
            for (receipt, message) in receipts.into_iter().zip(&incoming) {
                if let Ok(receipt) = receipt {
                    let sender = *message.from.as_bytes();
                    changes.push(Change {
                        from: None,
                        pushed_to: self.shared.push_to(sender, receipt).then_some(sender),
                    });
                }
            }
            self.shared.changed(changes);
        }
        for (id, why) in discards {
            self.discard(id, why)?;
        }
        for message in incoming {
            stories.push(Story::Received {
                from: self.contact_name(&message.from),
                text: message.text,
                envelope: message.envelope,
            });
        }
        Ok(())
    }

    fn discard(&mut self, id: ItemId, why: &str) -> anyhow::Result<()> {
        tracing::warn!(envelope = %id.to_hex(), "dropping a delivered envelope: {why}");
        let mut batch = WriteBatch::new();
        batch.push(WriteOp::AckInbox(id));
        self.shared.lock_store().commit(batch)?;
        Ok(())
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}
