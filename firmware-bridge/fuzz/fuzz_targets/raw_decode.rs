//! Cairn's cable framing fed arbitrary bytes in arbitrary pieces, both through the bare
//! `Decoder` and through the `RawCable` driver: never a panic; every payload the decoder
//! accepts respects the bound and re-encodes to bytes that decode to the same payload; the
//! driver's queued warnings stay bounded whatever the line holds.
//!
//! Input layout: byte 0 picks the bound (0..=255 payload bytes, so both the bound and the
//! escape paths are hit often), byte 1 the chunk size; the rest is the line.
#![no_main]

use cairn_firmware_bridge::raw::{encode, Decoder, RawCable, RawCableConfig, RawError};
use cairn_firmware_bridge::{BridgeEvent, Firmware};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, chunk, line @ ..] = data else {
        return;
    };
    let max = usize::from(*max);
    let chunk = usize::from(*chunk).max(1);

    let mut decoder = Decoder::new(max);
    for piece in line.chunks(chunk) {
        decoder.push(piece);
        while let Some(result) = decoder.next_frame() {
            match result {
                Ok(payload) => {
                    assert!(payload.len() <= max);
                    let mut again = Decoder::new(max);
                    again.push(&encode(&payload));
                    assert_eq!(again.next_frame(), Some(Ok(payload.clone())));
                    assert_eq!(again.next_frame(), None);
                }
                Err(RawError::FrameTooLong { max: reported }) => assert_eq!(reported, max),
                Err(_) => {}
            }
        }
    }

    let mut cable = RawCable::new(RawCableConfig { max_frame: max });
    cable.reset(0);
    let mut now = 0;
    for piece in line.chunks(chunk) {
        now += 1;
        cable.handle_serial(now, piece);
        if cable.poll_timeout().is_some() {
            let _ = cable.handle_timeout(now);
        }
        let _ = cable.send_frame(piece);
        let _ = cable.poll_serial();
    }
    let mut warnings = 0;
    while let Some(event) = cable.poll_event() {
        if let BridgeEvent::Warning(_) = event {
            warnings += 1;
        }
    }
    assert!(warnings <= 16, "{warnings} warnings queued");
});
