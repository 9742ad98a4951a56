//! Hop session costs, printed as JSON: handshake CPU time per side, transport seal+open rate
//! for 256-byte frames, and per-frame overhead.
//!
//! `cargo run --release -p cairn-transports --example hop_bench`
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_transports::hop::*;
use ed25519_dalek::SigningKey;

const HANDSHAKES: usize = 2000;
const FRAMES: usize = 200_000;

fn config(role: Role, n: u8, framing: Framing) -> HopConfig {
    let keys = LocalKeys::from_identity(&SigningKey::from_bytes(&[n; 32]), [n + 100; 32]);
    HopConfig::new(role, keys, NetworkKey::default_network(), framing)
}

fn median_us(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// Times each side's work (its `new`, `handle_input` and output) separately.
fn handshake_costs(framing: Framing) -> (f64, f64) {
    let mut init_t = Vec::with_capacity(HANDSHAKES);
    let mut resp_t = Vec::with_capacity(HANDSHAKES);
    for i in 0..HANDSHAKES {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let ca = config(Role::Initiator, 1, framing);
        let cb = config(Role::Responder, 2, framing);
        let mut ti = Duration::ZERO;
        let mut tr = Duration::ZERO;
        let t = Instant::now();
        let mut a = HopSession::new(ca, 0, seed).unwrap();
        let m1 = a.poll_transmit().unwrap();
        ti += t.elapsed();
        let t = Instant::now();
        let mut b = HopSession::new(cb, 0, seed).unwrap();
        b.handle_input(0, &m1);
        let m2 = b.poll_transmit().unwrap();
        tr += t.elapsed();
        let t = Instant::now();
        a.handle_input(0, &m2);
        let m3 = a.poll_transmit().unwrap();
        ti += t.elapsed();
        let t = Instant::now();
        b.handle_input(0, &m3);
        tr += t.elapsed();
        assert!(a.is_established() && b.is_established());
        init_t.push(ti);
        resp_t.push(tr);
    }
    (median_us(init_t), median_us(resp_t))
}

fn established(framing: Framing) -> (HopSession, HopSession) {
    let mut a = HopSession::new(config(Role::Initiator, 1, framing), 0, [1; 32]).unwrap();
    let mut b = HopSession::new(config(Role::Responder, 2, framing), 0, [2; 32]).unwrap();
    for _ in 0..3 {
        while let Some(d) = a.poll_transmit() {
            b.handle_input(0, &d);
        }
        while let Some(d) = b.poll_transmit() {
            a.handle_input(0, &d);
        }
    }
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    (a, b)
}

fn seal_open_rate(framing: Framing) -> f64 {
    let (mut a, mut b) = established(framing);
    let payload = [0xa5u8; 256];
    let t = Instant::now();
    let mut got = 0usize;
    for _ in 0..FRAMES {
        a.send(&payload).unwrap();
        let d = a.poll_transmit().unwrap();
        b.handle_input(0, &d);
        if let Some(HopEvent::Frame(f)) = b.poll_event() {
            got += f.len();
        }
    }
    assert_eq!(got, FRAMES * 256);
    FRAMES as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let (s_init, s_resp) = handshake_costs(Framing::Stream);
    let lora = Framing::Datagram { mtu: 200 };
    let (d_init, d_resp) = handshake_costs(lora);
    let s_rate = seal_open_rate(Framing::Stream);
    let d_rate = seal_open_rate(Framing::Datagram { mtu: 1400 });
    println!(
        "{{\n  \"pattern\": \"{NOISE_PATTERN}\",\n  \"handshakes\": {HANDSHAKES},\n  \
         \"handshake_us_median\": {{\"stream\": {{\"initiator\": {s_init:.1}, \"responder\": {s_resp:.1}}}, \
         \"datagram\": {{\"initiator\": {d_init:.1}, \"responder\": {d_resp:.1}}}}},\n  \
         \"handshake_bytes\": {{\"msg1\": {}, \"msg2\": {}, \"msg3\": {}}},\n  \
         \"seal_open_256B_frames_per_s\": {{\"stream\": {s_rate:.0}, \"datagram\": {d_rate:.0}}},\n  \
         \"overhead_bytes_per_frame\": {{\"stream\": {STREAM_OVERHEAD}, \"datagram\": {DATAGRAM_OVERHEAD}}},\n  \
         \"lora_200B_max_plaintext\": {}\n}}",
        HANDSHAKE_1_LEN,
        HANDSHAKE_2_LEN,
        HANDSHAKE_3_LEN,
        established(lora).0.max_plaintext()
    );
}
