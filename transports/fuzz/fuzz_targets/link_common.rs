//! The `frame_link` harness, shared with the seed writer (`examples/write_seeds.rs`), which
//! replays scripted inputs through it to record real frames.
//!
//! L is the link under test. P is a second, honest `FrameLink` with its own keys on the
//! same bearer; every frame either transmits waits in a queue (its "outbox") until the input
//! delivers, drops, repeats or swaps it. The input also injects frames only L hears: raw
//! bytes, bit flips, replays and re-addressed copies of P's frames, strangers' beacons and
//! handshakes, and L's own frames reflected back. Time passes when the input says.
//!
//! Invariants: no panic; every frame a link sends parses as a link frame from its own
//! address and fits `max_frame`; `poll_transmit` ends; after a link handled its timers and
//! sent what it may at `now`, `poll_timeout` is later than `now` (a caller sleeping until
//! it never spins); the only peer either link ever reports is the other one; and every
//! message delivered is one the other link sent, whole, in order, once (contiguous while
//! no session changed). That last one holds until the input hands L raw bytes: keys and
//! seeds are fixed, so raw bytes may be P's genuine frames from another run (the seeds hold
//! such), which P in this run never sent; every other injection is made from this run's
//! frames, so anything it gets through is a real forgery.
//!
//! Input: byte 0 selects the setup (bit 0: radio SF7 or cable; bit 1: P's address below or
//! above L's; bit 2: a 9600 Bd cable; bit 3: `max_peers` 2), then operations: an opcode
//! byte, an argument byte, and for some more bytes (see [`Harness::step`]).

use std::collections::VecDeque;
use std::sync::OnceLock;

use cairn_firmware_bridge::{LoraParams, Medium};
use cairn_transports::hop::{LocalKeys, NetworkKey};
use cairn_transports::link::frame::{Addr, LinkFrame};
use cairn_transports::link::{FrameLink, LinkConfig, LinkEvent};
use ed25519_dalek::SigningKey;

/// Largest frame on the bearer.
pub const MAX_FRAME: usize = 255;
/// A bearer holds a frame for at most this many transmissions before it is lost (the ARQ's
/// 6-bit sequence numbers cannot tell a frame from one 64 numbers later).
const MAX_AGE: u64 = 32;
/// More frames than any one `poll_transmit` drain can honestly produce.
const MAX_BURST: usize = 2_000;

/// Opcodes (the opcode byte modulo [`OPS`]).
pub mod op {
    /// Deliver (arg & 3: 0 deliver, 1 drop, 2 deliver and keep, 3 swap the first two and
    /// deliver) the frame at the head of P's queue to L.
    pub const TO_L: u8 = 0;
    /// The same from L's queue to P.
    pub const TO_P: u8 = 1;
    /// Time passes: arg 0 jumps to the next deadline of either link, else arg² × 8 ms.
    pub const TIME: u8 = 2;
    /// L queues a message for P (length from arg).
    pub const SEND_L: u8 = 3;
    /// P queues a message for L.
    pub const SEND_P: u8 = 4;
    /// arg bytes follow: a raw frame to L.
    pub const RAW: u8 = 5;
    /// One byte follows: P's frame number arg (from its history) with a bit flipped, to L.
    pub const FLIP: u8 = 6;
    /// P's frame number arg again, to L.
    pub const REPLAY: u8 = 7;
    /// Two bytes follow: P's frame number arg with this source address, to L.
    pub const FORGE_SRC: u8 = 8;
    /// Two bytes follow: a beacon of our network from this address, to L.
    pub const BEACON: u8 = 9;
    /// Two bytes (source) and a length byte follow, then that many bytes: a handshake frame
    /// of type arg % 3 + 1 to L. With arg & 4, the body is instead that of P's handshake
    /// frame number (length byte) from its history: a genuine message from a forged address.
    pub const HANDSHAKE: u8 = 10;
    /// Two bytes follow: L's own frame number arg, with this source (and, for a handshake,
    /// L as the destination), back to L.
    pub const REFLECT: u8 = 11;
    /// arg & 1: L closes its session with P; else P closes its session with L.
    pub const CLOSE: u8 = 12;
}

/// Number of opcodes.
pub const OPS: u8 = 13;

fn local_keys(n: u8) -> LocalKeys {
    LocalKeys::from_identity(&SigningKey::from_bytes(&[n; 32]), [n + 1; 32])
}

fn identity(n: u8) -> [u8; 32] {
    SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes()
}

fn config(setup: u8, n: u8) -> LinkConfig {
    let medium = if setup & 1 == 1 {
        Medium::Radio(Some(LoraParams::sf7()))
    } else {
        Medium::Cable
    };
    let mut config = LinkConfig::new(
        local_keys(n),
        NetworkKey::default_network(),
        medium,
        MAX_FRAME,
    );
    if setup & 4 != 0 && medium == Medium::Cable {
        config.cable_bps = Some(9_600);
    }
    if setup & 8 != 0 {
        config.max_peers = 2;
    }
    config
}

/// Our network's beacon tag, and P's seeds: one giving an address below L's, one above.
struct Fixed {
    net: u16,
    p_seed: [[u8; 32]; 2],
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let l_addr = FrameLink::new(config(0, 1), 0, L_SEED).unwrap().addr();
        let mut p_seed = [None, None];
        for s in 100u8.. {
            let addr = FrameLink::new(config(0, 3), 0, [s; 32]).unwrap().addr();
            let slot = &mut p_seed[usize::from(addr > l_addr)];
            slot.get_or_insert([s; 32]);
            if p_seed.iter().all(Option::is_some) {
                break;
            }
        }
        let mut probe = FrameLink::new(config(0, 5), 0, [5; 32]).unwrap();
        let net = std::iter::from_fn(|| probe.poll_transmit(5_000))
            .find_map(|f| match LinkFrame::parse(&f) {
                Ok(LinkFrame::Beacon { net, .. }) => Some(net),
                _ => None,
            })
            .unwrap();
        Fixed {
            net,
            p_seed: p_seed.map(Option::unwrap),
        }
    })
}

/// L's random seed.
const L_SEED: [u8; 32] = [7; 32];

/// Messages one link sent the other, and how far the other has delivered them.
#[derive(Default)]
struct Flow {
    sent: Vec<Vec<u8>>,
    /// Index of the next message expected.
    next: usize,
    /// No session changed since the last delivery: the next must be exactly `sent[next]`.
    contiguous: bool,
    /// Messages delivered, checked or not.
    count: usize,
}

impl Flow {
    fn delivered(&mut self, message: &[u8]) {
        let rest = self.sent.get(self.next..).unwrap_or_default();
        let at = if self.contiguous {
            assert_eq!(
                rest.first().map(Vec::as_slice),
                Some(message),
                "not the next message sent"
            );
            0
        } else {
            rest.iter()
                .position(|m| m == message)
                .expect("delivered a message never sent, or again, or out of order")
        };
        self.next += at + 1;
        self.contiguous = true;
    }
}

struct Wire {
    frame: Vec<u8>,
    /// Transmissions (both links) before this one.
    stamp: u64,
}

struct Side {
    link: FrameLink,
    /// Frames on their way to the other link.
    outbox: VecDeque<Wire>,
    /// Every frame this link sent, for replays and mutations.
    history: Vec<Vec<u8>>,
    /// The only identity this link may report as a peer.
    peer_identity: [u8; 32],
}

/// What the seed writer learns from a run.
#[derive(Default)]
pub struct Record {
    /// Frames P's queue delivered to L, with the index of the operation that did it.
    pub to_l: Vec<(usize, Vec<u8>)>,
    /// Every frame P sent.
    pub p_frames: Vec<Vec<u8>>,
    /// Whether L reported P up, and how many messages each delivered.
    pub linked: bool,
    pub l_got: usize,
    pub p_got: usize,
}

pub struct Harness {
    l: Side,
    p: Side,
    /// L's messages to P and P's to L.
    l_to_p: Flow,
    p_to_l: Flow,
    now: u64,
    transmissions: u64,
    messages: u32,
    net: u16,
    record: Option<Record>,
    step: usize,
    /// L was handed raw bytes: message contents are no longer checked.
    raw_injected: bool,
    /// Print what happens (the seed writer's `--trace`).
    pub trace: bool,
}

fn message(counter: u32, arg: u8) -> Vec<u8> {
    let arg = usize::from(arg);
    let len = match arg >> 6 {
        0 | 1 => arg,
        2 => (arg & 63) * 20,
        _ => (arg & 63) * 100,
    };
    let mut m = counter.to_be_bytes().to_vec();
    m.extend((0..len).map(|i| (i as u8).wrapping_mul(counter as u8 | 1)));
    m
}

impl Harness {
    pub fn new(setup: u8, record: bool) -> Self {
        let fixed = fixed();
        let p_seed = fixed.p_seed[usize::from(setup & 2 != 0)];
        let side = |n: u8, seed: [u8; 32], peer: u8| Side {
            link: FrameLink::new(config(setup, n), 0, seed).unwrap(),
            outbox: VecDeque::new(),
            history: Vec::new(),
            peer_identity: identity(peer),
        };
        let mut h = Self {
            l: side(1, L_SEED, 3),
            p: side(3, p_seed, 1),
            l_to_p: Flow::default(),
            p_to_l: Flow::default(),
            now: 0,
            transmissions: 0,
            messages: 0,
            net: fixed.net,
            record: record.then(Record::default),
            step: 0,
            raw_injected: false,
            trace: false,
        };
        h.service();
        h
    }

    /// The seed writer's view of the run so far.
    pub fn record(&mut self) -> Record {
        let mut record = self.record.take().unwrap_or_default();
        record.l_got = self.p_to_l.count;
        record.p_got = self.l_to_p.count;
        record.p_frames = self.p.history.clone();
        record
    }

    fn side(&mut self, l: bool) -> &mut Side {
        if l {
            &mut self.l
        } else {
            &mut self.p
        }
    }

    /// One link as its caller drives it at `now`: timers if due, frames while it gives
    /// them, events. Then its next deadline must be in the future.
    fn service_one(&mut self, l: bool) {
        let now = self.now;
        let transmissions = &mut self.transmissions;
        let side = if l { &mut self.l } else { &mut self.p };
        if side.link.poll_timeout().is_some_and(|t| t <= now) {
            side.link.handle_timeout(now);
        }
        let mut sent = 0;
        while let Some(frame) = side.link.poll_transmit(now) {
            sent += 1;
            assert!(sent < MAX_BURST, "poll_transmit never ends");
            assert!(frame.len() <= MAX_FRAME, "a {}-byte frame", frame.len());
            let parsed = LinkFrame::parse(&frame).expect("sent a frame that does not parse");
            let src = match parsed {
                LinkFrame::Beacon { src, .. }
                | LinkFrame::Handshake { src, .. }
                | LinkFrame::Transport { src, .. } => src,
            };
            assert_eq!(src, side.link.addr(), "a frame from another address");
            side.history.push(frame.clone());
            side.outbox.push_back(Wire {
                frame,
                stamp: *transmissions,
            });
            *transmissions += 1;
        }
        let next = side.link.poll_timeout();
        assert!(
            next.is_none_or(|t| t > now),
            "deadline {next:?} still due at {now} after timers and transmits"
        );
        self.events(l);
    }

    fn events(&mut self, l: bool) {
        let Self {
            l: l_side,
            p: p_side,
            l_to_p,
            p_to_l,
            record,
            raw_injected,
            trace,
            ..
        } = self;
        let side = if l { l_side } else { p_side };
        while let Some(event) = side.link.poll_event() {
            if *trace {
                let who = if l { "L" } else { "P" };
                match &event {
                    LinkEvent::Message { addr, message } => eprintln!(
                        "  {who}: message from {addr}: {} bytes {:02x?}",
                        message.len(),
                        &message[..message.len().min(8)]
                    ),
                    other => eprintln!("  {who}: {other:?}"),
                }
            }
            match event {
                LinkEvent::PeerUp { peer, .. } => {
                    assert_eq!(peer.identity, side.peer_identity, "linked with a stranger");
                    l_to_p.contiguous = false;
                    p_to_l.contiguous = false;
                    if l {
                        if let Some(r) = record.as_mut() {
                            r.linked = true;
                        }
                    }
                }
                LinkEvent::PeerDown { .. } => {
                    l_to_p.contiguous = false;
                    p_to_l.contiguous = false;
                }
                LinkEvent::Message { message, .. } => {
                    let flow = if l { &mut *p_to_l } else { &mut *l_to_p };
                    flow.count += 1;
                    if !*raw_injected {
                        flow.delivered(&message);
                    }
                }
            }
        }
    }

    fn service(&mut self) {
        self.service_one(true);
        self.service_one(false);
    }

    fn hand_to_l(&mut self, frame: &[u8]) {
        let now = self.now;
        if self.trace {
            eprintln!(
                "  L hears {} bytes {:02x?}",
                frame.len(),
                &frame[..frame.len().min(12)]
            );
        }
        self.l.link.handle_frame(now, frame);
    }

    fn deliver(&mut self, to_l: bool, how: u8) {
        let transmissions = self.transmissions;
        let from = self.side(!to_l);
        if how & 3 == 3 && from.outbox.len() >= 2 {
            from.outbox.swap(0, 1);
        }
        let Some(wire) = from.outbox.pop_front() else {
            return;
        };
        if transmissions - wire.stamp > MAX_AGE || how & 3 == 1 {
            return;
        }
        let now = self.now;
        if self.trace {
            let who = if to_l { "L" } else { "P" };
            let f = &wire.frame;
            eprintln!(
                "  {who} gets {} bytes {:02x?}",
                f.len(),
                &f[..f.len().min(12)]
            );
        }
        self.side(to_l).link.handle_frame(now, &wire.frame);
        if to_l {
            let step = self.step;
            if let Some(r) = self.record.as_mut() {
                r.to_l.push((step, wire.frame.clone()));
            }
        }
        if how & 3 == 2 {
            self.side(!to_l).outbox.push_front(wire);
        }
    }

    fn send(&mut self, from_l: bool, arg: u8) {
        self.messages += 1;
        let m = message(self.messages, arg);
        let (side, to) = if from_l {
            (&mut self.l, self.p.link.addr())
        } else {
            (&mut self.p, self.l.link.addr())
        };
        if side.link.backlog(to) > 50_000 {
            return;
        }
        if side.link.send(to, &m).is_ok() {
            let flow = if from_l {
                &mut self.l_to_p
            } else {
                &mut self.p_to_l
            };
            flow.sent.push(m);
        }
    }

    /// A frame from a history with its source (and a handshake's destination) replaced.
    fn readdress(frame: &[u8], src: [u8; 2], dst: Option<Addr>) -> Vec<u8> {
        let mut frame = frame.to_vec();
        match frame.first() {
            Some(1..=3) if frame.len() >= 5 => {
                if let Some(dst) = dst {
                    frame[1..3].copy_from_slice(&dst.0.to_be_bytes());
                }
                frame[3..5].copy_from_slice(&src);
            }
            Some(_) if frame.len() >= 3 => frame[1..3].copy_from_slice(&src),
            _ => {}
        }
        frame
    }

    /// Runs one operation; false once the input is used up.
    pub fn step(&mut self, input: &mut &[u8]) -> bool {
        fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if input.len() < n {
                return None;
            }
            let (head, rest) = input.split_at(n);
            *input = rest;
            Some(head)
        }
        fn pick(history: &[Vec<u8>], i: u8) -> Option<&Vec<u8>> {
            (!history.is_empty()).then(|| &history[usize::from(i) % history.len()])
        }
        let Some(&[op, arg]) = take(input, 2) else {
            return false;
        };
        if self.trace {
            eprintln!(
                "step {} at {} ms: op {} arg {arg}",
                self.step,
                self.now,
                op % OPS
            );
        }
        match op % OPS {
            op::TO_L => self.deliver(true, arg),
            op::TO_P => self.deliver(false, arg),
            op::TIME => {
                if arg == 0 {
                    let next = [self.l.link.poll_timeout(), self.p.link.poll_timeout()]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(self.now);
                    self.now = next.clamp(self.now + 1, self.now + 86_400_000);
                } else {
                    self.now += u64::from(arg) * u64::from(arg) * 8;
                }
            }
            op::SEND_L => self.send(true, arg),
            op::SEND_P => self.send(false, arg),
            op::RAW => {
                let Some(frame) = take(input, usize::from(arg)) else {
                    return false;
                };
                self.raw_injected = true;
                self.hand_to_l(frame);
            }
            op::FLIP => {
                let Some(&[at]) = take(input, 1) else {
                    return false;
                };
                if let Some(frame) = pick(&self.p.history, arg) {
                    let mut frame = frame.clone();
                    let i = usize::from(at) * 7 % frame.len();
                    frame[i] ^= 1 << (at % 8);
                    self.hand_to_l(&frame);
                }
            }
            op::REPLAY => {
                if let Some(frame) = pick(&self.p.history, arg).cloned() {
                    self.hand_to_l(&frame);
                }
            }
            op::FORGE_SRC => {
                let Some(&[a, b]) = take(input, 2) else {
                    return false;
                };
                if let Some(frame) = pick(&self.p.history, arg) {
                    let frame = Self::readdress(frame, [a, b], None);
                    self.hand_to_l(&frame);
                }
            }
            op::BEACON => {
                let Some(&[a, b]) = take(input, 2) else {
                    return false;
                };
                let beacon = [0x10, a, b, (self.net >> 8) as u8, self.net as u8];
                self.hand_to_l(&beacon);
            }
            op::HANDSHAKE => {
                let Some(&[a, b, n]) = take(input, 3) else {
                    return false;
                };
                let body = if arg & 4 != 0 {
                    let handshakes: Vec<&Vec<u8>> = self
                        .p
                        .history
                        .iter()
                        .filter(|f| matches!(f.first(), Some(1..=3)))
                        .collect();
                    if handshakes.is_empty() {
                        return true;
                    }
                    handshakes[usize::from(n) % handshakes.len()][5..].to_vec()
                } else {
                    let Some(body) = take(input, usize::from(n)) else {
                        return false;
                    };
                    self.raw_injected = true;
                    body.to_vec()
                };
                let mut frame = vec![arg % 3 + 1];
                frame.extend_from_slice(&self.l.link.addr().0.to_be_bytes());
                frame.extend_from_slice(&[a, b]);
                frame.extend_from_slice(&body);
                self.hand_to_l(&frame);
            }
            op::REFLECT => {
                let Some(&[a, b]) = take(input, 2) else {
                    return false;
                };
                let dst = self.l.link.addr();
                if let Some(frame) = pick(&self.l.history, arg) {
                    let frame = Self::readdress(frame, [a, b], Some(dst));
                    self.hand_to_l(&frame);
                }
            }
            _ => {
                if arg & 1 == 1 {
                    let p = self.p.link.addr();
                    self.l.link.close_peer(p, "closed by the fuzz input");
                } else {
                    let l = self.l.link.addr();
                    self.p.link.close_peer(l, "closed by the fuzz input");
                }
            }
        }
        self.service();
        self.step += 1;
        true
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&setup, mut input)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(setup, false);
    while h.step(&mut input) {}
}
