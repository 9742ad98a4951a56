//! The Meshtastic serial API fed arbitrary bytes in arbitrary pieces, through the bare framing
//! `Decoder`, the protobuf messages, the host driver and the virtual device: never a panic;
//! every frame the decoder accepts is within the 512-byte bound and re-encodes to bytes that
//! decode to the same frame; every protobuf that parses re-encodes canonically (encode, decode,
//! encode gives the same bytes); the host and the device take anything without panicking and
//! their output stays framed.
//!
//! Input layout: byte 0 picks the chunk size; the rest is the line. The seeds in
//! `seeds/meshtastic_decode/` are the golden vectors made with the official Python client
//! (`tests/vectors/meshtastic_vectors.txt`) with noise around them: a config download, a heard
//! packet after log text and an oversize header, the host's own writes (for the device), and
//! the device's complaints (routing nak, queue status, log record, reboot).
#![no_main]

use cairn_firmware_bridge::meshtastic::proto::{FromRadio, Message, ToRadio};
use cairn_firmware_bridge::meshtastic::{
    encode_frame, Decoder, MeshtasticDevice, MeshtasticHost, MAX_FRAME, MAX_PROTOBUF_LEN,
};
use cairn_firmware_bridge::{DeviceSide, Firmware};
use libfuzzer_sys::fuzz_target;

fn canonical<M: Message + Default>(frame: &[u8]) {
    if let Ok(message) = M::decode(frame) {
        let once = message.encode_to_vec();
        let again = M::decode(once.as_slice()).expect("our own encoding decodes");
        assert_eq!(again.encode_to_vec(), once);
    }
}

fn assert_framed(bytes: &[u8]) {
    let mut decoder = Decoder::new();
    decoder.push(bytes);
    let mut frames = 0;
    while let Some(result) = decoder.next_frame() {
        assert!(result.is_ok(), "our own output is always well framed");
        frames += 1;
    }
    assert!(frames > 0);
}

fuzz_target!(|data: &[u8]| {
    let [chunk_byte, line @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk_byte).max(1);

    let mut decoder = Decoder::new();
    let mut host = MeshtasticHost::new(u64::from(*chunk_byte));
    host.reset(0);
    let mut device = MeshtasticDevice::new(0x1a2b_3c4d);
    let mut now = 0;
    for piece in line.chunks(chunk) {
        now += 1;
        decoder.push(piece);
        while let Some(result) = decoder.next_frame() {
            let Ok(frame) = result else { continue };
            assert!(frame.len() <= MAX_PROTOBUF_LEN);
            let mut again = Decoder::new();
            again.push(&encode_frame(&frame).expect("within the bound"));
            assert_eq!(again.next_frame(), Some(Ok(frame.clone())));
            assert_eq!(again.next_frame(), None);
            canonical::<FromRadio>(&frame);
            canonical::<ToRadio>(&frame);
        }

        host.handle_serial(now, piece);
        while host.poll_event().is_some() {}
        if let Some(deadline) = host.poll_timeout() {
            if deadline <= now {
                let _ = host.handle_timeout(now);
            }
        }
        if host.is_ready() {
            let _ = host.send_frame(piece.get(..MAX_FRAME).unwrap_or(piece));
        }
        while let Some(bytes) = host.poll_serial() {
            assert_framed(&bytes);
        }

        device.handle_host(now, piece);
        while let Some(bytes) = device.poll_host() {
            assert_framed(&bytes);
        }
        while let Some(frame) = device.poll_transmit() {
            assert!(frame.len() <= MAX_FRAME);
            device.handle_received(&frame, -100, 5.0);
            device.handle_transmitted();
        }
    }
});
