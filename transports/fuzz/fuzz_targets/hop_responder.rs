//! Arbitrary bytes to a fresh responder (stream chunks or datagrams), with timers firing.
#![no_main]

use cairn_transports::hop::*;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let framing = common::framing(sel);
    let mut b = HopSession::new(common::config(Role::Responder, 2, framing), 0, [2; 32]).unwrap();
    let mut now = 0u64;
    // Each piece: one length byte, then that many bytes (a stream chunk or one datagram).
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        b.handle_input(now, piece);
        now += 7;
        if len & 0x80 != 0 {
            b.handle_timeout(now);
        }
        common::drain(&mut b);
        rest = tail;
    }
    b.handle_timeout(u64::MAX);
    common::drain(&mut b);
    assert!(b.is_closed() || b.is_established() == b.peer().is_some());
});
