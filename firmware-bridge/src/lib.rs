//! # cairn-firmware-bridge: radio firmware over serial
//!
//! Will hold pure codecs for KISS/RNode and the Meshtastic serial API, and a virtual LoRa
//! radio for tests. Nothing is implemented yet.
