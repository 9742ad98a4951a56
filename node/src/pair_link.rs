//! Carries an in-person pairing ([`crate::contact::Pairing`]) over frames: a serial cable, or
//! the radios two people have with them when there is no network.
//!
//! Pairing is two short messages each way, and a radio channel loses, repeats and shares
//! frames with everyone in range, so this is a minimal stop-and-wait: each message is resent
//! until the other side acknowledges it, each arrives once and in order, and frames of other
//! pairings (or anything else on the channel) are ignored. Nothing here is secret: the
//! pairing protocol itself resists eavesdroppers and relays, given the codes the two people
//! exchanged by looking at each other's screens.
//!
//! A frame is `"cp" ‖ session(8) ‖ seq(1) ‖ ack(1) ‖ message`, where `session` names this
//! pairing (derived from both codes' commitments, so only the two devices share it), `seq`
//! numbers our messages from 1 (0: an acknowledgement alone, with no message) and `ack` is
//! the last of theirs we received in order.
//!
//! Pure: frames and the time in, frames and deadlines out.

use std::collections::VecDeque;

const MAGIC: &[u8; 2] = b"cp";
/// Magic, session, seq, ack.
pub const FRAME_HEADER_LEN: usize = 2 + 8 + 1 + 1;
/// Pairing messages are 34 bytes; anything much longer is not one.
pub const MAX_MESSAGE_LEN: usize = 64;
/// Messages one side sends in a pairing (key and confirmation, with room to spare).
const MAX_MESSAGES: usize = 8;

/// Why a frame was not for us. None of these is an error of the pairing: a shared channel
/// carries frames of all kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    NotPairing,
    OtherSession,
    TooLong,
    /// A message out of order (one before it was lost): it is resent.
    OutOfOrder,
}

/// One side of a pairing's frame link. See the module docs.
#[derive(Debug)]
pub struct PairLink {
    session: [u8; 8],
    /// Ours not yet acknowledged, oldest first, with their sequence numbers.
    unacked: VecDeque<(u8, Vec<u8>)>,
    next_seq: u8,
    /// Theirs received in order so far.
    received: u8,
    retry_ms: u64,
    /// When the oldest unacknowledged message may go out (again).
    resend_at: u64,
    ack_due: bool,
    /// xorshift state: spreads resends so two radios in step do not collide forever.
    jitter: u64,
}

impl PairLink {
    /// A link for the pairing named `session` that resends every `retry_ms` (plus up to
    /// half again, at random from `seed`).
    pub fn new(session: [u8; 8], retry_ms: u64, seed: u64) -> Self {
        PairLink {
            session,
            unacked: VecDeque::new(),
            next_seq: 1,
            received: 0,
            retry_ms: retry_ms.max(1),
            resend_at: 0,
            ack_due: false,
            jitter: seed | 1,
        }
    }

    /// The session both sides of a pairing derive from the two codes' commitments.
    pub fn session_of(ours: &[u8], theirs: &[u8]) -> [u8; 8] {
        let (first, second) = if ours <= theirs {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
        let mut hasher = blake3::Hasher::new_derive_key("cairn 2026 pairing link session");
        hasher.update(first);
        hasher.update(second);
        let mut session = [0u8; 8];
        session.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        session
    }

    /// Queues a pairing message; it goes out at the next [`PairLink::poll_frame`].
    ///
    /// # Panics
    ///
    /// Never for a pairing: its messages are short and few. A message over
    /// [`MAX_MESSAGE_LEN`], or more than a pairing sends, is a caller's bug.
    pub fn send(&mut self, message: Vec<u8>) {
        assert!(message.len() <= MAX_MESSAGE_LEN, "not a pairing message");
        assert!(
            usize::from(self.next_seq) <= MAX_MESSAGES,
            "too many messages"
        );
        self.unacked.push_back((self.next_seq, message));
        self.next_seq += 1;
    }

    /// A frame from the channel; returns their next message, if this frame brought it.
    ///
    /// # Errors
    ///
    /// Why the frame was not taken (not ours, or out of order).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, Ignored> {
        if frame.len() < FRAME_HEADER_LEN || &frame[..2] != MAGIC {
            return Err(Ignored::NotPairing);
        }
        if frame[2..10] != self.session {
            return Err(Ignored::OtherSession);
        }
        let (seq, ack, message) = (frame[10], frame[11], &frame[FRAME_HEADER_LEN..]);
        if message.len() > MAX_MESSAGE_LEN {
            return Err(Ignored::TooLong);
        }
        while self.unacked.front().is_some_and(|(s, _)| *s <= ack) {
            self.unacked.pop_front();
            // The next one may go at once.
            self.resend_at = 0;
        }
        if seq == 0 {
            return Ok(None);
        }
        if seq <= self.received {
            // A resend of one we have: our acknowledgement was lost.
            self.ack_due = true;
            return Ok(None);
        }
        if seq != self.received + 1 || message.is_empty() {
            return Err(Ignored::OutOfOrder);
        }
        self.received = seq;
        self.ack_due = true;
        Ok(Some(message.to_vec()))
    }

    /// The next frame to put on the channel at `now_ms`, if any.
    pub fn poll_frame(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        if let Some((seq, message)) = self.unacked.front() {
            if now_ms >= self.resend_at {
                let frame = self.frame(*seq, message);
                let spread = self.next_jitter() % (self.retry_ms / 2 + 1);
                self.resend_at = now_ms + self.retry_ms + spread;
                self.ack_due = false;
                return Some(frame);
            }
        }
        if self.ack_due {
            self.ack_due = false;
            return Some(self.frame(0, &[]));
        }
        None
    }

    /// When [`PairLink::poll_frame`] has something to resend.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.unacked.front().map(|_| self.resend_at)
    }

    /// Whether the other side has every message we sent.
    pub fn all_acknowledged(&self) -> bool {
        self.unacked.is_empty()
    }

    fn frame(&self, seq: u8, message: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + message.len());
        frame.extend_from_slice(MAGIC);
        frame.extend_from_slice(&self.session);
        frame.push(seq);
        frame.push(self.received);
        frame.extend_from_slice(message);
        frame
    }

    fn next_jitter(&mut self) -> u64 {
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        x
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SESSION: [u8; 8] = [9; 8];

    /// Two links over a channel that drops frames where `lost(n)` says (n counts every frame
    /// put on it) and delivers the rest; returns what each side received and the frames sent.
    fn run(lost: impl Fn(usize) -> bool, duplicate: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
        let mut a = PairLink::new(SESSION, 100, 1);
        let mut b = PairLink::new(SESSION, 100, 2);
        a.send(b"key from a".to_vec());
        b.send(b"key from b".to_vec());
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let mut sent = 0;
        let mut carry = |from: &mut PairLink, to: &mut PairLink, got: &mut Vec<Vec<u8>>, now| {
            while let Some(frame) = from.poll_frame(now) {
                sent += 1;
                if lost(sent) {
                    continue;
                }
                let copies = if duplicate { 2 } else { 1 };
                for _ in 0..copies {
                    if let Ok(Some(message)) = to.handle_frame(&frame) {
                        got.push(message);
                    }
                }
            }
        };
        for now in (0..20_000).step_by(10) {
            carry(&mut a, &mut b, &mut got_b, now);
            carry(&mut b, &mut a, &mut got_a, now);
            // The confirmation follows the peer's key, as in the pairing.
            if got_a.len() == 1 && a.next_seq == 2 {
                a.send(b"confirm from a".to_vec());
            }
            if got_b.len() == 1 && b.next_seq == 2 {
                b.send(b"confirm from b".to_vec());
            }
            if a.all_acknowledged() && b.all_acknowledged() && got_a.len() == 2 && got_b.len() == 2
            {
                break;
            }
        }
        (got_a, got_b, sent)
    }

    #[test]
    fn every_message_arrives_once_and_in_order_whatever_is_lost() {
        let expect_a = vec![b"key from b".to_vec(), b"confirm from b".to_vec()];
        let expect_b = vec![b"key from a".to_vec(), b"confirm from a".to_vec()];
        let (a, b, sent) = run(|_| false, false);
        assert_eq!((a, b), (expect_a.clone(), expect_b.clone()));
        assert!(sent <= 6, "{sent} frames on a clean channel");
        for pattern in 0..64u32 {
            // Lose any combination of the first six frames, and every third after that.
            let lost = |n: usize| {
                if n <= 6 {
                    pattern >> (n - 1) & 1 == 1
                } else {
                    n % 3 == 0
                }
            };
            let (a, b, _) = run(lost, false);
            assert_eq!(
                (a, b),
                (expect_a.clone(), expect_b.clone()),
                "pattern {pattern:06b}"
            );
        }
        let (a, b, _) = run(|n| n % 2 == 0, true);
        assert_eq!((a, b), (expect_a, expect_b), "half lost, the rest twice");
    }

    #[test]
    fn frames_of_others_are_ignored() {
        let mut a = PairLink::new(SESSION, 100, 1);
        let mut other = PairLink::new([1; 8], 100, 3);
        other.send(b"someone else's key".to_vec());
        let theirs = other.poll_frame(0).unwrap();
        assert_eq!(a.handle_frame(&theirs), Err(Ignored::OtherSession));
        assert_eq!(a.handle_frame(b"cp"), Err(Ignored::NotPairing));
        assert_eq!(a.handle_frame(b"hello radio"), Err(Ignored::NotPairing));
        let mut long = b"cp".to_vec();
        long.extend_from_slice(&SESSION);
        long.extend_from_slice(&[1, 0]);
        long.extend_from_slice(&[7; MAX_MESSAGE_LEN + 1]);
        assert_eq!(a.handle_frame(&long), Err(Ignored::TooLong));
        // A message whose predecessor was lost waits for it.
        let mut second = b"cp".to_vec();
        second.extend_from_slice(&SESSION);
        second.extend_from_slice(&[2, 0, 5]);
        assert_eq!(a.handle_frame(&second), Err(Ignored::OutOfOrder));
        assert_eq!(
            a.poll_frame(0),
            None,
            "nothing to say about frames not taken"
        );
    }

    #[test]
    fn both_sides_derive_the_same_session_and_no_one_else_does() {
        let (x, y, z) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        assert_eq!(PairLink::session_of(&x, &y), PairLink::session_of(&y, &x));
        assert_ne!(PairLink::session_of(&x, &y), PairLink::session_of(&x, &z));
    }

    #[test]
    fn resends_wait_for_the_retry_interval() {
        let mut a = PairLink::new(SESSION, 1000, 5);
        a.send(b"key".to_vec());
        assert!(a.poll_frame(0).is_some());
        assert_eq!(a.poll_frame(999), None);
        let due = a.poll_timeout().unwrap();
        assert!((1000..=1500).contains(&due), "{due}");
        assert!(a.poll_frame(due).is_some());
    }
}
