//! `LinkFrame::parse` on arbitrary bytes, as heard on a shared channel: never a panic, and a
//! frame that parses encodes to exactly the bytes it came from (so nothing a peer sends is
//! read one way and relayed or compared another).
#![no_main]

use cairn_transports::link::frame::{FrameError, LinkFrame, BEACON_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match LinkFrame::parse(data) {
        Ok(frame) => {
            assert_eq!(frame.encode(), data, "{frame:?} re-encodes differently");
            match &frame {
                LinkFrame::Beacon { src, .. } => {
                    assert_eq!(data.len(), BEACON_LEN);
                    assert!(src.is_valid());
                }
                LinkFrame::Handshake { dst, src, datagram } => {
                    assert!(dst.is_valid() && src.is_valid());
                    assert!(matches!(datagram.first(), Some(1..=3)));
                }
                LinkFrame::Transport { src, datagram } => {
                    assert!(src.is_valid());
                    assert!(datagram.first().is_some_and(|t| t & 0x80 != 0));
                }
            }
        }
        Err(FrameError::UnknownType(t)) => assert_eq!(Some(&t), data.first()),
        Err(_) => {}
    }
});
