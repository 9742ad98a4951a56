//! A reliable, ordered message stream over lossy datagrams: selective-repeat ARQ sized for a
//! half-duplex radio.
//!
//! The sync session needs an ordered channel; a LoRa channel loses, and a hop session on
//! datagrams delivers at most once in any order. This layer sits between them, inside the
//! hop session's plaintext (so its headers are encrypted and authenticated):
//!
//! ```text
//! byte 0: DATA(1) | MORE(1) | seq (6)     seq of this frame's payload, when DATA is set
//! byte 1: SACK(1) | 0       | ack (6)     next seq expected from the peer (cumulative)
//! [byte 2: bitmap of seqs ack+1 ..= ack+8 already held, when SACK is set]
//! payload: a piece of the message stream, when DATA is set
//! ```
//!
//! Two bytes per frame. The message stream is the sync session's messages, each behind a
//! varint length, packed back to back: a short message shares a frame with the next one
//! instead of paying a frame's header and airtime alone, and a long one is split only where
//! the frame ends, so fragmentation happens only where a message does not fit.
//!
//! **Turn-taking.** A sender sends up to [`ArqConfig::window`] frames as one burst, setting
//! MORE on all but the last. A receiver acknowledges once the burst ends (a frame without
//! MORE), or [`ArqConfig::ack_delay_ms`] after the last frame if the burst's end was lost,
//! and piggybacks the acknowledgement on its own data when it has some. On a half-duplex
//! radio this keeps the two ends from talking over each other and costs one short frame per
//! burst. A frame the peer's bitmap shows missing below one it holds is sent again at once;
//! others not acknowledged within the retransmission timeout are sent again (only those the
//! peer's bitmap does not hold), with the timeout doubling; after
//! [`ArqConfig::max_retries`] tries of one frame the peer is gone ([`ArqError::PeerGone`]).
//!
//! The timeout follows RFC 6298: a smoothed round trip plus four times its variation,
//! measured on frames acknowledged at their first try (Karn), never below
//! [`ArqConfig::rto_ms`]. A link whose real pace is unknown (a pty, a USB adapter that
//! buffers, a radio whose firmware queues) thus learns it instead of flooding itself with
//! early repeats.
//!
//! **Idle means silent.** Nothing is sent while nothing is queued or owed: no keepalives.
//!
//! Pure: `now` in milliseconds comes in as an argument; nothing here reads a clock.

use std::collections::{BTreeMap, VecDeque};

/// Sequence numbers are 6 bits.
const SEQ_MOD: u8 = 64;
const SEQ_MASK: u8 = SEQ_MOD - 1;
/// Byte 0: the frame carries data (otherwise it is an acknowledgement only).
pub(super) const DATA: u8 = 0x80;
const MORE: u8 = 0x40;
const SACK: u8 = 0x80;
/// The payload is exactly one whole message, without its length prefix.
const SOLO: u8 = 0x40;

/// Header bytes without a bitmap.
pub const ARQ_HEADER_LEN: usize = 2;
/// Largest window: half the sequence space less the bitmap's reach, so an old frame is never
/// mistaken for a new one.
pub const MAX_WINDOW: usize = 16;
/// Largest message the stream accepts (a sync frame is at most 64 KiB).
pub const MAX_MESSAGE: usize = 65_536;

/// Why the stream failed. Either way the hop session under it is over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArqError {
    /// A frame went unacknowledged through every retry.
    #[error("the peer stopped answering ({retries} tries of one frame went unacknowledged)")]
    PeerGone {
        /// Tries made.
        retries: u32,
    },
    /// The peer broke the framing (an authenticated peer, so this is a bug or an attack).
    #[error("malformed ARQ frame: {0}")]
    Malformed(&'static str),
    /// A message longer than [`ArqConfig::max_message`].
    #[error("a {0}-byte message is longer than the stream allows")]
    MessageTooLong(usize),
}

/// Stream settings, chosen by the link for its bearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArqConfig {
    /// Largest ARQ frame (header included): the hop session's plaintext per datagram.
    pub max_frame: usize,
    /// Frames in flight at once, 1..=[`MAX_WINDOW`].
    pub window: usize,
    /// How long a receiver waits for the rest of a burst before acknowledging what it has.
    pub ack_delay_ms: u64,
    /// Least retransmission timeout, and the one used before any round trip was measured;
    /// doubles on each retry of the same frame.
    pub rto_ms: u64,
    /// Longest retransmission timeout.
    pub max_rto_ms: u64,
    /// Tries of one frame before the peer counts as gone.
    pub max_retries: u32,
    /// Largest message accepted from the peer.
    pub max_message: usize,
    /// Seeds the random part of each retransmission timeout (up to half of it): two
    /// senders that lost frames to the same collision must not repeat in step and collide
    /// again. 0 turns it off.
    pub jitter_seed: u64,
}

impl ArqConfig {
    /// A cable or a fast link: a wide window and short timers.
    #[must_use]
    pub fn fast(max_frame: usize) -> Self {
        Self {
            max_frame,
            window: MAX_WINDOW,
            ack_delay_ms: 20,
            rto_ms: 500,
            max_rto_ms: 8_000,
            max_retries: 8,
            max_message: MAX_MESSAGE,
            jitter_seed: 0,
        }
    }

    /// A half-duplex radio where one largest frame takes `frame_airtime_ms` on air.
    #[must_use]
    pub fn radio(max_frame: usize, frame_airtime_ms: u64) -> Self {
        let window = 4;
        Self {
            max_frame,
            window,
            // The next frame of a burst follows within one airtime plus the radio's turnaround.
            ack_delay_ms: frame_airtime_ms * 2 + 200,
            // A whole burst, the ack delay, the ack itself, and channel-access jitter.
            rto_ms: frame_airtime_ms * (window as u64 + 4) + 2_000,
            max_rto_ms: 10 * 60_000,
            // The peer may be waiting for its duty cycle; eight tries with doubling take
            // well over an hour at SF12 before it counts as gone.
            max_retries: 8,
            max_message: MAX_MESSAGE,
            jitter_seed: 0,
        }
    }
}

#[derive(Debug)]
pub(super) struct InFlight {
    seq: u8,
    payload: Vec<u8>,
    sent_at: Option<u64>,
    tries: u32,
    held_by_peer: bool,
    /// The payload is one whole message without its length prefix.
    solo: bool,
}

/// Counters for diagnostics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArqStats {
    /// Data frames sent, first tries.
    pub data_frames: u64,
    /// Data frames sent again.
    pub retransmissions: u64,
    /// Frames that carried only an acknowledgement.
    pub ack_frames: u64,
    /// Duplicate data frames received (their acknowledgement was lost).
    pub duplicates: u64,
}

impl ArqStats {
    /// Adds another stream's counters (a link sums its sessions').
    pub fn add(&mut self, other: &ArqStats) {
        self.data_frames += other.data_frames;
        self.retransmissions += other.retransmissions;
        self.ack_frames += other.ack_frames;
        self.duplicates += other.duplicates;
    }
}

/// One direction pair of the stream with one peer.
#[derive(Debug)]
pub struct Arq {
    config: ArqConfig,
    // Sending.
    /// Message bytes not yet in a frame (length prefixes included).
    pub(super) unsent: VecDeque<u8>,
    /// Encoded lengths (prefix included) of the messages in `unsent`, oldest first; the
    /// first may be partly framed already (`front_taken` bytes of it).
    unsent_lengths: VecDeque<usize>,
    front_taken: usize,
    pub(super) in_flight: VecDeque<InFlight>,
    pub(super) next_seq: u8,
    rto_ms: u64,
    /// State of the retransmission jitter (0: none).
    jitter_state: u64,
    /// Smoothed round trip and its variation (RFC 6298), once measured.
    srtt_ms: Option<u64>,
    rttvar_ms: u64,
    pub(super) retransmit_at: Option<u64>,
    // Receiving.
    pub(super) expected: u8,
    out_of_order: BTreeMap<u8, (bool, Vec<u8>)>,
    ack_owed: bool,
    ack_at: Option<u64>,
    stream: Vec<u8>,
    messages: VecDeque<Vec<u8>>,
    failed: Option<ArqError>,
    stats: ArqStats,
}

impl Arq {
    /// A fresh stream; both ends start at sequence 0 when their hop session is established.
    ///
    /// # Panics
    ///
    /// If the configuration cannot carry a byte per frame or the window is out of range:
    /// a programming error in the link, not something input can cause.
    #[must_use]
    pub fn new(config: ArqConfig) -> Self {
        assert!(config.max_frame > ARQ_HEADER_LEN + 1, "ARQ frame too small");
        assert!((1..=MAX_WINDOW).contains(&config.window), "bad ARQ window");
        Self {
            jitter_state: config.jitter_seed,
            rto_ms: config.rto_ms,
            srtt_ms: None,
            rttvar_ms: 0,
            config,
            unsent: VecDeque::new(),
            unsent_lengths: VecDeque::new(),
            front_taken: 0,
            in_flight: VecDeque::new(),
            next_seq: 0,
            retransmit_at: None,
            expected: 0,
            out_of_order: BTreeMap::new(),
            ack_owed: false,
            ack_at: None,
            stream: Vec::new(),
            messages: VecDeque::new(),
            failed: None,
            stats: ArqStats::default(),
        }
    }

    /// Queues one message for the peer.
    ///
    /// # Errors
    ///
    /// A message longer than the peer accepts ([`ArqConfig::max_message`]; both ends use the
    /// same setting).
    pub fn send(&mut self, message: &[u8]) -> Result<(), ArqError> {
        if message.len() > self.config.max_message {
            return Err(ArqError::MessageTooLong(message.len()));
        }
        let before = self.unsent.len();
        let mut len = message.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                self.unsent.push_back(byte);
                break;
            }
            self.unsent.push_back(byte | 0x80);
        }
        self.unsent.extend(message);
        self.unsent_lengths.push_back(self.unsent.len() - before);
        Ok(())
    }

    /// Bytes queued that no frame carries yet: the caller stops feeding messages past a bound.
    #[must_use]
    pub fn backlog(&self) -> usize {
        self.unsent.len()
    }

    /// Frames from the peer held ahead of a gap. Fewer than [`MAX_WINDOW`] whatever the
    /// peer sends (the fuzz target checks this).
    #[must_use]
    pub fn held_out_of_order(&self) -> usize {
        self.out_of_order.len()
    }

    /// Bytes from the peer that are not a whole message yet: at most
    /// [`ArqConfig::max_message`] plus its length prefix, whatever the peer sends.
    #[must_use]
    pub fn partial_message_len(&self) -> usize {
        self.stream.len()
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &ArqConfig {
        &self.config
    }

    /// Whether everything sent was acknowledged and nothing waits.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.unsent.is_empty() && self.in_flight.is_empty() && !self.ack_owed
    }

    /// The next message from the peer, in order.
    pub fn poll_message(&mut self) -> Option<Vec<u8>> {
        self.messages.pop_front()
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> ArqStats {
        self.stats
    }

    /// The failure that ended the stream, if any.
    #[must_use]
    pub fn failure(&self) -> Option<&ArqError> {
        self.failed.as_ref()
    }

    /// One ARQ frame from the peer (already authenticated by the hop session).
    ///
    /// # Errors
    ///
    /// Malformed framing or an oversized message; the stream is failed afterwards.
    pub fn handle_frame(&mut self, now: u64, frame: &[u8]) -> Result<(), ArqError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.handle_frame_inner(now, frame);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn handle_frame_inner(&mut self, now: u64, frame: &[u8]) -> Result<(), ArqError> {
        let &[b0, b1, ref rest @ ..] = frame else {
            return Err(ArqError::Malformed("frame shorter than the ARQ header"));
        };
        let (bitmap, payload) = if b1 & SACK != 0 {
            let (&bitmap, payload) = rest
                .split_first()
                .ok_or(ArqError::Malformed("SACK flag without a bitmap"))?;
            (bitmap, payload)
        } else {
            (0, rest)
        };
        let solo = b1 & SOLO != 0;
        self.handle_ack(now, b1 & SEQ_MASK, bitmap);
        if b0 & DATA == 0 {
            if b0 != 0 || !payload.is_empty() || solo {
                return Err(ArqError::Malformed(
                    "acknowledgement with data bits or payload",
                ));
            }
            return Ok(());
        }
        if payload.is_empty() {
            return Err(ArqError::Malformed("data frame without payload"));
        }
        let seq = b0 & SEQ_MASK;
        let more = b0 & MORE != 0;
        let ahead = seq.wrapping_sub(self.expected) & SEQ_MASK;
        if ahead as usize >= MAX_WINDOW {
            // Behind us: a repeat whose acknowledgement was lost. Say again what we hold.
            self.stats.duplicates += 1;
            self.owe_ack(now, false);
            return Ok(());
        }
        if ahead == 0 {
            self.accept(payload, solo)?;
            self.expected = (self.expected + 1) & SEQ_MASK;
            while let Some((solo, next)) = self.out_of_order.remove(&self.expected) {
                self.accept(&next, solo)?;
                self.expected = (self.expected + 1) & SEQ_MASK;
            }
        } else if self
            .out_of_order
            .insert(seq, (solo, payload.to_vec()))
            .is_some()
        {
            self.stats.duplicates += 1;
        }
        self.owe_ack(now, more);
        Ok(())
    }

    fn owe_ack(&mut self, now: u64, more_coming: bool) {
        self.ack_owed = true;
        let at = if more_coming {
            now + self.config.ack_delay_ms
        } else {
            now
        };
        // A later frame with MORE pushes the deadline; the end of a burst pulls it in.
        self.ack_at = Some(at);
    }

    fn accept(&mut self, payload: &[u8], solo: bool) -> Result<(), ArqError> {
        if solo {
            if !self.stream.is_empty() {
                return Err(ArqError::Malformed("a whole message inside a partial one"));
            }
            if payload.len() > self.config.max_message {
                return Err(ArqError::MessageTooLong(payload.len()));
            }
            self.messages.push_back(payload.to_vec());
            return Ok(());
        }
        self.stream.extend_from_slice(payload);
        loop {
            let mut len = 0usize;
            let mut shift = 0;
            let mut header = 0;
            let mut complete = false;
            for &byte in &self.stream {
                header += 1;
                len |= usize::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    complete = true;
                    break;
                }
                shift += 7;
                if shift > 21 {
                    return Err(ArqError::Malformed("message length varint too long"));
                }
            }
            if !complete {
                return Ok(());
            }
            if len > self.config.max_message {
                return Err(ArqError::MessageTooLong(len));
            }
            if self.stream.len() < header + len {
                return Ok(());
            }
            let message = self.stream[header..header + len].to_vec();
            self.stream.drain(..header + len);
            self.messages.push_back(message);
        }
    }

    fn handle_ack(&mut self, now: u64, ack: u8, bitmap: u8) {
        // Everything before `ack` is held by the peer.
        let mut progressed = false;
        let mut sample = None;
        while let Some(front) = self.in_flight.front() {
            let behind = ack.wrapping_sub(front.seq) & SEQ_MASK;
            if behind == 0 || behind as usize > MAX_WINDOW {
                break;
            }
            if let (1, Some(sent)) = (front.tries, front.sent_at) {
                sample = Some(now.saturating_sub(sent));
            }
            self.in_flight.pop_front();
            progressed = true;
        }
        if let Some(rtt) = sample {
            self.measured(rtt);
        }
        for frame in &mut self.in_flight {
            let offset = frame.seq.wrapping_sub(ack) & SEQ_MASK;
            if (1..=8).contains(&offset) && bitmap & (1 << (offset - 1)) != 0 {
                frame.held_by_peer = true;
            }
        }
        if progressed {
            self.rto_ms = self.base_rto();
        }
        // A frame the peer lacks while it holds a later one was lost: send it again now
        // rather than at the timeout. (A lost tail shows no such hole and waits for it.)
        let mut held_later = false;
        for frame in self.in_flight.iter_mut().rev() {
            if frame.held_by_peer {
                held_later = true;
            } else if held_later && frame.sent_at.is_some() {
                frame.sent_at = None;
            }
        }
        if self.in_flight.is_empty() {
            self.retransmit_at = None;
        }
    }

    /// RFC 6298 §2: fold a round-trip sample into the estimate.
    fn measured(&mut self, rtt: u64) {
        match self.srtt_ms {
            None => {
                self.srtt_ms = Some(rtt);
                self.rttvar_ms = rtt / 2;
            }
            Some(srtt) => {
                self.rttvar_ms = (3 * self.rttvar_ms + srtt.abs_diff(rtt)) / 4;
                self.srtt_ms = Some((7 * srtt + rtt) / 8);
            }
        }
    }

    /// The timeout before any backoff.
    fn base_rto(&self) -> u64 {
        let measured = self
            .srtt_ms
            .map_or(0, |srtt| srtt + 4 * self.rttvar_ms.max(1));
        measured.max(self.config.rto_ms).min(self.config.max_rto_ms)
    }

    /// The smoothed round trip, once measured.
    #[must_use]
    pub fn srtt_ms(&self) -> Option<u64> {
        self.srtt_ms
    }

    /// When [`Arq::handle_timeout`] wants to be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match (self.ack_at, self.retransmit_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Retransmission timers.
    ///
    /// # Errors
    ///
    /// [`ArqError::PeerGone`] once a frame used up its tries.
    pub fn handle_timeout(&mut self, now: u64) -> Result<(), ArqError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.retransmit_at.is_some_and(|at| now >= at) {
            self.retransmit_at = None;
            let mut worst = 0;
            for frame in &mut self.in_flight {
                if !frame.held_by_peer && frame.sent_at.is_some() {
                    frame.sent_at = None;
                    worst = worst.max(frame.tries);
                }
            }
            if worst >= self.config.max_retries {
                let error = ArqError::PeerGone { retries: worst };
                self.failed = Some(error.clone());
                return Err(error);
            }
            self.rto_ms = (self.rto_ms * 2).min(self.config.max_rto_ms);
        }
        Ok(())
    }

    /// Length of the data frame [`Arq::poll_transmit`] would send next (a repeat, or new
    /// data), if any: what a link checks against its duty cycle before taking it.
    #[must_use]
    pub fn next_data_len(&self) -> Option<usize> {
        if self.failed.is_some() {
            return None;
        }
        let header = ARQ_HEADER_LEN + usize::from(self.sack_len());
        if let Some(frame) = self
            .in_flight
            .iter()
            .find(|f| f.sent_at.is_none() && !f.held_by_peer)
        {
            return Some((header + frame.payload.len()).min(self.config.max_frame));
        }
        (!self.unsent.is_empty() && self.in_flight.len() < self.config.window)
            .then(|| (header + self.unsent.len()).min(self.config.max_frame))
    }

    /// The next frame to send, if one is ready at `now`.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Vec<u8>> {
        if self.failed.is_some() {
            return None;
        }
        // Retransmissions first, then new data, then a bare acknowledgement.
        let resend = self
            .in_flight
            .iter()
            .position(|f| f.sent_at.is_none() && !f.held_by_peer);
        let index = match resend {
            Some(i) => Some(i),
            None if !self.unsent.is_empty() && self.in_flight.len() < self.config.window => {
                let room = self.config.max_frame - ARQ_HEADER_LEN - usize::from(self.sack_len());
                let (payload, solo) = self.take_unsent(room);
                self.in_flight.push_back(InFlight {
                    seq: self.next_seq,
                    payload,
                    sent_at: None,
                    tries: 0,
                    held_by_peer: false,
                    solo,
                });
                self.next_seq = (self.next_seq + 1) & SEQ_MASK;
                Some(self.in_flight.len() - 1)
            }
            None => None,
        };
        let Some(index) = index else {
            return self.poll_ack(now);
        };
        // MORE: another frame of ours follows right away.
        let more_after = self
            .in_flight
            .iter()
            .skip(index + 1)
            .any(|f| f.sent_at.is_none() && !f.held_by_peer)
            || (!self.unsent.is_empty() && self.in_flight.len() < self.config.window);
        let frame_seq = self.in_flight[index].seq;
        let mut b0 = DATA | frame_seq;
        if more_after {
            b0 |= MORE;
        }
        let mut frame = self.header(b0, self.in_flight[index].payload.len());
        if self.in_flight[index].solo {
            frame[1] |= SOLO;
        }
        let entry = &mut self.in_flight[index];
        frame.extend_from_slice(&entry.payload);
        if entry.tries == 0 {
            self.stats.data_frames += 1;
        } else {
            self.stats.retransmissions += 1;
        }
        entry.tries += 1;
        entry.sent_at = Some(now);
        self.ack_sent();
        if !more_after {
            self.retransmit_at = Some(now + self.rto_ms + self.jitter(self.rto_ms / 2));
        }
        Some(frame)
    }

    /// Up to `room` bytes of the queued stream for the next frame. A frame that would carry
    /// exactly one whole message, and nothing else, drops the message's length prefix and
    /// says so (SOLO): the common LoRa case of one short message per frame saves a byte or
    /// two.
    fn take_unsent(&mut self, room: usize) -> (Vec<u8>, bool) {
        if self.front_taken == 0 && self.unsent_lengths.len() == 1 {
            let prefix = self
                .unsent
                .iter()
                .position(|b| b & 0x80 == 0)
                .map_or(0, |i| i + 1);
            let body = self.unsent.len() - prefix;
            if body <= room && body > 0 {
                self.unsent.drain(..prefix);
                self.unsent_lengths.clear();
                return (self.unsent.drain(..).collect(), true);
            }
        }
        let take = room.min(self.unsent.len());
        let payload: Vec<u8> = self.unsent.drain(..take).collect();
        let mut left = take;
        while let Some(&len) = self.unsent_lengths.front() {
            let rest = len - self.front_taken;
            if left >= rest {
                left -= rest;
                self.unsent_lengths.pop_front();
                self.front_taken = 0;
            } else {
                self.front_taken += left;
                break;
            }
        }
        (payload, false)
    }

    /// An acknowledgement alone, if one is due: what a link sends when it may not send data
    /// (its duty cycle is spent on data) but must still let the peer know what arrived.
    pub fn poll_ack(&mut self, now: u64) -> Option<Vec<u8>> {
        if self.failed.is_none() && self.ack_owed && self.ack_at.is_some_and(|at| now >= at) {
            self.stats.ack_frames += 1;
            let frame = self.header(0, 0);
            self.ack_sent();
            return Some(frame);
        }
        None
    }

    /// A random wait in `0..=max` ms from the configured seed (xorshift64*), or 0.
    fn jitter(&mut self, max: u64) -> u64 {
        if self.jitter_state == 0 {
            return 0;
        }
        let mut x = self.jitter_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter_state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (max + 1)
    }

    fn ack_sent(&mut self) {
        self.ack_owed = false;
        self.ack_at = None;
    }

    fn sack_len(&self) -> u8 {
        u8::from(!self.out_of_order.is_empty())
    }

    /// The header for a frame carrying `payload_len` bytes. The SACK bitmap goes only where it
    /// fits: a frame cut to size when no bitmap was owed may be repeated once one is, and must
    /// still fit `max_frame` (the hop session refuses anything larger).
    fn header(&self, b0: u8, payload_len: usize) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.config.max_frame);
        frame.push(b0);
        let sack_fits = ARQ_HEADER_LEN + 1 + payload_len <= self.config.max_frame;
        if self.out_of_order.is_empty() || !sack_fits {
            frame.push(self.expected);
        } else {
            frame.push(SACK | self.expected);
            let mut bitmap = 0u8;
            for offset in 1..=8u8 {
                if self
                    .out_of_order
                    .contains_key(&((self.expected + offset) & SEQ_MASK))
                {
                    bitmap |= 1 << (offset - 1);
                }
            }
            frame.push(bitmap);
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(config: ArqConfig) -> (Arq, Arq) {
        (Arq::new(config), Arq::new(config))
    }

    /// Messages received by each end.
    type Received = (Vec<Vec<u8>>, Vec<Vec<u8>>);

    /// Runs both ends over a channel that drops the frames `drop` picks (by global frame
    /// number), until both are idle. Returns the messages each received.
    fn run(
        a: &mut Arq,
        b: &mut Arq,
        mut drop: impl FnMut(u64) -> bool,
    ) -> Result<Received, ArqError> {
        let mut now = 0;
        let mut n = 0;
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(frame) = a.poll_transmit(now) {
                n += 1;
                moved = true;
                if !drop(n) {
                    b.handle_frame(now, &frame)?;
                }
            }
            while let Some(frame) = b.poll_transmit(now) {
                n += 1;
                moved = true;
                if !drop(n) {
                    a.handle_frame(now, &frame)?;
                }
            }
            got_a.extend(std::iter::from_fn(|| a.poll_message()));
            got_b.extend(std::iter::from_fn(|| b.poll_message()));
            if a.is_idle() && b.is_idle() {
                return Ok((got_a, got_b));
            }
            if !moved {
                let next = [a.poll_timeout(), b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("a stream that is not idle has a timer");
                now = now.max(next);
                a.handle_timeout(now)?;
                b.handle_timeout(now)?;
            }
        }
        panic!("streams never went idle");
    }

    fn messages(count: usize, seed: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| vec![(i + seed) as u8; (i * 37 + seed) % 700 + 1])
            .collect()
    }

    #[test]
    fn messages_arrive_in_order_both_ways_without_loss() {
        let (mut a, mut b) = pair(ArqConfig::radio(176, 300));
        let to_b = messages(40, 1);
        let to_a = messages(25, 7);
        for m in &to_b {
            a.send(m).unwrap();
        }
        for m in &to_a {
            b.send(m).unwrap();
        }
        let (got_a, got_b) = run(&mut a, &mut b, |_| false).unwrap();
        assert_eq!(got_b, to_b);
        assert_eq!(got_a, to_a);
        assert_eq!(a.stats().retransmissions, 0);
    }

    #[test]
    fn a_message_alone_in_its_frame_costs_two_bytes_of_header_and_no_length() {
        let (mut a, mut b) = pair(ArqConfig::radio(176, 300));
        a.send(&[7u8; 120]).unwrap();
        let frame = a.poll_transmit(0).unwrap();
        assert_eq!(frame.len(), ARQ_HEADER_LEN + 120);
        b.handle_frame(0, &frame).unwrap();
        assert_eq!(b.poll_message(), Some(vec![7u8; 120]));
        // Two messages share a frame, each behind its length.
        a.send(&[1u8; 10]).unwrap();
        a.send(&[2u8; 10]).unwrap();
        let frame = a.poll_transmit(0).unwrap();
        assert_eq!(frame.len(), ARQ_HEADER_LEN + 22);
        b.handle_frame(0, &frame).unwrap();
        assert_eq!(b.poll_message(), Some(vec![1u8; 10]));
        assert_eq!(b.poll_message(), Some(vec![2u8; 10]));
        // A whole message flagged inside a partial one is refused.
        let mut c = Arq::new(ArqConfig::radio(176, 300));
        c.handle_frame(0, &[DATA | MORE, 0, 5, 1, 2]).unwrap();
        assert!(c.handle_frame(0, &[DATA | 1, SOLO, 9]).is_err());
    }

    #[test]
    fn short_messages_share_a_frame() {
        let (mut a, mut b) = pair(ArqConfig::radio(176, 300));
        for i in 0..10u8 {
            a.send(&[i; 10]).unwrap();
        }
        let (_, got_b) = run(&mut a, &mut b, |_| false).unwrap();
        assert_eq!(got_b.len(), 10);
        // 10 messages of 11 bytes each fit one 176-byte frame.
        assert_eq!(a.stats().data_frames, 1);
        assert_eq!(b.stats().ack_frames, 1);
    }

    #[test]
    fn every_pattern_of_single_losses_is_repaired() {
        for lost in 1..40 {
            let (mut a, mut b) = pair(ArqConfig::radio(64, 100));
            let sent = messages(12, lost as usize);
            for m in &sent {
                a.send(m).unwrap();
            }
            let (_, got_b) = run(&mut a, &mut b, |n| n == lost).unwrap();
            assert_eq!(got_b, sent, "frame {lost} lost");
        }
    }

    #[test]
    fn heavy_random_loss_still_delivers_everything_in_order() {
        let mut state = 12345u64;
        let (mut a, mut b) = pair(ArqConfig {
            max_retries: 40,
            ..ArqConfig::radio(100, 100)
        });
        let to_b = messages(60, 3);
        let to_a = messages(30, 9);
        for m in &to_b {
            a.send(m).unwrap();
        }
        for m in &to_a {
            b.send(m).unwrap();
        }
        let (got_a, got_b) = run(&mut a, &mut b, |_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) % 10 < 3
        })
        .unwrap();
        assert_eq!(got_b, to_b);
        assert_eq!(got_a, to_a);
        assert!(a.stats().retransmissions > 0);
    }

    #[test]
    fn a_peer_that_never_answers_is_declared_gone() {
        let (mut a, mut b) = pair(ArqConfig::radio(100, 100));
        a.send(b"hello").unwrap();
        let error = run(&mut a, &mut b, |_| true).unwrap_err();
        assert!(matches!(error, ArqError::PeerGone { .. }));
    }

    #[test]
    fn idle_streams_send_nothing() {
        let (mut a, _) = pair(ArqConfig::radio(100, 100));
        assert_eq!(a.poll_transmit(0), None);
        assert_eq!(a.poll_timeout(), None);
        assert!(a.is_idle());
    }

    #[test]
    fn a_retransmission_with_a_sack_still_fits_the_frame() {
        // Both ends send full frames; B's first frame is lost, so A holds B's later frames out
        // of order and owes a SACK bitmap on everything it sends, including repeats of frames
        // that were cut to size when no bitmap was owed.
        let config = ArqConfig::radio(64, 100);
        let (mut a, mut b) = pair(config);
        a.send(&[1; 300]).unwrap();
        b.send(&[2; 300]).unwrap();
        let from_a: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit(0)).collect();
        let from_b: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_transmit(0)).collect();
        assert_eq!(from_a.len(), config.window);
        for frame in &from_b[1..] {
            a.handle_frame(1, frame).unwrap();
        }
        let now = a.retransmit_at.unwrap();
        a.handle_timeout(now).unwrap();
        let mut resent = 0;
        while let Some(frame) = a.poll_transmit(now) {
            assert!(frame.len() <= config.max_frame, "{} bytes", frame.len());
            resent += 1;
        }
        assert_eq!(resent, config.window);
    }

    #[test]
    fn hostile_frames_fail_the_stream_without_panicking() {
        for frame in [
            &[][..],
            &[0x80],
            &[0x00, 0x80],
            &[0x80, 0x00],
            &[0x00, 0x40],
            &[0x05, 0x00],
            // A length varint that never ends.
            &[0x80, 0x00, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut arq = Arq::new(ArqConfig::fast(100));
            assert!(arq.handle_frame(0, frame).is_err(), "{frame:?}");
        }
        let mut arq = Arq::new(ArqConfig {
            max_message: 10,
            ..ArqConfig::fast(100)
        });
        assert_eq!(
            arq.handle_frame(0, &[0x80, 0x00, 11]),
            Err(ArqError::MessageTooLong(11))
        );
    }
}
