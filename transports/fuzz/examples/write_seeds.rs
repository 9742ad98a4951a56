//! Writes the seed inputs of the link targets to `seeds/<target>/`, from scripts run through
//! the very harness the fuzz target uses, so recorded frames are the ones a real `FrameLink`
//! sends and the seeds reach a linked pair exchanging messages.
//!
//! From `transports/fuzz/`: `cargo run --release --example write_seeds`. It checks that each
//! script gets as deep as it should and fails otherwise; the output is deterministic.

use std::path::Path;

#[path = "../fuzz_targets/link_common.rs"]
#[allow(dead_code)]
mod link_common;

use link_common::{op, Harness, Record};

/// Setup bits (see `link_common.rs`).
const RADIO: u8 = 1;
const P_ABOVE: u8 = 2;
const SLOW_CABLE: u8 = 4;
const TWO_PEERS: u8 = 8;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Runs a `frame_link` input with recording on.
fn record(input: &[u8]) -> Record {
    let (&setup, mut rest) = input.split_first().unwrap();
    let mut h = Harness::new(setup, true);
    while h.step(&mut rest) {}
    h.record()
}

/// Both queues delivered in turn with time jumping to the next deadline: what a lossless
/// bearer does.
fn pump(script: &mut Vec<u8>, rounds: usize) {
    for _ in 0..rounds {
        for _ in 0..6 {
            script.extend_from_slice(&[op::TO_L, 0, op::TO_P, 0]);
        }
        script.extend_from_slice(&[op::TIME, 0]);
    }
}

/// Meet, then exchange a few messages of different sizes both ways.
fn meet_and_talk(setup: u8) -> Vec<u8> {
    let mut script = vec![setup];
    pump(&mut script, 20);
    for arg in [10, 100, 0x80 | 20, 0xC0 | 12] {
        script.extend_from_slice(&[op::SEND_L, arg, op::SEND_P, arg ^ 1]);
    }
    pump(&mut script, 30);
    script
}

/// The same input with every delivery to L replaced by the raw bytes delivered, so the
/// recorded frames stand in the input itself for the fuzzer to mutate.
fn as_raw(script: &[u8], record: &Record) -> Vec<u8> {
    let mut out = vec![script[0]];
    let mut delivered = record.to_l.iter().peekable();
    for (step, pair) in script[1..].chunks(2).enumerate() {
        if pair[0] == op::TO_L {
            if let Some((_, frame)) = delivered.next_if(|(s, _)| *s == step) {
                out.extend_from_slice(&[op::RAW, frame.len() as u8]);
                out.extend_from_slice(frame);
            }
            continue;
        }
        out.extend_from_slice(pair);
    }
    out
}

fn frame_link_seeds() -> Vec<Vec<u8>> {
    let mut p_frames = Vec::new();
    for (name, setup) in [
        ("cable_p_below", 0),
        ("cable_p_above", P_ABOVE),
        ("radio_p_below", RADIO),
        ("radio_p_above", RADIO | P_ABOVE),
        ("slow_cable", SLOW_CABLE),
        ("radio_two_peers_max", RADIO | TWO_PEERS),
    ] {
        let script = meet_and_talk(setup);
        let rec = record(&script);
        assert!(rec.linked, "{name}: no session");
        assert!(
            rec.l_got >= 4 && rec.p_got >= 4,
            "{name}: messages lost: {} {}",
            rec.l_got,
            rec.p_got
        );
        write("frame_link", name, &script);
        let raw = as_raw(&script, &rec);
        let again = record(&raw);
        assert!(
            again.linked && again.l_got == rec.l_got,
            "{name}: raw replay diverged"
        );
        write("frame_link", &format!("{name}_raw"), &raw);
        if setup & RADIO != 0 {
            p_frames.extend(rec.p_frames);
        }
    }

    // Linked, then strangers: beacons, a genuine message 1 from forged addresses, L's own
    // frames reflected, bit flips and replays of P's frames; then traffic again.
    let mut script = meet_and_talk(0);
    for a in [1u8, 2, 3, 200] {
        script.extend_from_slice(&[op::BEACON, 0, 0, a]);
        script.extend_from_slice(&[op::HANDSHAKE, 4, 0, a, 0]);
        script.extend_from_slice(&[op::REFLECT, a, 0, a]);
        script.extend_from_slice(&[op::FLIP, a, a]);
        script.extend_from_slice(&[op::REPLAY, a]);
        script.extend_from_slice(&[op::FORGE_SRC, a, 0, a]);
    }
    script.extend_from_slice(&[op::SEND_L, 77, op::SEND_P, 78]);
    pump(&mut script, 40);
    let rec = record(&script);
    assert!(
        rec.linked && rec.l_got >= 5 && rec.p_got >= 5,
        "strangers broke the link"
    );
    write("frame_link", "cable_strangers_after_link", &script);

    // A lossy bearer: every third frame to L dropped, every fourth repeated, some swapped.
    let mut script = vec![RADIO];
    for i in 0..400u32 {
        let how = match i % 12 {
            3 | 7 => 1,
            4 => 2,
            9 => 3,
            _ => 0,
        };
        script.extend_from_slice(&[op::TO_L, how, op::TO_P, how ^ (i as u8 & 1)]);
        script.extend_from_slice(&[op::TIME, 0]);
        if i % 40 == 20 {
            script.extend_from_slice(&[op::SEND_L, 0x85, op::SEND_P, 60]);
        }
    }
    let rec = record(&script);
    assert!(rec.linked, "lossy radio: no session");
    write("frame_link", "radio_lossy", &script);

    p_frames
}

fn link_frame_seeds(p_frames: &[Vec<u8>]) {
    write(
        "link_frame",
        "beacon_golden",
        &[0x10, 0x12, 0x34, 0xab, 0xcd],
    );
    write(
        "link_frame",
        "handshake_golden",
        &[0x02, 0x01, 0x02, 0x03, 0x04, 0xee, 0xff],
    );
    write(
        "link_frame",
        "transport_golden",
        &[0x81, 0x03, 0x04, 1, 2, 3, 9],
    );
    // P's first frame of each kind: a real beacon, handshake messages, transport frames.
    let mut seen = std::collections::BTreeSet::new();
    for frame in p_frames {
        let kind = match frame[0] {
            0x10 => "beacon",
            1 => "handshake_1",
            2 => "handshake_2",
            3 => "handshake_3",
            _ => "transport",
        };
        if seen.insert(kind) {
            write("link_frame", &format!("real_{kind}"), frame);
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

fn arq_stream_seeds() {
    // Opcodes of arq_stream.rs.
    const SEND_A: u8 = 0;
    const SEND_B: u8 = 1;
    const TX_A: u8 = 2;
    const TX_B: u8 = 3;
    const TO_B: u8 = 4;
    const TO_A: u8 = 6;
    const TIME: u8 = 8;
    const RAW: u8 = 9;
    const FLIP: u8 = 10;
    const ACK: u8 = 11;
    let exchange = |selector: u8, how: fn(usize) -> u8| {
        let mut s = vec![selector];
        for i in 0..12u8 {
            s.extend_from_slice(&[SEND_A, i * 21, SEND_B, 0x80 | i]);
        }
        for i in 0..200usize {
            s.extend_from_slice(&[TX_A, 7, TX_B, 7]);
            for _ in 0..4 {
                s.extend_from_slice(&[TO_B, how(i), TO_A, how(i + 1)]);
            }
            s.extend_from_slice(&[TIME, 0]);
        }
        s
    };
    write("arq_stream", "radio_lossless", &exchange(0, |_| 0));
    write("arq_stream", "fast_lossless", &exchange(1, |_| 0));
    write(
        "arq_stream",
        "radio_lossy",
        &exchange(0, |i| [0, 0, 1, 0, 2, 0, 3, 1][i % 8]),
    );
    write(
        "arq_stream",
        "fast_small_max_lossy",
        &exchange(3, |i| [0, 1, 0, 3, 0, 2][i % 6]),
    );
    // A message longer than the small limit, and one at MAX_MESSAGE.
    write(
        "arq_stream",
        "long_messages",
        &[
            1, SEND_A, 0xFF, SEND_A, 0xFB, TX_A, 7, TO_B, 0, TO_B, 0, TIME, 0,
        ],
    );
    // Hostile frames: a data frame, a bad varint, a forged SACK, a flipped frame of B's.
    let mut s = vec![2, SEND_B, 40, TX_B, 0];
    s.extend_from_slice(&[RAW, 5, 0x80, 0x00, 3, b'a', b'b']);
    s.extend_from_slice(&[RAW, 7, 0xC1, 0x00, 0xff, 0xff, 0xff, 0x7f, 1]);
    s.extend_from_slice(&[ACK, 5, 0xff, FLIP, 0, 3, TIME, 0, TX_A, 7]);
    write("arq_stream", "hostile_mix", &s);
}

fn main() {
    // `--trace FILE`: run one `frame_link` input and tell what happens.
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, file] = args.as_slice() {
        assert_eq!(flag, "--trace", "usage: write_seeds [--trace FILE]");
        let input = std::fs::read(file).unwrap();
        let (&setup, mut rest) = input.split_first().unwrap();
        let mut h = Harness::new(setup, false);
        h.trace = true;
        while h.step(&mut rest) {}
        return;
    }
    let p_frames = frame_link_seeds();
    link_frame_seeds(&p_frames);
    arq_stream_seeds();
    println!("seeds written");
}
