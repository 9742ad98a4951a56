//! The Meshtastic serial API, carrying Cairn frames on `PRIVATE_APP`.
//!
//! A stock Meshtastic device (any of the cheap ESP32/nRF52 LoRa boards) speaks protobufs over
//! its USB serial port: the client writes `ToRadio` messages, the device answers with
//! `FromRadio`, each framed as `0x94 0xC3 <length u16 big-endian> <protobuf>` ([`framing`]).
//! Cairn uses such a device as a plain radio: every Cairn frame goes out as one broadcast
//! `MeshPacket` with `Data.portnum = PRIVATE_APP` (256) and `hop_limit = 0`, since Cairn does
//! its own store-and-forward and the frame is meant for the radios in range, not for
//! Meshtastic's flooding. Frames heard on `PRIVATE_APP` come back up the same way.
//!
//! * [`MeshtasticHost`] is the node's side ([`crate::Firmware`]): the `want_config_id`
//!   handshake, framing Cairn frames as packets, heartbeats.
//! * [`MeshtasticDevice`] is a virtual device ([`crate::DeviceSide`]) that answers like a stock
//!   one, for tests and the simulator (and well enough for the official Python client).
//! * [`proto`] holds the hand-written protobuf messages, [`framing`] the stream framing.
//!
//! Like the rest of this crate, everything here is a pure state machine: no port, no clock
//! (time comes in as `now_ms`), no OS randomness (ids come from a seed the caller gives).
//!
//! # What the device adds on air, and how large a frame can be
//!
//! The device does not send our bytes as they are. On air, a packet is a 16-byte header
//! (destination, sender, packet id, flags, channel hash, next hop, relay node; all clear text)
//! followed by the encoded `Data` protobuf, encrypted with the channel key (AES-CTR: same length,
//! no tag, no authentication). `Data` costs, around a Cairn frame of `n` bytes: 3 bytes for
//! `portnum = 256`, 2 or 3 for the payload's tag and length, and 2 for the `bitfield` that
//! current firmware adds to every packet it originates (since about 2.3, judging by its
//! source; not checked on hardware). A LoRa packet holds at most 255 bytes, so the firmware refuses (with a `TOO_LARGE` routing error) anything where
//! `16 + Data > 255`. [`on_air_len`] computes that total, for airtime.
//!
//! The upshot is [`MAX_FRAME`] = **231** bytes, not the 233 of Meshtastic's
//! `DATA_PAYLOAD_LEN` ([`DATA_PAYLOAD_LEN`]): that constant predates the `bitfield`, and with
//! `PRIVATE_APP` a current device would refuse a 232- or 233-byte frame (the golden vectors
//! pin the sizes: `Data` for 231 bytes encodes to 239, for 232 bytes to 240).
//!
//! Nothing about the channel encryption protects Cairn: the default channel key is public, and
//! even a private one is shared by everyone on the channel and unauthenticated. Cairn frames
//! carry their own end-to-end protection; the Meshtastic layer is only a bearer.
//!
//! ```
//! use cairn_firmware_bridge::meshtastic::{MeshtasticDevice, MeshtasticHost};
//! use cairn_firmware_bridge::{BridgeEvent, DeviceSide, Firmware};
//!
//! let mut host = MeshtasticHost::new(7); // seed for the handshake nonce and packet ids
//! let mut device = MeshtasticDevice::new(0x1a2b_3c4d);
//! host.reset(0);
//! // Shuttle the serial bytes both ways until the handshake settles.
//! for _ in 0..4 {
//!     while let Some(bytes) = host.poll_serial() {
//!         device.handle_host(0, &bytes);
//!     }
//!     while let Some(bytes) = device.poll_host() {
//!         host.handle_serial(0, &bytes);
//!     }
//! }
//! assert!(matches!(host.poll_event(), Some(BridgeEvent::Ready(_))));
//!
//! host.send_frame(b"a cairn frame").expect("ready, and small enough");
//! while let Some(bytes) = host.poll_serial() {
//!     device.handle_host(0, &bytes);
//! }
//! assert_eq!(device.poll_transmit(), Some(b"a cairn frame".to_vec()));
//! ```

pub mod device;
pub mod framing;
pub mod host;
pub mod proto;

pub use device::{DeviceConfig, DeviceStats, MeshtasticDevice};
pub use framing::{encode_frame, encode_message, Decoder, FramingError, MAX_PROTOBUF_LEN};
pub use host::{HostConfig, HostStats, MeshtasticHost};

use prost::Message;

use crate::LoraParams;

/// Node number meaning "everyone": Cairn frames are broadcast to the radios in range.
pub const BROADCAST: u32 = 0xFFFF_FFFF;

/// Bytes of the clear-text header a device puts before every packet on air.
pub const ON_AIR_HEADER_LEN: usize = 16;

/// Largest LoRa packet the firmware sends (`MAX_LORA_PAYLOAD_LEN`).
pub const MAX_LORA_PACKET_LEN: usize = 255;

/// Meshtastic's own `Constants.DATA_PAYLOAD_LEN`: the payload limit its clients check. Too
/// generous for `PRIVATE_APP` on current firmware; see [`MAX_FRAME`].
pub const DATA_PAYLOAD_LEN: usize = 233;

/// Largest Cairn frame a current device puts on air: the largest `n` with
/// [`on_air_len`]`(n) <= `[`MAX_LORA_PACKET_LEN`].
pub const MAX_FRAME: usize = 231;

/// The sender node number [`MeshtasticDevice`] reports for frames heard on the simulated air,
/// where the real sender is not known: `0x43414952` ("CAIR" in ASCII), which stands for "some
/// radio in range". Not 0, which would be more honest: the official Python client takes a
/// packet from node 0 for one it sent itself and drops it.
pub const UNKNOWN_SENDER: u32 = 0x4341_4952;

/// Bytes a Cairn frame of `frame_len` bytes takes on air once a current device has wrapped it:
/// the 16-byte header plus the encoded `Data { portnum: PRIVATE_APP, payload, bitfield }`
/// (AES-CTR adds nothing). LoRa's own preamble, header and CRC come on top, as for any frame.
#[must_use]
pub fn on_air_len(frame_len: usize) -> usize {
    ON_AIR_HEADER_LEN + private_app_data(vec![0; frame_len], Some(0)).encoded_len()
}

/// The radio parameters of Meshtastic's default preset, LongFast, in the EU868 region:
/// SF11, 250 kHz, CR 4/5 on 869.525 MHz (the region's single LongFast slot), 27 dBm (the
/// region's limit, which the firmware uses by default), 16 preamble symbols (the firmware's
/// fixed preamble, longer than LoRa's usual 8).
#[must_use]
pub const fn long_fast_eu868() -> LoraParams {
    LoraParams {
        frequency_hz: 869_525_000,
        bandwidth_hz: 250_000,
        spreading_factor: 11,
        coding_rate: 5,
        tx_power_dbm: 27,
        preamble_symbols: 16,
    }
}

/// `Data` carrying a Cairn frame.
fn private_app_data(payload: Vec<u8>, bitfield: Option<u32>) -> proto::Data {
    proto::Data {
        portnum: proto::PortNum::PrivateApp as i32,
        payload,
        bitfield,
        ..Default::default()
    }
}

/// A small deterministic generator for handshake nonces and packet ids (SplitMix64): the
/// caller seeds it, so runs are reproducible and nothing here reads the OS.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_u32(&mut self) -> u32 {
        // The high half: SplitMix64's best-mixed bits.
        (self.next_u64() >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_frame_is_the_largest_that_fits_a_lora_packet() {
        assert_eq!(on_air_len(MAX_FRAME), MAX_LORA_PACKET_LEN);
        assert!(on_air_len(MAX_FRAME + 1) > MAX_LORA_PACKET_LEN);
        assert!(on_air_len(DATA_PAYLOAD_LEN) > MAX_LORA_PACKET_LEN);
        // Small frames: 16 header + 3 portnum + 2 payload tag/length + 2 bitfield.
        assert_eq!(on_air_len(10), 16 + 3 + 2 + 10 + 2);
    }
}
