//! An established pair; the input scripts genuine frames, forgeries, bit flips, replays and
//! time passing. Invariant: nothing panics and the receiver never delivers a frame that was
//! not sent.
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
    let mut a = HopSession::new(common::config(Role::Initiator, 1, framing), 0, [1; 32]).unwrap();
    let mut b = HopSession::new(common::config(Role::Responder, 2, framing), 0, [2; 32]).unwrap();
    for _ in 0..3 {
        while let Some(d) = a.poll_transmit() {
            b.handle_input(0, &d);
        }
        while let Some(d) = b.poll_transmit() {
            a.handle_input(0, &d);
        }
    }
    assert!(a.is_established() && b.is_established());
    while b.poll_event().is_some() {}
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut wire: Vec<Vec<u8>> = Vec::new();
    let mut now = 0u64;
    while let Some((&op, tail)) = rest.split_first() {
        let Some((&arg, tail)) = tail.split_first() else {
            break;
        };
        rest = tail;
        match op % 5 {
            0 => {
                let n = usize::from(arg).min(rest.len()).max(1);
                let frame: Vec<u8> = rest.iter().take(n).copied().chain([arg]).collect();
                if a.send(&frame).is_ok() {
                    sent.push(frame);
                    while let Some(d) = a.poll_transmit() {
                        wire.push(d);
                    }
                }
            }
            1 => {
                let n = usize::from(arg).min(rest.len());
                let (junk, tail) = rest.split_at(n);
                b.handle_input(now, junk);
                rest = tail;
            }
            2 => {
                if let Some(d) = wire.get(usize::from(arg) % wire.len().max(1)) {
                    let mut d = d.clone();
                    let i = usize::from(arg) % d.len();
                    d[i] ^= 1 << (arg % 8);
                    b.handle_input(now, &d);
                }
            }
            3 => {
                if let Some(d) = wire.get(usize::from(arg) % wire.len().max(1)) {
                    b.handle_input(now, d);
                }
            }
            _ => {
                now += u64::from(arg) * 1000;
                b.handle_timeout(now);
            }
        }
        while let Some(e) = b.poll_event() {
            if let HopEvent::Frame(f) = e {
                assert!(sent.contains(&f), "delivered a frame that was never sent");
            }
        }
        while b.poll_transmit().is_some() {}
    }
});
