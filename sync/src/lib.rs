//! # cairn-sync: the store-and-forward protocol
//!
//! The layer that decides *what* two Cairn nodes exchange when they meet. Pure protocol
//! code: no clock, no sockets, no tasks, no unseeded randomness (time and seeds come in as
//! arguments). The only I/O in this crate is the LMDB store behind the [`store::Store`] trait.

pub mod codec;
pub mod compact;
pub mod envelope;
pub mod policy;
pub mod recon;
pub mod session;
pub mod store;
pub mod time;
pub mod wire;
