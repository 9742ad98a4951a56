//! The radio pairing link ([`cairn_node::pair_link`]) on whatever a shared channel carries:
//! the input is a script of frames (`len(1) ‖ frame`, the first byte of each frame's session
//! taken from ours when the selector says so, so frames reach past the session check) and
//! clock steps. Never a panic; messages come out in order, at most one per sequence number,
//! none longer than a pairing message; what the link sends is always a well-formed frame of
//! our session that our own peer would take.
#![no_main]

use cairn_node::pair_link::{PairLink, FRAME_HEADER_LEN, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

const SESSION: [u8; 8] = *b"session!";

fuzz_target!(|data: &[u8]| {
    let mut link = PairLink::new(SESSION, 100, 7);
    link.send(b"our key message".to_vec());
    let mut now = 0u64;
    let mut delivered = 0usize;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len & 0x7f).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let mut frame = body.to_vec();
        if len & 1 == 0 && frame.len() >= FRAME_HEADER_LEN {
            frame[..2].copy_from_slice(b"cp");
            frame[2..10].copy_from_slice(&SESSION);
        }
        if let Ok(Some(message)) = link.handle_frame(&frame) {
            assert!(!message.is_empty() && message.len() <= MAX_MESSAGE_LEN);
            delivered += 1;
            assert!(delivered <= 255, "more messages than sequence numbers");
            if delivered == 1 {
                link.send(b"our confirmation".to_vec());
            }
        }
        now += len as u64 * 7;
        while let Some(out) = link.poll_frame(now) {
            assert!(out.len() >= FRAME_HEADER_LEN && out.len() <= FRAME_HEADER_LEN + MAX_MESSAGE_LEN);
            assert_eq!(&out[..2], b"cp");
            assert_eq!(&out[2..10], &SESSION);
            // Our own peer takes what we send (or knows it already).
            let mut peer = PairLink::new(SESSION, 100, 9);
            assert!(peer.handle_frame(&out).is_ok() || out[10] > 1);
        }
        if let Some(at) = link.poll_timeout() {
            assert!(at <= now + 150, "a resend scheduled too far ahead");
        }
    }
});
