//! One `Arq` stream (end A) and an honest peer (end B), driven by the input: messages queued
//! at either end, frames taken from either end and delivered, dropped, repeated or swapped on
//! a lossy bearer, time passing, and hostile frames to A (raw bytes, bit flips of B's frames,
//! forged acknowledgements).
//!
//! Invariants, always: no panic; frames fit `max_frame`; what a receiver holds stays bounded
//! (fewer than `MAX_WINDOW` frames out of order, a partial message of at most `max_message`
//! plus its length prefix); messages out are never longer than `max_message`; a handled
//! deadline is never due again at once. While every frame A saw came from B: each end
//! delivers exactly the other's messages, whole, in order, once; and at the end, a lossless
//! bearer brings both ends to idle with everything delivered (no stall).
//!
//! Input: byte 0 picks the config (bit 0: `radio(176, 300)` or `fast(1000)`; bit 1:
//! `max_message` 300, so that fuzzed frames reach the limit). Then operations, each an
//! opcode byte and an argument byte (some take more bytes), see `step`.
#![no_main]

use std::collections::VecDeque;

use cairn_transports::link::arq::{Arq, ArqConfig, ArqError, ARQ_HEADER_LEN, MAX_WINDOW};
use libfuzzer_sys::fuzz_target;

/// A bearer holds a frame for at most this many transmissions (either way) before it is
/// lost: 6-bit sequence numbers cannot tell a frame from one 64 numbers later, and no radio
/// or cable keeps a frame that long.
const MAX_AGE: u64 = 32;

/// Longest varint length prefix the stream reads.
const MAX_PREFIX: usize = 4;

struct Wire {
    frame: Vec<u8>,
    /// Transmissions (either way) before this one.
    stamp: u64,
}

struct End {
    arq: Arq,
    /// Messages this end queued (accepted by `send`).
    sent: Vec<Vec<u8>>,
    /// Messages of the peer this end delivered.
    got: usize,
    /// Frames on their way to the other end.
    outbox: VecDeque<Wire>,
    /// The stream failed (an error from `handle_frame` or `handle_timeout`).
    failed: bool,
}

impl End {
    fn new(config: ArqConfig) -> Self {
        Self {
            arq: Arq::new(config),
            sent: Vec::new(),
            got: 0,
            outbox: VecDeque::new(),
            failed: false,
        }
    }
}

struct Harness {
    config: ArqConfig,
    a: End,
    b: End,
    now: u64,
    /// Frames transmitted so far, both ways.
    transmissions: u64,
    /// A received something B did not send: exact delivery is no longer promised.
    hostile: bool,
    /// Frames B sent, for bit flips.
    b_history: Vec<Vec<u8>>,
    messages: u32,
}

fn message(counter: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (counter as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

/// Message lengths: mostly within a frame or a few, sometimes up to past `MAX_MESSAGE`.
fn message_len(arg: u8) -> usize {
    let arg = usize::from(arg);
    match arg >> 6 {
        0 | 1 => arg,
        2 => (arg & 63) * 40,
        _ => (arg & 63) * 1_100,
    }
}

impl Harness {
    fn end(&mut self, to_a: bool) -> (&mut End, &mut End) {
        if to_a {
            (&mut self.a, &mut self.b)
        } else {
            (&mut self.b, &mut self.a)
        }
    }

    fn send(&mut self, from_a: bool, arg: u8) {
        self.messages += 1;
        let m = message(self.messages, message_len(arg));
        let max = self.config.max_message;
        let (end, _) = self.end(from_a);
        if end.arq.backlog() > 200_000 {
            // A caller stops feeding a stream past a bound; so does this one.
            return;
        }
        match end.arq.send(&m) {
            Ok(()) => end.sent.push(m),
            Err(ArqError::MessageTooLong(len)) => assert!(len > max && len == m.len()),
            Err(other) => panic!("send refused with {other:?}"),
        }
    }

    /// Takes up to `count` frames from one end onto the bearer.
    fn transmit(&mut self, from_a: bool, count: usize) {
        let now = self.now;
        let max_frame = self.config.max_frame;
        for _ in 0..count {
            let stamp = self.transmissions;
            let (end, _) = self.end(from_a);
            let Some(frame) = end.arq.poll_transmit(now) else {
                break;
            };
            assert!(!end.failed, "a failed stream transmitted");
            assert!(
                (ARQ_HEADER_LEN..=max_frame).contains(&frame.len()),
                "a {}-byte frame (max {max_frame})",
                frame.len()
            );
            if !from_a {
                self.b_history.push(frame.clone());
            }
            self.transmissions += 1;
            let (end, _) = self.end(from_a);
            end.outbox.push_back(Wire { frame, stamp });
        }
    }

    /// Hands one frame to an end, then takes its messages.
    fn receive(&mut self, to_a: bool, frame: &[u8]) {
        let now = self.now;
        let (end, _) = self.end(to_a);
        if end.arq.handle_frame(now, frame).is_err() {
            end.failed = true;
        }
        self.take_messages(to_a);
    }

    fn take_messages(&mut self, to_a: bool) {
        let max = self.config.max_message;
        let exact = !self.hostile;
        let (end, peer) = self.end(to_a);
        while let Some(m) = end.arq.poll_message() {
            assert!(m.len() <= max, "a {}-byte message came out", m.len());
            if exact {
                assert_eq!(
                    peer.sent.get(end.got),
                    Some(&m),
                    "message {} is not the one sent",
                    end.got
                );
            }
            end.got += 1;
        }
    }

    /// Delivers, drops, repeats or reorders the frame at the head of one direction.
    fn deliver(&mut self, to_a: bool, how: u8) {
        let transmissions = self.transmissions;
        let (_, from) = self.end(to_a);
        if how & 3 == 3 && from.outbox.len() >= 2 {
            from.outbox.swap(0, 1);
        }
        let Some(wire) = from.outbox.pop_front() else {
            return;
        };
        if transmissions - wire.stamp > MAX_AGE {
            return;
        }
        match how & 3 {
            1 => {}
            2 => {
                self.receive(to_a, &wire.frame);
                let (_, from) = self.end(to_a);
                from.outbox.push_front(wire);
            }
            _ => self.receive(to_a, &wire.frame),
        }
    }

    fn handle_timeouts(&mut self) {
        let now = self.now;
        for end in [&mut self.a, &mut self.b] {
            if end.arq.handle_timeout(now).is_err() {
                end.failed = true;
            }
        }
        self.transmit(true, 64);
        self.transmit(false, 64);
        for end in [&self.a, &self.b] {
            if !end.failed {
                // A handled deadline is never due again at once: no busy loop for the caller.
                let next = end.arq.poll_timeout();
                assert!(
                    next.is_none_or(|t| t > now),
                    "deadline {next:?} due at {now}"
                );
            }
        }
    }

    fn check_bounds(&self) {
        for end in [&self.a, &self.b] {
            assert!(end.arq.held_out_of_order() < MAX_WINDOW);
            if !end.failed {
                assert!(
                    end.arq.partial_message_len() <= self.config.max_message + MAX_PREFIX,
                    "{} bytes of a partial message",
                    end.arq.partial_message_len()
                );
            }
        }
    }

    /// Runs one operation; false when the input ran out.
    fn step(&mut self, input: &mut &[u8]) -> bool {
        let [op, arg, rest @ ..] = *input else {
            return false;
        };
        let (op, arg) = (*op, *arg);
        *input = rest;
        match op % 12 {
            0 => self.send(true, arg),
            1 => self.send(false, arg),
            2 => self.transmit(true, usize::from(arg % 8) + 1),
            3 => self.transmit(false, usize::from(arg % 8) + 1),
            4 | 5 => self.deliver(false, arg),
            6 | 7 => self.deliver(true, arg),
            8 => {
                if arg == 0 {
                    let next = [self.a.arq.poll_timeout(), self.b.arq.poll_timeout()]
                        .into_iter()
                        .flatten()
                        .min();
                    self.now = next.unwrap_or(self.now).max(self.now + 1);
                } else {
                    self.now += u64::from(arg) * u64::from(arg) * 4;
                }
                self.handle_timeouts();
            }
            9 => {
                // Raw bytes to A, as if the hop session let them through.
                let n = usize::from(arg).min(input.len());
                let (frame, rest) = input.split_at(n);
                *input = rest;
                self.hostile = true;
                self.receive(true, frame);
            }
            10 => {
                // One of B's frames with a bit flipped.
                if !self.b_history.is_empty() {
                    let Some((&at, rest)) = input.split_first() else {
                        return false;
                    };
                    *input = rest;
                    let i = usize::from(arg) % self.b_history.len();
                    let mut frame = self.b_history[i].clone();
                    let j = usize::from(at) % frame.len();
                    frame[j] ^= 1 << (at >> 5);
                    self.hostile = true;
                    self.receive(true, &frame);
                }
            }
            _ => {
                // A forged acknowledgement, with a bitmap.
                let Some((&bitmap, rest)) = input.split_first() else {
                    return false;
                };
                *input = rest;
                self.hostile = true;
                self.receive(true, &[0, 0x80 | (arg & 0x3f), bitmap]);
            }
        }
        self.check_bounds();
        true
    }

    /// A lossless bearer until both ends are idle: everything queued must arrive.
    fn settle(&mut self) {
        while let Some(wire) = self.a.outbox.pop_front() {
            if self.transmissions - wire.stamp <= MAX_AGE {
                self.receive(false, &wire.frame);
            }
        }
        while let Some(wire) = self.b.outbox.pop_front() {
            if self.transmissions - wire.stamp <= MAX_AGE {
                self.receive(true, &wire.frame);
            }
        }
        for _ in 0..10_000 {
            if self.a.failed || self.b.failed {
                // Frames lost earlier used up their tries: the peer counts as gone.
                return;
            }
            let mut moved = false;
            for from_a in [true, false] {
                self.transmit(from_a, 64);
                let (_, from) = self.end(!from_a);
                let frames: Vec<Wire> = from.outbox.drain(..).collect();
                for wire in frames {
                    moved = true;
                    self.receive(!from_a, &wire.frame);
                }
            }
            if self.a.arq.is_idle() && self.b.arq.is_idle() {
                assert_eq!(self.b.got, self.a.sent.len(), "A's messages lost");
                assert_eq!(self.a.got, self.b.sent.len(), "B's messages lost");
                return;
            }
            if !moved {
                let next = [self.a.arq.poll_timeout(), self.b.arq.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("stalled: a stream is not idle, sends nothing and has no timer");
                self.now = self.now.max(next);
                self.handle_timeouts();
            }
        }
        panic!("the streams never went idle");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut input)) = data.split_first() else {
        return;
    };
    let mut config = if selector & 1 == 0 {
        ArqConfig::radio(176, 300)
    } else {
        ArqConfig::fast(1000)
    };
    if selector & 2 != 0 {
        config.max_message = 300;
    }
    let mut h = Harness {
        config,
        a: End::new(config),
        b: End::new(config),
        now: 0,
        transmissions: 0,
        hostile: false,
        b_history: Vec::new(),
        messages: 0,
    };
    while h.step(&mut input) {}
    if !h.hostile {
        h.settle();
    }
});
