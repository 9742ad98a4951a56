//! The identity file parser, through its public entry points (`Identity::load` with and
//! without a passphrase, and `IdentityFileInfo::read`): the input is written, mode 0600, as
//! `identity.key` in a scratch home. The parser itself (`ParsedFile::parse`) is private.
//!
//! The selector byte (`sel & 3`) picks how the rest becomes a file:
//! 0. the bytes as they are;
//! 1. the bytes and their correct checksum (the checksum is unkeyed and public), so mutations
//!    reach everything behind it: lengths, protection scheme, KDF parameters, the seal;
//! 2. `"cairn-id" ‖ version 1 ‖ bytes ‖ checksum`;
//! 3. a genuine file (unsealed, or sealed with cheap parameters: `sel & 4`) with the input
//!    applied as edits (`offset(2) ‖ xor(1)` triples), its checksum fixed when `sel & 8`.
//!
//! Checks: never a panic; `read` and `load` agree (same keys, `kdf_params` set exactly when a
//! passphrase is required, no load succeeds where `read` fails); a sealed file asks for the
//! passphrase before any KDF work and refuses an empty one; a passphrase given for an unsealed
//! file changes nothing; an edited sealed file never unlocks, even with the right passphrase
//! and a fixed checksum; whatever loads re-encodes (unsealed) to exactly the bytes read, and
//! survives a sealed save and load with the same secrets.
//!
//! The Argon2 parameters come from the file (capped by the crate at 1 GiB, 64 passes, 16
//! lanes). Unlocking is attempted only when `memory_kib * iterations <= kdf_budget()`, or a
//! single input would take a minute; see the README for that finding.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use cairn_node::identity::{
    Identity, IdentityError, IdentityFileInfo, KdfParams, Protection, IDENTITY_FILE_NAME,
};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

use common::IDENTITY_CHECKSUM_CONTEXT as CHECKSUM;

const PASSPHRASE: &str = "correct horse";
/// KiB × passes of Argon2 a run may spend on one unlock attempt (64 KiB × 1 is ~0.1 ms).
/// `CAIRN_FUZZ_KDF_BUDGET` overrides it, to time what a file asks for (see the README).
fn kdf_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("CAIRN_FUZZ_KDF_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048)
    })
}

struct Fixture {
    home: PathBuf,
    again: PathBuf,
    /// The genuine files of `identity(1)`: unsealed, then sealed with cheap parameters.
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let home = common::scratch("identity-home");
        let again = common::scratch("identity-again");
        let me = common::identity(1);
        let file = |protection: Protection<'_>| {
            let dir = common::scratch("identity-seed");
            me.save_new(&dir, &protection, &mut common::rng(2))
                .expect("save a genuine file");
            let bytes = fs::read(dir.join(IDENTITY_FILE_NAME)).expect("read it back");
            fs::remove_dir_all(&dir).expect("clean up");
            bytes
        };
        let plain = file(Protection::None);
        let sealed = file(Protection::Passphrase {
            passphrase: PASSPHRASE,
            params: KdfParams::insecure_for_tests(),
        });
        Fixture {
            home,
            again,
            plain,
            sealed,
        }
    })
}

fn same_identity(a: &Identity, b: &Identity) -> bool {
    a.public_key() == b.public_key()
        && a.device_public_key() == b.device_public_key()
        && *a.device_static_secret() == *b.device_static_secret()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut genuine = None;
    let file = match sel & 3 {
        0 => rest.to_vec(),
        1 => common::with_file_checksum(CHECKSUM, rest),
        2 => {
            let mut content = b"cairn-id\x01".to_vec();
            content.extend_from_slice(rest);
            common::with_file_checksum(CHECKSUM, &content)
        }
        _ => {
            let base = if sel & 4 != 0 { &f.sealed } else { &f.plain };
            let mut file = base.clone();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % file.len();
                file[at] ^= edit[2];
            }
            if sel & 8 != 0 {
                common::fix_file_checksum(CHECKSUM, &mut file);
            }
            genuine = Some((base, sel & 4 != 0));
            file
        }
    };
    common::write_private(&f.home.join(IDENTITY_FILE_NAME), &file);

    let info = IdentityFileInfo::read(&f.home);
    let without = Identity::load(&f.home, None);
    common::trace(format_args!("read: {info:?}; load without passphrase: {without:?}"));

    let Ok(info) = info else {
        assert!(without.is_err(), "loaded a file that read refuses");
        return;
    };
    let with = match info.kdf_params {
        None => {
            // Unsealed: a passphrase is ignored.
            let with = Identity::load(&f.home, Some(PASSPHRASE));
            assert_eq!(with.is_ok(), without.is_ok(), "a passphrase changed an unsealed load");
            if let (Ok(a), Ok(b)) = (&with, &without) {
                assert!(same_identity(a, b));
            }
            without
        }
        Some(params) => {
            assert!(
                matches!(without, Err(IdentityError::PassphraseRequired)),
                "a sealed file must ask for the passphrase first: {without:?}"
            );
            assert!(
                matches!(
                    Identity::load(&f.home, Some("")),
                    Err(IdentityError::EmptyPassphrase)
                ),
                "an empty passphrase must be refused before any KDF work"
            );
            let cost = u64::from(params.memory_kib) * u64::from(params.iterations);
            if cost > kdf_budget() {
                common::trace(format_args!("not unlocking: {params:?} is over the budget"));
                return;
            }
            let with = Identity::load(&f.home, Some(PASSPHRASE));
            common::trace(format_args!("load with the passphrase: {with:?}"));
            with
        }
    };

    if let Some((base, sealed)) = genuine {
        if sealed && file != *base {
            assert!(with.is_err(), "an edited sealed file unlocked");
        }
        if file == *base {
            let me = with.as_ref().expect("a genuine file must load");
            assert!(same_identity(me, &common::identity(1)));
        }
    }
    let Ok(me) = with else {
        return;
    };
    assert_eq!(me.public_key(), info.identity, "read and load disagree");
    assert_eq!(me.device_public_key(), info.device, "read and load disagree");

    // Round trips: unsealed, the encoding is canonical; sealed, the secrets survive.
    let _ = fs::remove_file(f.again.join(IDENTITY_FILE_NAME));
    me.save_new(&f.again, &Protection::None, &mut common::rng(3))
        .expect("save unsealed");
    let written = fs::read(f.again.join(IDENTITY_FILE_NAME)).expect("read back");
    let back = Identity::load(&f.again, None).expect("load what was saved");
    assert!(same_identity(&back, &me), "unsealed round trip changed the identity");
    if info.kdf_params.is_none() {
        assert_eq!(written, file, "an accepted unsealed file must be canonical");
    }
    fs::remove_file(f.again.join(IDENTITY_FILE_NAME)).expect("remove");
    let sealed = Protection::Passphrase {
        passphrase: PASSPHRASE,
        params: KdfParams::insecure_for_tests(),
    };
    me.save_new(&f.again, &sealed, &mut common::rng(4))
        .expect("save sealed");
    let back = Identity::load(&f.again, Some(PASSPHRASE)).expect("unlock what was saved");
    assert!(same_identity(&back, &me), "sealed round trip changed the identity");
});
