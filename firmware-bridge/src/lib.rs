//! # cairn-firmware-bridge: radio firmware over serial
//!
//! Will hold pure codecs for KISS/RNode and the Meshtastic serial API, and a virtual LoRa
//! radio for tests. So far it holds the KISS/RNode codec ([`kiss`]); the Meshtastic codec
//! and the virtual radio are not implemented yet.

pub mod kiss;
