//! Setting up nodes on one machine without the command line: what the demo and the LAN
//! benchmark (and anyone scripting a local mesh) need.

use std::path::Path;

use anyhow::Context;
use rand_core_06::OsRng;

use crate::app::AppDb;
use crate::contact::{ContactBook, DisplayName, Pairing};
use crate::home::{Config, Home};
use crate::identity::{Identity, Protection};
use crate::seal::{period_of, PairKeys};

/// What `cairn init --name NAME --network SECRET` does: a home with a config and a fresh
/// identity (no passphrase).
pub fn create_home(home: &Path, name: &str, network_secret: &str) -> anyhow::Result<Identity> {
    Home::at(home).save_config(&Config {
        display_name: name.to_owned(),
        network_key: Config::network_key_for(Some(network_secret)),
    })?;
    let identity = Identity::generate(&mut OsRng);
    identity.save_new(home, &Protection::None, &mut OsRng)?;
    Ok(identity)
}

/// One side of an in-person pairing: the home, its identity, and the name the *other* side
/// will be known by in this home.
#[derive(Debug, Clone, Copy)]
pub struct PairingSide<'a> {
    pub home: &'a Path,
    pub identity: &'a Identity,
    pub calls_peer: &'a str,
}

/// Two people pair in person: each phone scans the other's code, and the real pairing state
/// machines run with their messages handed across in memory, as a nearby link would carry
/// them. Both homes end up with the other as a contact verified in person, the sealing keys,
/// and a local name.
pub fn pair_in_person(a: PairingSide<'_>, b: PairingSide<'_>) -> anyhow::Result<()> {
    let name = |s: &PairingSide<'_>| -> anyhow::Result<DisplayName> {
        let config = Home::at(s.home).load_config()?;
        Ok(DisplayName::new(&config.display_name)?)
    };
    let mut at_a = Pairing::start(a.identity, name(&a)?, vec![], &mut OsRng)?;
    let mut at_b = Pairing::start(b.identity, name(&b)?, vec![], &mut OsRng)?;
    let (code_a, code_b) = (at_a.code().clone(), at_b.code().clone());
    at_a.handle_scanned_code(code_b)?;
    at_b.handle_scanned_code(code_a)?;
    for _ in 0..4 {
        while let Some(m) = at_a.poll_transmit() {
            at_b.handle_message(&m)?;
        }
        while let Some(m) = at_b.poll_transmit() {
            at_a.handle_message(&m)?;
        }
    }
    let today = period_of(super::shared::now_ms() / 1000);
    for (side, pairing) in [(a, &mut at_a), (b, &mut at_b)] {
        let paired = pairing.take_paired().context("pairing did not complete")?;
        let peer = paired.contact.identity();
        let keys = PairKeys::new(
            paired.root_secret.expose(),
            side.identity.public_key().as_bytes(),
            peer.as_bytes(),
            today,
        );
        let mut book = ContactBook::open(side.home, side.identity)?;
        let _added = book.add(paired.contact)?;
        book.set_pair_keys(&peer, &keys)?;
        AppDb::open(side.home, side.identity)?.set_contact_name(peer, side.calls_peer)?;
    }
    Ok(())
}
