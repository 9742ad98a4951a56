//! The KISS `Decoder` fed arbitrary bytes in arbitrary pieces: it must never panic, every
//! frame it accepts must respect the bound and re-encode to bytes that decode to the same
//! frame, and every accepted frame must read as an RNode command or a typed error (never a
//! panic).
//!
//! Input layout: byte 0 picks the bound (0..=255 payload bytes, so both the bound and the
//! escape paths are hit often), byte 1 the chunk size; the rest is the line.
#![no_main]

use cairn_firmware_bridge::kiss::{encode, Decoder, DecoderConfig, RnodeCommand};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, chunk, line @ ..] = data else {
        return;
    };
    let config = DecoderConfig {
        max_payload_len: usize::from(*max),
    };
    let chunk = usize::from(*chunk).max(1);
    let mut decoder = Decoder::new(config);
    for piece in line.chunks(chunk) {
        decoder.push(piece);
        while let Some(result) = decoder.next_frame() {
            let Ok(frame) = result else { continue };
            assert!(frame.payload.len() <= config.max_payload_len);
            let mut again = Decoder::new(config);
            again.push(&encode(&frame));
            assert_eq!(again.next_frame(), Some(Ok(frame.clone())));
            assert_eq!(again.next_frame(), None);
            if let Ok(command) = RnodeCommand::from_frame(&frame) {
                assert_eq!(command.to_frame(), frame);
            }
        }
    }
});
