//! # cairn-transports: links that carry Cairn frames
//!
//! Will hold the link layer for every bearer (LAN TCP with mDNS discovery, BLE, serial, and
//! in-memory links for tests) and the Noise session that secures any of them. Nothing is
//! implemented yet: the sync core (`cairn-sync`) is written against "an ordered channel of
//! frames of at most MTU bytes", which every link here will provide.

/// The Noise session that secures a hop over any link (pure state machine).
pub mod hop;

/// LAN links: mDNS discovery and TCP connections handed to the daemon (I/O edge, tokio).
pub mod lan;
pub mod link;
pub mod serial;
