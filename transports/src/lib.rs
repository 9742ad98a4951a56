//! # cairn-transports: links that carry Cairn frames
//!
//! The sync core (`cairn-sync`) is written against "an ordered channel of frames of at most
//! MTU bytes". This crate provides that channel over every bearer, and the Noise session
//! that secures each of them:
//!
//! * [`hop`]: the Noise session (pure), with stream framing for TCP and datagram framing
//!   for everything that moves frames;
//! * [`lan`]: mDNS discovery and TCP connections (the LAN edge, tokio);
//! * [`link`]: frame links (pure): cables and shared radio channels turned into secure,
//!   ordered message streams with every peer in reach;
//! * [`serial`]: serial ports kept open, and reopened when a device comes back (the serial
//!   edge, threads feeding tokio).
//!
//! Bluetooth LE is not here yet: the machines this is built on have no Bluetooth. It will
//! be one more frame bearer under [`link`], with writes of 20 to 512 bytes fragmented
//! below the link where they are smaller than a handshake message.

/// The Noise session that secures a hop over any link (pure state machine).
pub mod hop;

/// LAN links: mDNS discovery and TCP connections handed to the daemon (I/O edge, tokio).
pub mod lan;

pub mod link;

pub mod serial;
