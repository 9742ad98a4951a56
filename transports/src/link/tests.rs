//! Frame links over a small simulated channel: half duplex, collisions, loss, topology.

use std::collections::BTreeMap;

use cairn_firmware_bridge::{LoraParams, Medium};
use ed25519_dalek::SigningKey;

use super::*;

struct Node {
    link: FrameLink,
    identity: [u8; 32],
    up: BTreeMap<Addr, ([u8; 32], bool)>,
    got: Vec<(Addr, Vec<u8>)>,
    downs: u32,
}

struct Air {
    start: u64,
    end: u64,
    from: usize,
    frame: Vec<u8>,
}

/// A channel: who hears whom, loss as (numerator per 1000), and time in ms.
struct Net {
    nodes: Vec<Node>,
    hears: Vec<Vec<bool>>,
    loss_per_mille: u64,
    rng: u64,
    now: u64,
    on_air: Vec<Air>,
    collisions: u64,
    /// A cable: both directions at once, nothing collides.
    full_duplex: bool,
    /// Frames ending in this interval are lost (a cut cable).
    blackout: Option<(u64, u64)>,
}

fn keys(i: u8) -> LocalKeys {
    LocalKeys::from_identity(&SigningKey::from_bytes(&[i + 1; 32]), [i + 100; 32])
}

impl Net {
    fn new(
        count: usize,
        medium: Medium,
        max_frame: usize,
        hears: impl Fn(usize, usize) -> bool,
    ) -> Self {
        let nodes = (0..count)
            .map(|i| {
                let keys = keys(i as u8);
                let identity = keys.credential.identity;
                let config =
                    LinkConfig::new(keys, NetworkKey::default_network(), medium, max_frame);
                Node {
                    link: FrameLink::new(config, 0, [i as u8 + 7; 32]).unwrap(),
                    identity,
                    up: BTreeMap::new(),
                    got: Vec::new(),
                    downs: 0,
                }
            })
            .collect();
        let hears = (0..count)
            .map(|a| (0..count).map(|b| a != b && hears(a, b)).collect())
            .collect();
        Net {
            nodes,
            hears,
            loss_per_mille: 0,
            rng: 99,
            now: 0,
            on_air: Vec::new(),
            collisions: 0,
            full_duplex: medium == Medium::Cable,
            blackout: None,
        }
    }

    fn lost(&mut self) -> bool {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.rng >> 33) % 1000 < self.loss_per_mille
    }

    fn addr(&self, i: usize) -> Addr {
        self.nodes[i].link.addr()
    }

    /// Runs until `until` ms, or until `done` holds.
    fn run(&mut self, until: u64, mut done: impl FnMut(&Net) -> bool) {
        while self.now < until {
            // Everyone transmits what it may now.
            for i in 0..self.nodes.len() {
                while let Some(frame) = self.nodes[i].link.poll_transmit(self.now) {
                    let airtime = self.nodes[i]
                        .link
                        .config()
                        .airtime_us(frame.len())
                        .div_ceil(1000);
                    self.on_air.push(Air {
                        start: self.now,
                        end: self.now + airtime.max(1),
                        from: i,
                        frame,
                    });
                }
            }
            // Deliver what finished.
            let now = self.now;
            let finished: Vec<Air> = {
                let (done_air, rest): (Vec<Air>, Vec<Air>) =
                    self.on_air.drain(..).partition(|a| a.end <= now);
                self.on_air = rest;
                done_air
            };
            for air in &finished {
                for to in 0..self.nodes.len() {
                    if !self.hears[to][air.from] {
                        continue;
                    }
                    let overlapping = |other: &Air| {
                        !std::ptr::eq(other, air) && other.start < air.end && air.start < other.end
                    };
                    // Half duplex: the receiver was transmitting; collision: another audible
                    // transmission overlapped.
                    let deaf = finished
                        .iter()
                        .chain(self.on_air.iter())
                        .any(|o| overlapping(o) && (o.from == to || self.hears[to][o.from]));
                    if deaf && !self.full_duplex {
                        self.collisions += 1;
                        continue;
                    }
                    if self.lost() || self.blackout.is_some_and(|(a, b)| (a..b).contains(&now)) {
                        continue;
                    }
                    self.nodes[to].link.handle_frame(now, &air.frame);
                }
            }
            for node in &mut self.nodes {
                while let Some(event) = node.link.poll_event() {
                    match event {
                        LinkEvent::PeerUp {
                            addr,
                            peer,
                            initiator,
                        } => {
                            node.up.insert(addr, (peer.identity, initiator));
                        }
                        LinkEvent::Message { addr, message } => node.got.push((addr, message)),
                        LinkEvent::PeerDown { addr, .. } => {
                            node.up.remove(&addr);
                            node.downs += 1;
                        }
                    }
                }
            }
            if done(self) {
                return;
            }
            if !finished.is_empty() {
                // What was heard may be answered at once: poll again before time moves.
                continue;
            }
            // Next instant anything happens.
            let mut next = until;
            for node in &self.nodes {
                if let Some(t) = node.link.poll_timeout() {
                    next = next.min(t.max(self.now + 1));
                }
            }
            for air in &self.on_air {
                next = next.min(air.end);
            }
            self.now = next.max(self.now + 1);
            for node in &mut self.nodes {
                node.link.handle_timeout(self.now);
            }
        }
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        let (ia, ib) = (self.nodes[a].identity, self.nodes[b].identity);
        self.nodes[a]
            .up
            .get(&self.addr(b))
            .is_some_and(|p| p.0 == ib)
            && self.nodes[b]
                .up
                .get(&self.addr(a))
                .is_some_and(|p| p.0 == ia)
    }
}

#[test]
fn two_ends_of_a_cable_find_each_other_and_exchange_messages() {
    let mut net = Net::new(2, Medium::Cable, 1024, |_, _| true);
    net.run(10_000, |n| n.linked(0, 1));
    assert!(net.linked(0, 1), "no session after 10 s");
    // Exactly one side initiated.
    let a_init = net.nodes[0].up[&net.addr(1)].1;
    let b_init = net.nodes[1].up[&net.addr(0)].1;
    assert_ne!(a_init, b_init);
    let (a1, a0) = (net.addr(1), net.addr(0));
    let big = vec![7u8; 5_000];
    net.nodes[0].link.send(a1, b"hello over the cable").unwrap();
    net.nodes[0].link.send(a1, &big).unwrap();
    net.nodes[1].link.send(a0, b"and back").unwrap();
    net.run(60_000, |n| {
        n.nodes[1].got.len() == 2 && n.nodes[0].got.len() == 1
    });
    assert_eq!(
        net.nodes[1].got,
        vec![(a0, b"hello over the cable".to_vec()), (a0, big)]
    );
    assert_eq!(net.nodes[0].got, vec![(a1, b"and back".to_vec())]);
    // Beacons stop once the cable has its peer.
    let beacons = net.nodes[0].link.stats().beacons_sent;
    net.run(net.now + 60_000, |_| false);
    assert_eq!(net.nodes[0].link.stats().beacons_sent, beacons);
}

#[test]
fn three_radios_in_range_pair_up_and_idle_silently() {
    let mut net = Net::new(3, Medium::Radio(Some(LoraParams::sf7())), 200, |_, _| true);
    net.run(10 * 60_000, |n| {
        n.linked(0, 1) && n.linked(1, 2) && n.linked(0, 2)
    });
    assert!(net.linked(0, 1) && net.linked(1, 2) && net.linked(0, 2));
    let t = net.now;
    let a2 = net.addr(2);
    net.nodes[0].link.send(a2, &[1u8; 100]).unwrap();
    net.run(t + 60_000, |n| !n.nodes[2].got.is_empty());
    assert_eq!(net.nodes[2].got, vec![(net.addr(0), vec![1u8; 100])]);
    // An idle hour: beacons only (SF7: one a minute or so each), no keepalives.
    let before: Vec<LinkStats> = net.nodes.iter().map(|n| n.link.stats()).collect();
    let t = net.now + 10_000;
    net.run(t, |_| false);
    let mid: Vec<LinkStats> = net.nodes.iter().map(|n| n.link.stats()).collect();
    net.run(t + 3_600_000, |_| false);
    for (node, start) in net.nodes.iter().zip(&mid) {
        let s = node.link.stats();
        assert_eq!(
            s.frames_sent - start.frames_sent,
            s.beacons_sent - start.beacons_sent
        );
        assert!(s.beacons_sent - start.beacons_sent <= 75, "{s:?}");
    }
    let _ = before;
}

#[test]
fn only_neighbours_link_on_a_line() {
    let mut net = Net::new(3, Medium::Radio(Some(LoraParams::sf7())), 200, |a, b| {
        a.abs_diff(b) == 1
    });
    net.run(10 * 60_000, |n| n.linked(0, 1) && n.linked(1, 2));
    assert!(net.linked(0, 1) && net.linked(1, 2));
    assert!(!net.nodes[0].up.contains_key(&net.addr(2)));
    assert!(!net.nodes[2].up.contains_key(&net.addr(0)));
}

#[test]
fn a_lossy_radio_still_delivers_every_message_in_order() {
    let mut net = Net::new(2, Medium::Radio(Some(LoraParams::sf7())), 200, |_, _| true);
    net.loss_per_mille = 200;
    net.run(60 * 60_000, |n| n.linked(0, 1));
    assert!(net.linked(0, 1));
    let a1 = net.addr(1);
    let sent: Vec<Vec<u8>> = (0..30).map(|i| vec![i as u8; 40 + i * 7]).collect();
    for m in &sent {
        net.nodes[0].link.send(a1, m).unwrap();
    }
    net.run(net.now + 3_600_000, |n| n.nodes[1].got.len() == sent.len());
    let got: Vec<Vec<u8>> = net.nodes[1].got.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(got, sent);
    assert!(net.nodes[0].link.stats().arq.retransmissions > 0);
}

#[test]
fn the_duty_cycle_holds_under_a_backlog() {
    let mut net = Net::new(2, Medium::Radio(Some(LoraParams::sf12())), 200, |_, _| true);
    net.run(4 * 3_600_000, |n| n.linked(0, 1));
    assert!(net.linked(0, 1), "SF12 handshake within 4 hours");
    let a1 = net.addr(1);
    for _ in 0..50 {
        net.nodes[0].link.send(a1, &[9u8; 150]).unwrap();
    }
    let start = net.now;
    let airtime_before = net.nodes[0].link.stats().airtime_us;
    net.run(start + 3_600_000, |_| false);
    let s = net.nodes[0].link.stats();
    // At most 36 s on air in the hour (plus what the window carried in from before).
    assert!(s.airtime_us - airtime_before <= 36_000_000, "{s:?}");
    assert!(s.duty_cycle_waits > 0);
    // ... and the link kept working within it: some messages arrived.
    assert!(!net.nodes[1].got.is_empty());
}

#[test]
fn a_peer_that_restarts_gets_a_new_session() {
    let mut net = Net::new(2, Medium::Cable, 512, |_, _| true);
    net.run(10_000, |n| n.linked(0, 1));
    assert!(net.linked(0, 1));
    // Node 1 restarts: same keys, new link state (new address).
    let config = net.nodes[1].link.config().clone();
    net.nodes[1].link = FrameLink::new(config, net.now, [42; 32]).unwrap();
    net.nodes[1].up.clear();
    let a1_old = net.nodes[0].up.keys().next().copied().unwrap();
    // Node 0's next send to the old session fails and is reported; the new one links.
    net.nodes[0].link.send(a1_old, b"are you there?").unwrap();
    net.run(net.now + 120_000, |n| {
        n.linked(0, 1) && n.nodes[0].downs > 0
    });
    assert!(net.linked(0, 1));
    assert!(net.nodes[0].downs > 0);
}

#[test]
fn garbage_and_strangers_are_ignored() {
    let config = LinkConfig::new(keys(0), NetworkKey::default_network(), Medium::Cable, 256);
    let mut link = FrameLink::new(config, 0, [1; 32]).unwrap();
    let mut state = 7u64;
    for len in 0..2_000usize {
        let frame: Vec<u8> = (0..len % 300)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        link.handle_frame(len as u64, &frame);
        while link.poll_transmit(len as u64).is_some() {}
    }
    // A beacon from another network starts nothing.
    let other = LinkFrame::Beacon {
        src: Addr(1),
        net: 0x1234,
    };
    link.handle_frame(5_000, &other.encode());
    assert!(link.peers().next().is_none());
    assert!(link.poll_event().is_none());
}

#[test]
fn frames_too_small_for_a_handshake_are_refused() {
    let config = LinkConfig::new(keys(0), NetworkKey::default_network(), Medium::Cable, 199);
    assert_eq!(
        FrameLink::new(config, 0, [0; 32]).unwrap_err(),
        LinkError::FrameTooSmall(199)
    );
}

#[test]
fn a_cable_cut_in_the_middle_of_a_backlog_resumes_where_it_stopped() {
    let mut net = Net::new(2, Medium::Cable, 1024, |_, _| true);
    net.run(10_000, |n| n.linked(0, 1));
    assert!(net.linked(0, 1));
    let a1 = net.addr(1);
    let sent: Vec<Vec<u8>> = (0..120u32).map(|i| vec![i as u8; 650]).collect();
    for m in &sent {
        net.nodes[0].link.send(a1, m).unwrap();
    }
    let t = net.now;
    net.blackout = Some((t + 5, t + 3_000));
    net.loss_per_mille = 50;
    net.run(t + 120_000, |n| n.nodes[1].got.len() == sent.len());
    let got: Vec<Vec<u8>> = net.nodes[1].got.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(got.len(), sent.len(), "{:?}", net.nodes[0].link.stats());
    assert_eq!(got, sent);
}

#[test]
fn two_nodes_that_drew_the_same_address_sort_it_out() {
    let mut net = Net::new(3, Medium::Radio(Some(LoraParams::sf7())), 200, |_, _| true);
    // Node 2 starts with node 0's address.
    let clash = net.addr(0);
    net.nodes[2].link.addr = clash;
    net.run(30 * 60_000, |n| {
        n.linked(0, 1) && n.linked(1, 2) && n.linked(0, 2)
    });
    assert!(net.linked(0, 1) && net.linked(1, 2) && net.linked(0, 2));
    assert_ne!(net.addr(0), net.addr(2));
    let changes: u64 = net
        .nodes
        .iter()
        .map(|n| n.link.stats().address_changes)
        .sum();
    assert!(changes >= 1);
}

/// Drives `link` at `now` as the daemon does (timers, then frames while any come) and
/// returns how often its deadline was still due afterwards: each such round is a wake-up that
/// did no work, and a caller sleeping until `poll_timeout` would spin.
fn idle_wakeups(link: &mut FrameLink, now: u64) -> u32 {
    let mut wakeups = 0;
    for _ in 0..100 {
        if link.poll_timeout().is_none_or(|t| t > now) {
            break;
        }
        wakeups += 1;
        link.handle_timeout(now);
        while link.poll_transmit(now).is_some() {}
    }
    wakeups
}

#[test]
fn a_deadline_is_never_due_while_the_channel_makes_us_wait() {
    // A beacon from a lower address makes a radio answer with its own beacon, but only after
    // a random quiet slot: until then `poll_timeout` must not report the beacon as due.
    let mut spinning = 0;
    for seed in 0..20u8 {
        let config = LinkConfig::new(
            keys(0),
            NetworkKey::default_network(),
            Medium::Radio(Some(LoraParams::sf7())),
            255,
        );
        let mut link = FrameLink::new(config, 0, [seed; 32]).unwrap();
        // Our own beacon went out a while ago.
        idle_wakeups(&mut link, 5_000);
        let now = 20_000;
        let beacon = LinkFrame::Beacon {
            src: Addr(1),
            net: link.net,
        };
        link.handle_frame(now, &beacon.encode());
        while link.poll_transmit(now).is_some() {}
        spinning += idle_wakeups(&mut link, now);
    }
    assert_eq!(spinning, 0, "wake-ups with nothing to do");
}

/// Two links on a lossless cable: frames are handed over at once and time jumps to the next
/// deadline.
fn pump(a: &mut FrameLink, b: &mut FrameLink, now: &mut u64, rounds: usize) {
    for _ in 0..rounds {
        let mut moved = false;
        while let Some(frame) = a.poll_transmit(*now) {
            b.handle_frame(*now, &frame);
            moved = true;
        }
        while let Some(frame) = b.poll_transmit(*now) {
            a.handle_frame(*now, &frame);
            moved = true;
        }
        if !moved {
            // (A cable with its peer has no beacon due: `u64::MAX`.)
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|&t| t != u64::MAX)
                .min()
                .unwrap_or(*now);
            *now = next.max(*now + 1);
            a.handle_timeout(*now);
            b.handle_timeout(*now);
        }
    }
}

fn cable_link(i: u8, max_frame: usize, seed: u8) -> FrameLink {
    let config = LinkConfig::new(
        keys(i),
        NetworkKey::default_network(),
        Medium::Cable,
        max_frame,
    );
    FrameLink::new(config, 0, [seed; 32]).unwrap()
}

fn drain_messages(link: &mut FrameLink) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| link.poll_event())
        .filter_map(|e| match e {
            LinkEvent::Message { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

#[test]
fn peers_with_different_frame_sizes_still_exchange_long_messages() {
    // One end's bearer carries 255-byte frames, the other's 200: the hop handshake settles
    // on the smaller, and the stream must cut its frames to that.
    let mut a = cable_link(0, 255, 1);
    let mut b = cable_link(1, 200, 2);
    let mut now = 0;
    pump(&mut a, &mut b, &mut now, 50);
    let (a_addr, b_addr) = (a.addr(), b.addr());
    assert!(a.peers().any(|(x, _)| x == b_addr) && b.peers().any(|(x, _)| x == a_addr));
    let long = vec![5u8; 1_000];
    a.send(b_addr, &long).unwrap();
    b.send(a_addr, &long).unwrap();
    pump(&mut a, &mut b, &mut now, 200);
    for got in [drain_messages(&mut b), drain_messages(&mut a)] {
        assert_eq!(got.len(), 1, "the message did not arrive");
        assert!(got[0] == long);
    }
}

#[test]
fn forged_handshake_openings_do_not_take_peer_slots() {
    // Anyone on the channel can send "message 1" frames from made-up addresses. Ones that do
    // not authenticate (no network key) must not hold one of the link's `max_peers` slots
    // for the handshake timeout, or a few tiny frames would lock real peers out.
    let mut link = cable_link(0, 255, 1);
    let mut state = 3u64;
    for i in 0..64u16 {
        let mut frame = vec![1];
        frame.extend_from_slice(&link.addr().0.to_be_bytes());
        frame.extend_from_slice(&(0x100 + i).to_be_bytes());
        frame.extend((0..crate::hop::HANDSHAKE_1_LEN).map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 56) as u8
        }));
        link.handle_frame(10, &frame);
    }
    assert_eq!(link.peers.len(), 0);
    // A real peer still links at once.
    let mut peer = cable_link(1, 255, 2);
    let mut now = 10;
    pump(&mut link, &mut peer, &mut now, 50);
    assert_eq!(link.peers().count(), 1);
}

#[test]
fn own_frames_reflected_back_never_make_a_session_with_ourselves() {
    // Someone records our handshake frames and plays them back to us with the addresses
    // rewritten, so that our initiator talks to our own responder.
    let mut link = cable_link(0, 255, 1);
    let me = link.addr();
    let (x, y) = (Addr(0xfffe), Addr(0x0001));
    assert!(me < x);
    let reflect = |frame: &[u8], src: Addr| {
        let mut f = frame.to_vec();
        f[1..3].copy_from_slice(&me.0.to_be_bytes());
        f[3..5].copy_from_slice(&src.0.to_be_bytes());
        f
    };
    let beacon = LinkFrame::Beacon {
        src: x,
        net: link.net,
    };
    link.handle_frame(1, &beacon.encode());
    // Our message 1 to x comes back as from y; our message 2 to y as from x; and so on.
    for _ in 0..6 {
        let frames: Vec<Vec<u8>> = std::iter::from_fn(|| link.poll_transmit(1)).collect();
        for frame in frames {
            match LinkFrame::parse(&frame) {
                Ok(LinkFrame::Handshake { dst, .. }) => {
                    let src = if dst == x { y } else { x };
                    link.handle_frame(1, &reflect(&frame, src));
                }
                _ => continue,
            }
        }
    }
    let ups: Vec<LinkEvent> = std::iter::from_fn(|| link.poll_event())
        .filter(|e| matches!(e, LinkEvent::PeerUp { .. }))
        .collect();
    assert!(ups.is_empty(), "{ups:?}");
}

/// A genuine handshake message 1 from `from`'s link (any node of the network sends one when
/// it meets someone), as the air carries it.
fn recorded_message_1(from: &mut FrameLink) -> Vec<u8> {
    let beacon = LinkFrame::Beacon {
        src: Addr(0xfffe),
        net: from.net,
    };
    from.handle_frame(0, &beacon.encode());
    // The handshake starts when its (jittered) moment comes: at once on a cable.
    let at = from.poll_timeout().expect("a handshake is due");
    from.handle_timeout(at);
    std::iter::from_fn(|| from.poll_transmit(at))
        .find(|f| f.first() == Some(&1))
        .expect("message 1")
}

#[test]
fn replayed_handshake_openings_do_not_lock_real_peers_out() {
    // One message 1 recorded off the air, replayed from `max_peers` made-up addresses. It
    // authenticates (it is genuine), so a copy would get a responder session waiting for a
    // message 3 that never comes, for the whole handshake timeout: sixteen 57-byte frames
    // would keep a node from meeting anyone new. The same opening from another address is
    // recognised as a replay and dropped.
    let mut link = cable_link(0, 255, 1);
    let genuine = recorded_message_1(&mut cable_link(2, 255, 9));
    for i in 0..16u16 {
        let mut frame = genuine.clone();
        frame[1..3].copy_from_slice(&link.addr().0.to_be_bytes());
        frame[3..5].copy_from_slice(&(0x100 + i).to_be_bytes());
        link.handle_frame(10, &frame);
    }
    assert_eq!(link.stats().replayed_openings, 15);
    // A real peer links well within the 30 s the replayed handshake may hold its one slot.
    let mut peer = cable_link(1, 255, 2);
    let mut now = 10;
    while link.peers().count() == 0 && now < 25_000 {
        pump(&mut link, &mut peer, &mut now, 1);
    }
    assert_eq!(link.peers().count(), 1, "the real peer was locked out");
}

#[test]
fn peers_that_left_do_not_keep_new_ones_out() {
    // Idle means silent: a session whose peer walked out of range (or restarted under a new
    // address) ends only when a send to it goes unanswered. With nothing to send, such
    // sessions would fill `max_peers` for good; a session silent for `IDLE_SLOT_MS` gives
    // its slot to a newcomer.
    let config = LinkConfig {
        max_peers: 2,
        ..LinkConfig::new(keys(0), NetworkKey::default_network(), Medium::Cable, 255)
    };
    let mut link = FrameLink::new(config, 0, [1; 32]).unwrap();
    let mut now = 0;
    for i in 1..=3u8 {
        // Peer i comes, links, and leaves without a word.
        let mut peer = cable_link(i, 255, 10 + i);
        pump(&mut link, &mut peer, &mut now, 200);
        let addr = peer.addr();
        assert!(
            link.peers().any(|(a, _)| a == addr),
            "peer {i} never linked ({} sessions held)",
            link.peers.len()
        );
        now += 3_600_000;
        link.handle_timeout(now);
    }
}

#[test]
fn a_stranger_repeating_our_address_does_not_end_our_sessions() {
    // Beacons are not authenticated: a link that drew a new address whenever it heard its
    // own would let one 5-byte frame from anyone who heard us cut all our peers. A link with
    // sessions keeps its address; the newcomer, which has none, moves.
    let mut a = cable_link(0, 255, 1);
    let mut b = cable_link(1, 255, 2);
    let mut now = 0;
    pump(&mut a, &mut b, &mut now, 50);
    assert_eq!(a.peers().count(), 1);
    while a.poll_event().is_some() {}
    let spoof = LinkFrame::Beacon {
        src: a.addr(),
        net: a.net,
    };
    a.handle_frame(now, &spoof.encode());
    let downs = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, LinkEvent::PeerDown { .. }))
        .count();
    assert_eq!(downs, 0, "a forged beacon ended our sessions");
}

#[test]
fn strangers_beacons_are_remembered_within_a_bound() {
    // `heard` keeps beacons from lower addresses until they beacon again: a stranger cycling
    // through addresses must not grow it.
    let mut link = cable_link(0, 255, 1);
    let me = link.addr().0;
    for (i, src) in (1..me).cycle().take(20_000).enumerate() {
        let beacon = LinkFrame::Beacon {
            src: Addr(src),
            net: link.net,
        };
        link.handle_frame(i as u64, &beacon.encode());
        assert!(link.heard.len() <= 4 * link.config.max_peers);
        assert!(link.peers.len() <= link.config.max_peers);
        while link.poll_transmit(i as u64).is_some() {}
    }
}

#[test]
fn replayed_openings_to_a_linked_peer_make_at_most_one_successor() {
    let mut a = cable_link(0, 255, 1);
    let mut b = cable_link(1, 255, 2);
    let mut now = 0;
    pump(&mut a, &mut b, &mut now, 50);
    let b_addr = b.addr();
    // b's own genuine message 1, replayed to a from b's address again and again.
    let mut opening = recorded_message_1(&mut cable_link(1, 255, 3));
    opening[1..3].copy_from_slice(&a.addr().0.to_be_bytes());
    opening[3..5].copy_from_slice(&b_addr.0.to_be_bytes());
    for i in 0..1_000 {
        a.handle_frame(now + i, &opening);
        let peer = &a.peers[&b_addr];
        assert!(peer
            .successor
            .as_ref()
            .is_none_or(|s| s.successor.is_none()));
        assert_eq!(a.peers.len(), 1);
        while a.poll_transmit(now + i).is_some() {}
    }
    // The working session is untouched and the pending one times out.
    pump(&mut a, &mut b, &mut now, 50);
    assert!(a.peers[&b_addr].successor.is_none());
    assert_eq!(a.peers().count(), 1);
}

#[test]
fn repeated_openings_heard_while_we_wait_queue_one_answer() {
    // A responder answers a repeat of message 1 with message 2 again (our answer may have
    // been lost), but at most once per retransmission interval: answers to every repeat
    // would pile up while the channel makes us wait, and then spend our airtime on hundreds
    // of identical 200-byte frames.
    let config = LinkConfig::new(
        keys(0),
        NetworkKey::default_network(),
        Medium::Radio(Some(LoraParams::sf7())),
        255,
    );
    let mut link = FrameLink::new(config, 0, [1; 32]).unwrap();
    let mut opening = recorded_message_1(&mut cable_link(2, 255, 9));
    opening[1..3].copy_from_slice(&link.addr().0.to_be_bytes());
    opening[3..5].copy_from_slice(&0x0100u16.to_be_bytes());
    for _ in 0..500 {
        link.handle_frame(10, &opening);
    }
    let mut answers = 0;
    for t in 10..100_000 {
        while let Some(frame) = link.poll_transmit(t) {
            answers += usize::from(frame.first() == Some(&2));
        }
    }
    assert!(answers <= 2, "{answers} copies of message 2 sent");
}
