//! The sync session's messages, and how they pack into frames.
//!
//! A frame is what the hop session below carries in one piece (≤ its MTU: 200 bytes on LoRa,
//! up to 64 KiB on a LAN). It holds one or more messages back to back, each a self-delimiting
//! bincode value, so a LoRa frame can carry a receipt, a want list and a short text at once.
//!
//! The vocabulary is small (Briar's sync has six records; we have nine):
//! `Hello` says what a side is and wants and may open the first reconciliation round;
//! `Open` starts a later round; `Recon` carries the reconciliation itself ([`crate::recon`]);
//! `Chunk` carries item bytes; `Resume` asks the sender to skip what we already hold from a
//! cut transfer; `Done` ends a side's sending for the round; `Resync` asks the initiator for
//! a new round; `Close` says why a side gives up; `Custody` tells a sender that gave us
//! copies of an item that the item is safely stored, so its budget may shrink (or its own
//! copy go).

use bincode::{Decode, Encode};

use crate::codec::{self, BoundedBytes, BoundedVec, CodecError};
use crate::envelope::{ItemId, ScopeTag, MAX_ITEM_LEN};
use crate::recon::ReconMessage;

/// Version of this vocabulary. A peer speaking another one gets `Close` and a clear error.
pub const PROTOCOL_VERSION: u8 = 1;

/// Most scopes a hello may list: a person's conversations and groups, with room to spare.
pub const MAX_HELLO_SCOPES: usize = 1024;

/// Smallest frame the session works with (LoRa payload after link and hop-session headers).
pub const MIN_MTU: usize = 128;
/// Largest frame the session produces or accepts.
pub const MAX_MTU: usize = 64 * 1024;

/// Most bytes of item data one chunk may carry.
pub const MAX_CHUNK_DATA: usize = MAX_MTU;

/// Why a side closed the session (on the wire as one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer speaks a protocol version we do not.
    Version,
    /// The peer broke a protocol rule.
    Protocol,
    /// Our storage failed; try again later.
    Storage,
    /// We are shutting down.
    Shutdown,
}

/// The first message each side sends.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    pub version: u8,
    /// Whether this side carries envelopes of scopes other than its own.
    pub carries_for_others: bool,
    /// Scopes this side wants besides what it carries: its own destinations and
    /// conversations. Sorted, deduplicated.
    pub scopes: BoundedVec<ScopeTag, MAX_HELLO_SCOPES>,
    /// Distinct peers this side met in the last hour, not counting the one it is talking
    /// to ([`crate::policy::Sociability`]): routing hands copies to busier carriers. A count,
    /// so nobody learns whom anyone met.
    pub activity: u16,
    /// The initiator opens round 0 right away, guessing the peer carries everything it does;
    /// if the responder's hello shows otherwise, both drop this round and the initiator opens
    /// another with the right filter.
    pub open: Option<Open>,
}

/// Opens a reconciliation round: the salt of its short ids and the opener's summary.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Open {
    pub salt: [u8; 16],
    pub summary: ReconMessage,
}

/// Bytes of one item's canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Chunk {
    /// The item's short id in the current round.
    pub short: [u8; 8],
    /// Copies the receiver gets (spray-and-wait budget).
    pub copies: u8,
    /// Copies change hands (a share of the spray budget, or the sender's own copy): once the
    /// receiver has stored the item it answers [`Message::Custody`], and only then does the
    /// sender's budget shrink (or its copy go).
    pub custody: bool,
    pub total_len: u32,
    pub offset: u32,
    /// The full id, sent with the first chunk of an item that spans several chunks, so the
    /// receiver can keep a cut transfer and resume it next time.
    pub id: Option<ItemId>,
    pub data: BoundedBytes<MAX_CHUNK_DATA>,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    Hello(Hello),
    Open(Open),
    Recon(ReconMessage),
    Chunk(Chunk),
    /// "I already hold `offset` bytes of this item: continue from there."
    Resume {
        short: [u8; 8],
        offset: u32,
    },
    /// "I have sent everything I will send this round."
    Done,
    /// Responder to initiator: "my store changed; open a round when this one is over."
    Resync,
    Close(CloseReason),
    /// "This item, sent with `custody`, is stored here (or was delivered here)."
    Custody {
        id: ItemId,
    },
    /// A whole item outside any round, for the peer it concerns (a new message to its
    /// recipient, a receipt to the message's sender): it need not wait for reconciliation.
    Push(BoundedBytes<MAX_ITEM_LEN>),
    /// The same, in a form only this peer can rebuild ([`crate::compact`]).
    Compact(BoundedBytes<MAX_ITEM_LEN>),
}

impl Message {
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }
}

/// Bytes a chunk adds around its data, at most (tag, short id, copies, varint lengths,
/// optional id, data length prefix).
pub const CHUNK_OVERHEAD_MAX: usize = 1 + 8 + 1 + 1 + 5 + 5 + 1 + 32 + 5;

/// Appends `msg` to `frame`.
pub fn encode_into(msg: &Message, frame: &mut Vec<u8>) {
    codec::encode_into(msg, frame);
}

/// Splits a received frame into its messages. Refuses frames over `mtu`, empty frames, and
/// any message that does not decode.
pub fn decode_frame(frame: &[u8], mtu: usize) -> Result<Vec<Message>, CodecError> {
    if frame.len() > mtu {
        return Err(CodecError::TooLong {
            len: frame.len(),
            max: mtu,
        });
    }
    if frame.is_empty() {
        return Err(CodecError::Truncated);
    }
    let mut messages = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let (msg, used) = codec::decode_prefix::<Message>(rest)?;
        messages.push(msg);
        rest = &rest[used..];
    }
    Ok(messages)
}
