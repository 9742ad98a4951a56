//! Link frames: what goes on air (or down a cable) around a hop datagram.
//!
//! A shared channel carries frames from many devices to many devices, so each frame says who
//! sent it, and handshake frames whom they are for. Addresses are 16-bit, drawn at random by
//! each node when it starts (not identities: a listener cannot tie an address to a person,
//! and it changes with every restart). Every byte counts at 200 bytes a frame, so the link
//! reuses the hop datagram's own first byte as its type and inserts its addresses after it:
//!
//! ```text
//! beacon     0x10 | src(2) | net(2)                            5 bytes: "I am here"
//! handshake  t    | dst(2) | src(2) | rest of hop message t     t = 1, 2, 3 (hop types)
//! transport  t    | src(2) | rest of hop datagram t            t = 0x80..=0xFF
//! ```
//!
//! Handshake message 2 is 196 bytes, so it goes out as exactly 200. A transport frame
//! carries no destination: the receiver looks the sender up among its sessions and tries
//! that one key; a frame for someone else fails authentication there and is dropped (one
//! AEAD attempt, no state touched). That saves two bytes in every data frame, which on LoRa
//! is worth more than the cycles. `net` is a 16-bit tag of the team's network key, so
//! devices of other teams on the same channel do not spend airtime on handshakes that
//! cannot succeed (the handshake itself still proves the key).

/// Beacon type byte.
pub const TYPE_BEACON: u8 = 0x10;
/// Bytes of a beacon.
pub const BEACON_LEN: usize = 5;
/// Bytes the link adds to a hop handshake message.
pub const HANDSHAKE_OVERHEAD: usize = 4;
/// Bytes the link adds to a hop transport datagram.
pub const TRANSPORT_OVERHEAD: usize = 2;

/// A link address. 0x0000 and 0xFFFF are never used, so a zeroed or all-ones frame is not
/// mistaken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub u16);

impl Addr {
    /// Whether this address may be used.
    #[must_use]
    pub fn is_valid(self) -> bool {
        self.0 != 0 && self.0 != u16::MAX
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}", self.0)
    }
}

/// A parsed link frame; the hop datagram is rebuilt with its type byte in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// A device announcing itself.
    Beacon {
        /// Who.
        src: Addr,
        /// Its network tag.
        net: u16,
    },
    /// A hop handshake message for `dst`.
    Handshake {
        /// For whom.
        dst: Addr,
        /// From whom.
        src: Addr,
        /// The hop datagram (type byte first).
        datagram: Vec<u8>,
    },
    /// A hop transport datagram from `src`.
    Transport {
        /// From whom.
        src: Addr,
        /// The hop datagram (type byte first).
        datagram: Vec<u8>,
    },
}

/// Why a frame is not a link frame. Frames on a shared channel come from anyone: these are
/// counted and dropped, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Empty, or shorter than its type needs.
    #[error("link frame too short")]
    Truncated,
    /// A type byte no Cairn link sends.
    #[error("unknown link frame type {0:#04x}")]
    UnknownType(u8),
    /// A reserved address.
    #[error("reserved link address")]
    BadAddress,
    /// Bytes after a beacon.
    #[error("trailing bytes after a beacon")]
    Trailing,
}

impl LinkFrame {
    /// Parses one frame as heard.
    ///
    /// # Errors
    ///
    /// Anything that is not a well-formed link frame.
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        let (&t, rest) = frame.split_first().ok_or(FrameError::Truncated)?;
        let addr = |bytes: &[u8]| -> Result<Addr, FrameError> {
            let a = Addr(u16::from_be_bytes([bytes[0], bytes[1]]));
            if a.is_valid() {
                Ok(a)
            } else {
                Err(FrameError::BadAddress)
            }
        };
        match t {
            TYPE_BEACON => {
                if rest.len() < 4 {
                    return Err(FrameError::Truncated);
                }
                if rest.len() > 4 {
                    return Err(FrameError::Trailing);
                }
                Ok(Self::Beacon {
                    src: addr(&rest[..2])?,
                    net: u16::from_be_bytes([rest[2], rest[3]]),
                })
            }
            1..=3 => {
                if rest.len() < 5 {
                    return Err(FrameError::Truncated);
                }
                let mut datagram = Vec::with_capacity(rest.len() - 3);
                datagram.push(t);
                datagram.extend_from_slice(&rest[4..]);
                Ok(Self::Handshake {
                    dst: addr(&rest[..2])?,
                    src: addr(&rest[2..4])?,
                    datagram,
                })
            }
            0x80..=0xFF => {
                if rest.len() < 3 {
                    return Err(FrameError::Truncated);
                }
                let mut datagram = Vec::with_capacity(rest.len() - 1);
                datagram.push(t);
                datagram.extend_from_slice(&rest[2..]);
                Ok(Self::Transport {
                    src: addr(&rest[..2])?,
                    datagram,
                })
            }
            other => Err(FrameError::UnknownType(other)),
        }
    }

    /// The bytes on air.
    ///
    /// # Panics
    ///
    /// If a handshake or transport datagram is empty (the hop session never makes one).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Beacon { src, net } => {
                let mut out = vec![TYPE_BEACON];
                out.extend_from_slice(&src.0.to_be_bytes());
                out.extend_from_slice(&net.to_be_bytes());
                out
            }
            Self::Handshake { dst, src, datagram } => {
                let mut out = Vec::with_capacity(datagram.len() + HANDSHAKE_OVERHEAD);
                out.push(datagram[0]);
                out.extend_from_slice(&dst.0.to_be_bytes());
                out.extend_from_slice(&src.0.to_be_bytes());
                out.extend_from_slice(&datagram[1..]);
                out
            }
            Self::Transport { src, datagram } => {
                let mut out = Vec::with_capacity(datagram.len() + TRANSPORT_OVERHEAD);
                out.push(datagram[0]);
                out.extend_from_slice(&src.0.to_be_bytes());
                out.extend_from_slice(&datagram[1..]);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_frames() {
        let beacon = LinkFrame::Beacon {
            src: Addr(0x1234),
            net: 0xabcd,
        };
        assert_eq!(beacon.encode(), [0x10, 0x12, 0x34, 0xab, 0xcd]);
        let hs = LinkFrame::Handshake {
            dst: Addr(0x0102),
            src: Addr(0x0304),
            datagram: vec![0x02, 0xee, 0xff],
        };
        assert_eq!(hs.encode(), [0x02, 0x01, 0x02, 0x03, 0x04, 0xee, 0xff]);
        let tr = LinkFrame::Transport {
            src: Addr(0x0304),
            datagram: vec![0x81, 1, 2, 3, 9],
        };
        assert_eq!(tr.encode(), [0x81, 0x03, 0x04, 1, 2, 3, 9]);
        for frame in [beacon, hs, tr] {
            assert_eq!(LinkFrame::parse(&frame.encode()), Ok(frame));
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(LinkFrame::parse(&[]), Err(FrameError::Truncated));
        assert_eq!(LinkFrame::parse(&[0x10, 0, 1]), Err(FrameError::Truncated));
        assert_eq!(
            LinkFrame::parse(&[0x10, 0, 0, 1, 1]),
            Err(FrameError::BadAddress)
        );
        assert_eq!(
            LinkFrame::parse(&[0x10, 0, 1, 1, 1, 0]),
            Err(FrameError::Trailing)
        );
        assert_eq!(
            LinkFrame::parse(&[0x42, 0, 1]),
            Err(FrameError::UnknownType(0x42))
        );
        assert_eq!(
            LinkFrame::parse(&[0x81, 0xff, 0xff, 0]),
            Err(FrameError::BadAddress)
        );
    }
}
