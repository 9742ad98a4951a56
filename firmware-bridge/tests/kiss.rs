//! The KISS/RNode codec against what a user of a radio cares about: every frame that was sent
//! arrives intact however the serial port splits it, pinned bytes match what RNode firmware
//! expects, and garbage on the line is refused without a panic and without losing the next
//! good frame.

use cairn_firmware_bridge::kiss::{
    encode, Decoder, DecoderConfig, Frame, KissCommand, KissError, RadioState, RnodeCommand,
    RnodeError, DEFAULT_MAX_PAYLOAD_LEN, FEND, FESC, TFEND, TFESC,
};
use proptest::prelude::*;

fn decode_chunks(config: DecoderConfig, chunks: &[&[u8]]) -> Vec<Result<Frame, KissError>> {
    let mut decoder = Decoder::new(config);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(result) = decoder.next_frame() {
            out.push(result);
        }
    }
    out
}

fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, KissError>> {
    decode_chunks(DecoderConfig::default(), &[bytes])
}

// ---- golden vectors ----

#[test]
fn golden_data_frame_with_fend_and_fesc_inside() {
    let frame = Frame::data(0, vec![0x48, 0xC0, 0x49, 0xDB, 0xC0, 0xDB]);
    let bytes = encode(&frame);
    assert_eq!(
        hex(&bytes),
        "c0 00 48 db dc 49 db dd db dc db dd c0",
        "FEND and FESC inside the payload must be transposed"
    );
    assert_eq!(decode_all(&bytes), vec![Ok(frame)]);
}

#[test]
fn golden_data_frame_on_port_3() {
    let frame = Frame::data(3, b"AB".to_vec());
    assert_eq!(hex(&encode(&frame)), "c0 30 41 42 c0");
    assert_eq!(frame.port(), 3);
    assert_eq!(frame.kiss_command(), KissCommand::Data);
}

#[test]
fn golden_standard_kiss_commands() {
    assert_eq!(
        hex(&encode(&Frame::with_port(0, 0x01, vec![50]))),
        "c0 01 32 c0"
    );
    assert_eq!(
        Frame::new(0x01, vec![]).kiss_command(),
        KissCommand::TxDelay
    );
    assert_eq!(
        Frame::new(0x12, vec![]).kiss_command(),
        KissCommand::Persistence
    );
    assert_eq!(
        Frame::new(0x03, vec![]).kiss_command(),
        KissCommand::SlotTime
    );
    assert_eq!(Frame::new(0x04, vec![]).kiss_command(), KissCommand::TxTail);
    assert_eq!(
        Frame::new(0x05, vec![]).kiss_command(),
        KissCommand::FullDuplex
    );
    assert_eq!(
        Frame::new(0x06, vec![]).kiss_command(),
        KissCommand::SetHardware
    );
    assert_eq!(Frame::new(0xFF, vec![]).kiss_command(), KissCommand::Return);
    assert_eq!(hex(&encode(&Frame::new(0xFF, vec![]))), "c0 ff c0");
}

#[test]
fn golden_rnode_set_frequency_868_1_mhz() {
    let bytes = encode(&RnodeCommand::Frequency(868_100_000).to_frame());
    assert_eq!(hex(&bytes), "c0 01 33 be 27 a0 c0");
}

#[test]
fn golden_rnode_commands() {
    let cases: &[(RnodeCommand, &str)] = &[
        (RnodeCommand::Bandwidth(125_000), "c0 02 00 01 e8 48 c0"),
        (RnodeCommand::TxPower(17), "c0 03 11 c0"),
        (RnodeCommand::SpreadingFactor(8), "c0 04 08 c0"),
        (RnodeCommand::CodingRate(5), "c0 05 05 c0"),
        (RnodeCommand::RadioState(RadioState::On), "c0 06 01 c0"),
        (RnodeCommand::RadioState(RadioState::Off), "c0 06 00 c0"),
        (RnodeCommand::Detect(0x73), "c0 08 73 c0"),
        (RnodeCommand::Detect(0x46), "c0 08 46 c0"),
        (RnodeCommand::Ready(vec![0x01]), "c0 0f 01 c0"),
        (
            RnodeCommand::Statistics {
                command: 0x23,
                value: vec![0x9C],
            },
            "c0 23 9c c0",
        ),
        (RnodeCommand::Error(0x02), "c0 90 02 c0"),
        (RnodeCommand::Data(vec![0xC0]), "c0 00 db dc c0"),
        // A frequency whose value contains FEND must be escaped like any payload.
        (
            RnodeCommand::Frequency(0xC0DB_0000),
            "c0 01 db dc db dd 00 00 c0",
        ),
        (RnodeCommand::Other(0x50, vec![1, 0x3C]), "c0 50 01 3c c0"),
    ];
    for (command, expected) in cases {
        let bytes = encode(&command.to_frame());
        assert_eq!(&hex(&bytes), expected, "{command:?}");
        let decoded = decode_all(&bytes);
        let [Ok(frame)] = decoded.as_slice() else {
            panic!("{command:?} must decode to one frame, got {decoded:?}");
        };
        assert_eq!(RnodeCommand::from_frame(frame).as_ref(), Ok(command));
    }
}

#[test]
fn rnode_values_of_the_wrong_size_are_refused() {
    assert_eq!(
        RnodeCommand::from_frame(&Frame::new(0x01, vec![0x33, 0xBE, 0x27])),
        Err(RnodeError::WrongValueLength {
            command: 0x01,
            expected: 4,
            actual: 3
        })
    );
    assert_eq!(
        RnodeCommand::from_frame(&Frame::new(0x03, vec![])),
        Err(RnodeError::WrongValueLength {
            command: 0x03,
            expected: 1,
            actual: 0
        })
    );
    assert_eq!(
        RnodeCommand::from_frame(&Frame::new(0x06, vec![0x07])),
        Err(RnodeError::UnknownRadioState(0x07))
    );
}

// ---- refusing garbage, then recovering ----

#[test]
fn oversize_frame_is_refused_then_the_next_frame_decodes() {
    let config = DecoderConfig { max_payload_len: 8 };
    let mut bytes = encode(&Frame::data(0, vec![0x55; 9]));
    bytes.extend(encode(&Frame::data(0, vec![0xAA; 8])));
    assert_eq!(
        decode_chunks(config, &[&bytes]),
        vec![
            Err(KissError::FrameTooLong { max: 8 }),
            Ok(Frame::data(0, vec![0xAA; 8])),
        ]
    );
}

#[test]
fn default_bound_is_512_bytes_of_payload() {
    let mut bytes = encode(&Frame::data(0, vec![0x01; DEFAULT_MAX_PAYLOAD_LEN]));
    bytes.extend(encode(&Frame::data(
        0,
        vec![0x02; DEFAULT_MAX_PAYLOAD_LEN + 1],
    )));
    bytes.extend(encode(&Frame::data(0, b"after".to_vec())));
    assert_eq!(
        decode_all(&bytes),
        vec![
            Ok(Frame::data(0, vec![0x01; DEFAULT_MAX_PAYLOAD_LEN])),
            Err(KissError::FrameTooLong { max: 512 }),
            Ok(Frame::data(0, b"after".to_vec())),
        ]
    );
}

#[test]
fn a_megabyte_without_fend_yields_one_error_then_recovers() {
    let mut decoder = Decoder::default();
    decoder.push(&[FEND, 0x00]);
    decoder.push(&vec![0x41; 1 << 20]);
    assert_eq!(
        decoder.next_frame(),
        Some(Err(KissError::FrameTooLong { max: 512 }))
    );
    assert_eq!(decoder.next_frame(), None, "the rest is skipped until FEND");
    decoder.push(&encode(&Frame::data(0, b"ok".to_vec())));
    assert_eq!(
        decoder.next_frame(),
        Some(Ok(Frame::data(0, b"ok".to_vec())))
    );
}

#[test]
fn bad_escape_costs_only_that_frame() {
    let mut bytes = vec![FEND, 0x00, 0x41, FESC, 0x42, 0x43, FEND];
    bytes.extend(encode(&Frame::data(0, b"next".to_vec())));
    assert_eq!(
        decode_all(&bytes),
        vec![
            Err(KissError::BadEscape { byte: 0x42 }),
            Ok(Frame::data(0, b"next".to_vec())),
        ]
    );
}

#[test]
fn escape_cut_off_by_fend_still_lets_the_next_frame_through() {
    // FESC FEND: the FEND both ends the broken frame and opens the next one.
    let bytes = [FEND, 0x00, 0x41, FESC, FEND, 0x00, 0x42, FEND];
    assert_eq!(
        decode_all(&bytes),
        vec![
            Err(KissError::BadEscape { byte: FEND }),
            Ok(Frame::data(0, vec![0x42])),
        ]
    );
}

#[test]
fn repeated_fends_and_leading_noise_are_skipped() {
    let mut bytes = vec![0x13, 0x37, TFEND, TFESC, FESC, FEND, FEND, FEND];
    bytes.extend(encode(&Frame::data(0, b"x".to_vec())));
    bytes.extend([FEND, FEND]);
    bytes.extend(encode(&Frame::new(0x06, vec![0x01])));
    assert_eq!(
        decode_all(&bytes),
        vec![
            Ok(Frame::data(0, b"x".to_vec())),
            Ok(Frame::new(0x06, vec![0x01])),
        ]
    );
}

#[test]
fn a_frame_with_only_a_type_byte_is_a_frame() {
    assert_eq!(
        decode_all(&[FEND, 0x0F, FEND]),
        vec![Ok(Frame::new(0x0F, vec![]))]
    );
}

#[test]
fn shared_fend_between_frames() {
    // Many TNCs send one FEND between frames instead of two.
    let bytes = [FEND, 0x00, 0x01, FEND, 0x00, 0x02, FEND];
    assert_eq!(
        decode_all(&bytes),
        vec![Ok(Frame::data(0, vec![1])), Ok(Frame::data(0, vec![2]))]
    );
}

// ---- properties ----

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..=DEFAULT_MAX_PAYLOAD_LEN),
            // Payloads made mostly of the bytes that need escaping.
            prop::collection::vec(
                prop_oneof![
                    Just(FEND),
                    Just(FESC),
                    Just(TFEND),
                    Just(TFESC),
                    any::<u8>()
                ],
                0..64
            ),
        ],
    )
        .prop_map(|(type_byte, payload)| Frame::new(type_byte, payload))
}

/// Splits `bytes` at the given (sorted, deduplicated) cut points.
fn split_at_cuts(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.iter_mut().for_each(|cut| *cut %= bytes.len() + 1);
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}

proptest! {
    #[test]
    fn round_trip_any_frames_in_any_chunks(
        frames in prop::collection::vec(arb_frame(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        extra_fends in prop::collection::vec(0usize..3, 8),
    ) {
        let mut wire = Vec::new();
        for (frame, extra) in frames.iter().zip(extra_fends.iter().cycle()) {
            // Senders may pad with extra FENDs; they must not turn into frames.
            wire.extend(std::iter::repeat_n(FEND, *extra));
            wire.extend(encode(frame));
        }
        let chunks = split_at_cuts(&wire, cuts);
        let decoded = decode_chunks(DecoderConfig::default(), &chunks);
        let expected: Vec<_> = frames.into_iter().map(Ok).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn every_byte_value_round_trips(type_byte in any::<u8>(), rotate in 0usize..256) {
        let mut payload: Vec<u8> = (0..=255u8).collect();
        payload.rotate_left(rotate);
        let frame = Frame::new(type_byte, payload);
        prop_assert_eq!(decode_all(&encode(&frame)), vec![Ok(frame)]);
    }

    #[test]
    fn rnode_commands_round_trip(frame in arb_frame()) {
        if let Ok(command) = RnodeCommand::from_frame(&frame) {
            prop_assert_eq!(command.to_frame(), frame);
        }
    }

    #[test]
    fn garbage_never_panics_and_frames_stay_in_bounds(
        garbage in prop::collection::vec(
            prop_oneof![Just(FEND), Just(FESC), Just(TFEND), Just(TFESC), any::<u8>()],
            0..2048
        ),
        max in 0usize..64,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let config = DecoderConfig { max_payload_len: max };
        for result in decode_chunks(config, &split_at_cuts(&garbage, cuts)) {
            match result {
                Ok(frame) => {
                    prop_assert!(frame.payload.len() <= max);
                    // Whatever the decoder accepts re-encodes and decodes to itself.
                    prop_assert_eq!(
                        decode_chunks(config, &[&encode(&frame)]),
                        vec![Ok(frame)]
                    );
                }
                Err(KissError::FrameTooLong { max: reported }) => prop_assert_eq!(reported, max),
                Err(KissError::BadEscape { byte }) => {
                    prop_assert!(byte != TFEND && byte != TFESC);
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn good_frame_after_garbage_is_recovered(
        garbage in prop::collection::vec(any::<u8>(), 0..600),
        payload in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let frame = Frame::data(0, payload);
        let mut wire = garbage;
        wire.push(FEND); // the line is quiet at least one FEND before a good frame
        wire.extend(encode(&frame));
        let decoded = decode_all(&wire);
        prop_assert_eq!(decoded.last(), Some(&Ok(frame)));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
