//! Cairn's cable framing against what a user of a serial cable cares about: every frame sent
//! arrives intact however the port splits the bytes, the bytes on the wire are pinned, and
//! noise on the line (garbage, a flipped byte, a cut-off frame) costs only the frame it hit:
//! it is dropped and reported, never a panic, and the frames after it come through.

use cairn_firmware_bridge::raw::{
    encode, Decoder, RawCable, RawCableConfig, RawError, CABLE_VERSION, DEFAULT_MAX_FRAME, ESC,
    FLAG,
};
use cairn_firmware_bridge::{BridgeError, BridgeEvent, Firmware, Medium, RadioKind};
use proptest::prelude::*;

fn decode_chunks(max_frame: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, RawError>> {
    let mut decoder = Decoder::new(max_frame);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(result) = decoder.next_frame() {
            out.push(result);
        }
    }
    out
}

fn decode_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, RawError>> {
    decode_chunks(DEFAULT_MAX_FRAME, &[bytes])
}

fn received_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    decode_all(bytes)
        .into_iter()
        .filter_map(Result::ok)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn split_at_cuts(bytes: &[u8], cuts: Vec<usize>) -> Vec<&[u8]> {
    let mut cuts: Vec<usize> = cuts
        .into_iter()
        .map(|cut| cut % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// A cable driver that has been reset, with its Ready event taken.
fn ready_cable(config: RawCableConfig) -> RawCable {
    let mut cable = RawCable::new(config);
    cable.reset(0);
    match cable.poll_event() {
        Some(BridgeEvent::Ready(info)) => assert_eq!(info.max_frame, config.max_frame),
        other => panic!("expected Ready after reset, got {other:?}"),
    }
    cable
}

fn events(cable: &mut RawCable) -> Vec<BridgeEvent> {
    std::iter::from_fn(|| cable.poll_event()).collect()
}

// ---- golden vectors ----

#[test]
fn golden_short_payload() {
    // FLAG, version 1, "hi", CRC-32C(01 68 69) = 0xC1D99F14 little-endian, FLAG.
    assert_eq!(hex(&encode(b"hi")), "7e 01 68 69 14 9f d9 c1 7e");
    assert_eq!(decode_all(&encode(b"hi")), vec![Ok(b"hi".to_vec())]);
}

#[test]
fn golden_empty_payload() {
    assert_eq!(hex(&encode(b"")), "7e 01 52 d0 16 a0 7e");
    assert_eq!(decode_all(&encode(b"")), vec![Ok(Vec::new())]);
}

#[test]
fn golden_text_payload() {
    assert_eq!(
        hex(&encode(b"Cairn")),
        "7e 01 43 61 69 72 6e 47 33 2d 88 7e"
    );
}

#[test]
fn golden_flag_and_escape_in_payload_are_stuffed() {
    assert_eq!(
        hex(&encode(&[FLAG, ESC])),
        "7e 01 7d 5e 7d 5d d7 6f 17 40 7e",
        "0x7E and 0x7D inside a frame must be sent as 7D 5E and 7D 5D"
    );
    assert_eq!(decode_all(&encode(&[FLAG, ESC])), vec![Ok(vec![FLAG, ESC])]);
}

#[test]
fn golden_flag_in_checksum_is_stuffed_too() {
    // CRC-32C(01 00 c9) = 0x7E1ACC0C: its last byte on the wire is a flag value.
    assert_eq!(hex(&encode(&[0x00, 0xC9])), "7e 01 00 c9 0c cc 1a 7d 5e 7e");
    assert_eq!(
        decode_all(&encode(&[0x00, 0xC9])),
        vec![Ok(vec![0x00, 0xC9])]
    );
}

// ---- the decoder's refusals ----

#[test]
fn a_flipped_bit_is_caught_and_the_next_frame_arrives() {
    let mut wire = encode(b"first frame");
    wire[4] ^= 0x01;
    wire.extend(encode(b"second"));
    let decoded = decode_all(&wire);
    assert!(
        matches!(decoded[0], Err(RawError::BadChecksum { .. })),
        "{decoded:?}"
    );
    assert_eq!(decoded[1..], [Ok(b"second".to_vec())]);
}

#[test]
fn a_truncated_frame_is_dropped_and_the_next_arrives() {
    let first = encode(b"this one is cut off");
    let mut wire = first[..8].to_vec();
    wire.extend(encode(b"whole"));
    let decoded = decode_all(&wire);
    assert_eq!(decoded.len(), 2, "{decoded:?}");
    assert!(decoded[0].is_err());
    assert_eq!(decoded[1], Ok(b"whole".to_vec()));
}

#[test]
fn fragments_too_short_for_a_checksum_are_refused() {
    assert_eq!(
        decode_all(&[FLAG, 0x01, 0x02, FLAG]),
        vec![Err(RawError::TooShort { len: 2 })]
    );
}

#[test]
fn oversize_frame_is_refused_then_decoder_resyncs() {
    let mut wire = encode(&[0x55; 40]);
    wire.extend(encode(b"ok"));
    let decoded = decode_chunks(16, &[&wire]);
    assert_eq!(
        decoded,
        vec![Err(RawError::FrameTooLong { max: 16 }), Ok(b"ok".to_vec())]
    );
}

#[test]
fn the_bound_is_exact() {
    let at_bound = vec![0x11; 16];
    assert_eq!(decode_chunks(16, &[&encode(&at_bound)]), vec![Ok(at_bound)]);
    assert_eq!(
        decode_chunks(16, &[&encode(&[0x11; 17])]),
        vec![Err(RawError::FrameTooLong { max: 16 })]
    );
}

#[test]
fn another_version_is_recognised_not_mistaken_for_noise() {
    let wire = frame_with_version(2, b"from the future");
    assert_eq!(
        decode_all(&wire),
        vec![Err(RawError::UnknownVersion { version: 2 })]
    );
}

/// A well-formed frame with another version byte, as a future Cairn would send it.
fn frame_with_version(version: u8, payload: &[u8]) -> Vec<u8> {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut content = vec![version];
    content.extend_from_slice(payload);
    let checksum = crc.checksum(&content).to_le_bytes();
    content.extend_from_slice(&checksum);
    let mut wire = vec![FLAG];
    for byte in content {
        if byte == FLAG || byte == ESC {
            wire.extend([ESC, byte ^ 0x20]);
        } else {
            wire.push(byte);
        }
    }
    wire.push(FLAG);
    wire
}

#[test]
fn other_serial_protocols_are_dropped_not_delivered() {
    // A KISS frame, a Meshtastic frame, an unchecked HDLC frame as Reticulum sends it, and a
    // boot banner: none of them may reach the layer above.
    let mut wire = vec![0xC0, 0x00, 0x41, 0x42, 0xC0];
    wire.extend([0x94, 0xC3, 0x00, 0x02, 0x08, 0x01]);
    wire.extend([FLAG, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, FLAG]);
    wire.extend(b"ESP-ROM:esp32s3-20210327\r\n");
    wire.extend(encode(b"real"));
    assert_eq!(received_frames(&wire), vec![b"real".to_vec()]);
}

// ---- the driver ----

#[test]
fn cable_is_ready_at_reset_and_not_before() {
    let mut cable = RawCable::default();
    assert_eq!(cable.kind(), RadioKind::Raw);
    assert_eq!(cable.medium(), Medium::Cable);
    assert_eq!(cable.max_frame(), DEFAULT_MAX_FRAME);
    assert!(!cable.is_ready());
    assert_eq!(cable.send_frame(b"early"), Err(BridgeError::NotReady));
    cable.reset(5);
    assert!(cable.is_ready());
    match cable.poll_event() {
        Some(BridgeEvent::Ready(info)) => {
            assert_eq!(info.firmware, "Cairn cable framing v1");
            assert_eq!(info.lora, None);
            assert_eq!(info.max_frame, DEFAULT_MAX_FRAME);
        }
        other => panic!("expected Ready, got {other:?}"),
    }
    assert_eq!(cable.poll_timeout(), None);
    assert_eq!(cable.handle_timeout(10), Ok(()));
}

#[test]
fn two_cables_exchange_frames_both_ways() {
    let mut a = ready_cable(RawCableConfig::default());
    let mut b = ready_cable(RawCableConfig::default());
    a.send_frame(b"ping").expect("a is ready");
    a.send_frame(&[FLAG, ESC, 0x00]).expect("a is ready");
    b.send_frame(b"pong").expect("b is ready");
    let a_to_b = a.poll_serial().expect("a has bytes to write");
    assert_eq!(a.poll_serial(), None);
    // Deliver one byte at a time: the port may return any split.
    for byte in &a_to_b {
        b.handle_serial(1, std::slice::from_ref(byte));
    }
    a.handle_serial(1, &b.poll_serial().expect("b has bytes to write"));
    let received = |events: Vec<BridgeEvent>| -> Vec<Vec<u8>> {
        events
            .into_iter()
            .map(|event| match event {
                BridgeEvent::Received {
                    frame,
                    rssi_dbm: None,
                    snr_db: None,
                } => frame,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    assert_eq!(
        received(events(&mut b)),
        vec![b"ping".to_vec(), vec![FLAG, ESC, 0x00]]
    );
    assert_eq!(received(events(&mut a)), vec![b"pong".to_vec()]);
}

#[test]
fn cable_refuses_frames_over_its_bound() {
    let mut cable = ready_cable(RawCableConfig { max_frame: 8 });
    assert_eq!(
        cable.send_frame(&[0; 9]),
        Err(BridgeError::FrameTooLarge { len: 9, max: 8 })
    );
    assert_eq!(cable.send_frame(&[0; 8]), Ok(()));
}

#[test]
fn garbled_frames_are_counted_and_warned_and_later_frames_arrive() {
    let mut cable = ready_cable(RawCableConfig::default());
    let mut wire = b"noise before the first flag".to_vec();
    wire.extend(encode(b"one"));
    let mut bad = encode(b"two");
    bad[3] ^= 0x40;
    wire.extend(bad);
    wire.extend([FLAG, 0x13, 0x37, FLAG]);
    wire.extend(encode(b"three"));
    cable.handle_serial(1, &wire);
    let events = events(&mut cable);
    let frames: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            BridgeEvent::Received { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect();
    let warnings: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            BridgeEvent::Warning(text) => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(frames, vec![b"one".to_vec(), b"three".to_vec()]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("checksum"), "{warnings:?}");
    assert!(warnings[0].contains("--radio raw"), "{warnings:?}");
    assert!(warnings[1].contains("too short"), "{warnings:?}");
    assert_eq!(cable.dropped_frames(), 2);
    assert_eq!(cable.poll_timeout(), None, "noise is not fatal");
}

#[test]
fn a_flood_of_garbage_cannot_grow_the_warning_queue() {
    let mut cable = ready_cable(RawCableConfig::default());
    let flood: Vec<u8> = (0..10_000u32)
        .flat_map(|i| [FLAG, (i % 0x7C) as u8])
        .collect();
    cable.handle_serial(1, &flood);
    let events = events(&mut cable);
    assert!(events.len() <= 16, "{} events queued", events.len());
    assert_eq!(cable.dropped_frames(), 9_999);
    // Once drained, the next warning says how many were not reported one by one.
    cable.handle_serial(2, &[0x01, 0x02, FLAG]);
    match cable.poll_event() {
        Some(BridgeEvent::Warning(text)) => {
            assert!(text.contains("more were not reported"), "{text}")
        }
        other => panic!("expected a warning, got {other:?}"),
    }
}

#[test]
fn a_peer_on_another_cable_version_stops_the_link_loudly() {
    let mut cable = ready_cable(RawCableConfig::default());
    let mut wire = frame_with_version(CABLE_VERSION + 1, b"hello");
    wire.extend(encode(b"after"));
    cable.handle_serial(7, &wire);
    assert!(!cable.is_ready());
    assert_eq!(cable.poll_timeout(), Some(7), "the failure is due at once");
    match cable.handle_timeout(8) {
        Err(BridgeError::Device(text)) => {
            assert!(text.contains("version 2"), "{text}");
            assert!(text.contains("version 1"), "{text}");
        }
        other => panic!("expected a device error, got {other:?}"),
    }
    assert_eq!(cable.poll_timeout(), None);
    assert_eq!(cable.send_frame(b"x"), Err(BridgeError::NotReady));
    // Reset (after the user fixed it, or to retry) makes it usable again.
    cable.reset(9);
    assert!(cable.is_ready());
}

#[test]
fn reset_forgets_a_partial_frame() {
    let mut cable = ready_cable(RawCableConfig::default());
    let wire = encode(b"interrupted by an unplug");
    cable.handle_serial(1, &wire[..10]);
    cable.reset(2);
    assert!(matches!(cable.poll_event(), Some(BridgeEvent::Ready(_))));
    cable.handle_serial(3, &wire[10..]);
    cable.handle_serial(3, &encode(b"fresh"));
    let events = events(&mut cable);
    assert!(
        events.contains(&BridgeEvent::Received {
            frame: b"fresh".to_vec(),
            rssi_dbm: None,
            snr_db: None
        }),
        "{events:?}"
    );
}

// ---- properties ----

/// Noise injected into a stream of frames.
#[derive(Debug, Clone)]
enum Damage {
    /// Random bytes inserted at this offset within the target frame's encoding.
    Insert(usize, Vec<u8>),
    /// This byte of the target frame's encoding XORed with a non-zero mask.
    Flip(usize, u8),
    /// The target frame's encoding cut off after this many bytes.
    Truncate(usize),
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (
            any::<usize>(),
            prop::collection::vec(prop_oneof![Just(FLAG), Just(ESC), any::<u8>()], 1..64)
        )
            .prop_map(|(at, noise)| Damage::Insert(at, noise)),
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        any::<usize>().prop_map(Damage::Truncate),
    ]
}

proptest! {
    #[test]
    fn round_trip_any_payloads_in_any_chunks(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        extra_flags in prop::collection::vec(0usize..3, 8),
    ) {
        let mut wire = Vec::new();
        for (payload, extra) in payloads.iter().zip(extra_flags.iter().cycle()) {
            // Extra flags between frames (idle fill) must not turn into frames.
            wire.extend(std::iter::repeat_n(FLAG, *extra));
            wire.extend(encode(payload));
        }
        let decoded = decode_chunks(DEFAULT_MAX_FRAME, &split_at_cuts(&wire, cuts));
        let expected: Vec<_> = payloads.into_iter().map(Ok).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn every_byte_value_round_trips(rotate in 0usize..256) {
        let mut payload: Vec<u8> = (0..=255u8).collect();
        payload.rotate_left(rotate);
        prop_assert_eq!(decode_all(&encode(&payload)), vec![Ok(payload)]);
    }

    #[test]
    fn random_noise_never_panics_and_accepted_frames_stay_in_bounds(
        noise in prop::collection::vec(
            prop_oneof![Just(FLAG), Just(ESC), Just(CABLE_VERSION), any::<u8>()],
            0..4096
        ),
        max in 0usize..64,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        for result in decode_chunks(max, &split_at_cuts(&noise, cuts)) {
            match result {
                Ok(payload) => {
                    prop_assert!(payload.len() <= max);
                    prop_assert_eq!(decode_chunks(max, &[&encode(&payload)]), vec![Ok(payload)]);
                }
                Err(RawError::FrameTooLong { max: reported }) => prop_assert_eq!(reported, max),
                Err(_) => {}
            }
        }
        // The driver over the same noise: no panic, and whatever it reports is bounded.
        let mut cable = ready_cable(RawCableConfig { max_frame: max });
        cable.handle_serial(1, &noise);
        let _ = cable.handle_timeout(2);
        prop_assert!(events(&mut cable).len() <= noise.len() / 2 + 16);
    }

    #[test]
    fn frames_after_injected_noise_still_arrive(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 2..8),
        target in any::<prop::sample::Index>(),
        damage in arb_damage(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let target = target.index(payloads.len());
        let mut wire = Vec::new();
        for (index, payload) in payloads.iter().enumerate() {
            let mut bytes = encode(payload);
            if index == target {
                match &damage {
                    Damage::Insert(at, noise) => {
                        let at = at % (bytes.len() + 1);
                        bytes.splice(at..at, noise.iter().copied());
                    }
                    Damage::Flip(at, mask) => {
                        let at = at % bytes.len();
                        bytes[at] ^= mask;
                    }
                    Damage::Truncate(keep) => bytes.truncate(keep % bytes.len()),
                }
            }
            wire.extend(bytes);
        }
        let mut cable = ready_cable(RawCableConfig::default());
        for chunk in split_at_cuts(&wire, cuts) {
            cable.handle_serial(1, chunk);
        }
        prop_assert_eq!(cable.handle_timeout(2), Ok(()));
        let received: Vec<Vec<u8>> = events(&mut cable)
            .into_iter()
            .filter_map(|event| match event {
                BridgeEvent::Received { frame, .. } => Some(frame),
                _ => None,
            })
            .collect();
        let all = payloads.clone();
        let mut without_target = payloads.clone();
        without_target.remove(target);
        // Every frame the noise did not touch arrives, in order; the damaged one arrives
        // only if the noise happened not to change it (a flag inserted next to a flag).
        prop_assert!(
            received == without_target || received == all,
            "received {:?}, sent {:?}, damaged #{}", received, payloads, target
        );
    }
}
