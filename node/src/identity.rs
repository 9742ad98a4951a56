//! Who this node is: a person's long-term identity key and this device's Noise key.
//!
//! A person is their **Ed25519 identity key**: contacts verify it once (in person, or by reading
//! a safety code aloud) and from then on trust whatever it signs. A device talks over Noise with
//! an **X25519 static key**, which the identity signs (see [`device_signature_message`]), so a
//! peer that has verified the identity can accept the device without a second verification.
//! Keeping the two apart lets a device key be replaced (new phone, restored backup) while the
//! identity, and every contact's verification of it, stays.
//!
//! Both secrets live in one file, `identity.key` in the node's home directory, written
//! atomically with mode 0600 and refused when other users could read it. The file may be sealed
//! with a passphrase (Argon2id, then ChaCha20-Poly1305), so a seized or stolen disk does not
//! give away who the user is to anyone who reads it.
//!
//! This module does file I/O only in [`Identity::save_new`], [`Identity::load`],
//! [`IdentityFileInfo::read`] and [`change_protection`]; everything else is pure. Randomness
//! always comes from the caller, so tests can be deterministic; only the CLI passes `OsRng`.
//!
//! ```
//! use cairn_node::identity::{Identity, KdfParams, Protection, safety_code};
//! # use rand_core_06::SeedableRng;
//! # let mut rng = rand_chacha_03::ChaCha20Rng::seed_from_u64(1);
//! let home = tempfile::tempdir().unwrap();
//! let me = Identity::generate(&mut rng);
//! // Tests use cheap parameters; real users get `KdfParams::default()`.
//! let sealed = Protection::Passphrase { passphrase: "correct horse", params: KdfParams::insecure_for_tests() };
//! me.save_new(home.path(), &sealed, &mut rng).unwrap();
//! let again = Identity::load(home.path(), Some("correct horse")).unwrap();
//! assert_eq!(again.public_key(), me.public_key());
//! println!("my fingerprint: {}", me.public_key().fingerprint());
//! let friend = Identity::generate(&mut rng);
//! println!("read aloud: {}", safety_code(&me.public_key(), &friend.public_key()));
//! ```

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core_06::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey as X25519PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Name of the identity file inside the node's home directory.
pub const IDENTITY_FILE_NAME: &str = "identity.key";

/// Domain label of the device-key signature. Shared byte for byte with the Noise layer
/// (`cairn_transports::hop::DeviceCredential`): changing it breaks every existing credential.
pub const DEVICE_SIGNATURE_LABEL: &[u8] = b"cairn device key v1";

const FINGERPRINT_CONTEXT: &str = "cairn 2026 fingerprint";
const SAFETY_CODE_CONTEXT: &str = "cairn 2026 safety code";
const FILE_CHECKSUM_CONTEXT: &str = "cairn 2026 identity file checksum";

/// The identity file starts with this, so a wrong file is named as such instead of "corrupt".
const FILE_MAGIC: &[u8; 8] = b"cairn-id";
const FILE_VERSION: u8 = 1;
const PROTECTION_NONE: u8 = 0;
const PROTECTION_ARGON2ID_CHACHA20POLY1305: u8 = 1;
/// magic, version, protection, identity public key, device public key.
const COMMON_HEADER_LEN: usize = 8 + 1 + 1 + 32 + 32;
/// memory KiB, iterations, parallelism (u32 LE each), salt, nonce.
const SEAL_PARAMS_LEN: usize = 4 + 4 + 4 + SALT_LEN + NONCE_LEN;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Identity secret key and device static secret key.
const SECRETS_LEN: usize = 64;
const CHECKSUM_LEN: usize = 32;
const PLAIN_FILE_LEN: usize = COMMON_HEADER_LEN + SECRETS_LEN + CHECKSUM_LEN;
const SEALED_FILE_LEN: usize =
    COMMON_HEADER_LEN + SEAL_PARAMS_LEN + SECRETS_LEN + TAG_LEN + CHECKSUM_LEN;
/// Read at most this much: a longer file is not ours, and we never allocate what a file asks.
const MAX_FILE_LEN: u64 = 4096;

/// Upper bounds for Argon2 parameters read from a file. A flipped bit, or a hostile file, must
/// not make an unlock allocate more than a Raspberry Pi has or run for minutes (the fuzzer
/// found 1 GiB x 64 passes, the old cap, took over a minute): at most 256 MiB, and at most
/// four times the default's total work (memory x passes).
const MAX_KDF_MEMORY_KIB: u32 = 256 * 1024;
const MAX_KDF_ITERATIONS: u32 = 64;
const MAX_KDF_PARALLELISM: u32 = 16;
const MAX_KDF_COST_KIB_PASSES: u64 = 4 * 64 * 1024 * 3;

/// Why an identity could not be created, loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("no identity in {}: create one first", .path.display())]
    NotFound { path: PathBuf },
    #[error(
        "an identity already exists at {}; refusing to overwrite it (it is who you are to \
         your contacts)",
        .path.display()
    )]
    AlreadyExists { path: PathBuf },
    #[error("could not access {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} can be read by other users (mode {mode:03o}); run `chmod 600 {}` and try again",
        .path.display(), .path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{} is not a Cairn identity file", .path.display())]
    NotAnIdentityFile { path: PathBuf },
    #[error(
        "{} was written by a newer version of Cairn (identity format {version}); update Cairn",
        .path.display()
    )]
    UnsupportedVersion { path: PathBuf, version: u8 },
    #[error("{} is corrupt ({reason}); restore it from a backup", .path.display())]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error("this identity is protected by a passphrase; enter it to unlock")]
    PassphraseRequired,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("an empty passphrase protects nothing; choose no passphrase instead")]
    EmptyPassphrase,
    #[error("key derivation parameters refused: {reason}")]
    InvalidKdfParams { reason: String },
    #[error("the device key is not signed by this identity")]
    InvalidDeviceSignature,
    #[error("not a valid identity public key")]
    InvalidPublicKey,
}

/// A person's public identity: the Ed25519 key contacts verify.
///
/// Holding one proves nothing; it is checked to be a valid curve point when parsed so that
/// every later signature check has a real key to check against.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityPublicKey([u8; 32]);

impl IdentityPublicKey {
    /// Parses a public key, refusing bytes that are not a point on the curve.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::InvalidPublicKey)?;
        Ok(Self(bytes))
    }

    /// A key this node checked when it first stored it (its own databases): skips the curve
    /// point decompression, which was a sixth of the CPU of reading messages back in bulk.
    /// Signatures are never verified against such a key without [`Self::from_bytes`].
    pub(crate) fn from_stored_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short, stable name for this identity to show people (not for verification by
    /// itself: compare a [`SafetyCode`] or pair in person for that).
    pub fn fingerprint(&self) -> Fingerprint {
        let hash = blake3::derive_key(FINGERPRINT_CONTEXT, &self.0);
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&hash[..20]);
        Fingerprint(bytes)
    }

    /// Checks that this identity signed `device` with [`device_signature_message`].
    ///
    /// Uses strict verification (no small-order keys, canonical signatures) so a credential
    /// has exactly one valid encoding.
    pub fn verify_device(
        &self,
        device: &DevicePublicKey,
        signature: &[u8; 64],
    ) -> Result<(), IdentityError> {
        let key =
            VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidDeviceSignature)?;
        let message = device_signature_message(self, device);
        key.verify_strict(&message, &Signature::from_bytes(signature))
            .map_err(|_| IdentityError::InvalidDeviceSignature)
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({})", self.fingerprint())
    }
}

/// This device's X25519 static public key, the one its Noise sessions use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePublicKey([u8; 32]);

impl DevicePublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DevicePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevicePublicKey(")?;
        write_hex(f, &self.0[..8])?;
        f.write_str("..)")
    }
}

/// The exact bytes the identity signs to vouch for a device key:
/// `"cairn device key v1" || identity_public(32) || device_static_public(32)`.
///
/// The identity key is included so a signature cannot be replayed as if another identity had
/// made it, and the label keeps the identity key's signatures single-purpose.
pub fn device_signature_message(
    identity: &IdentityPublicKey,
    device: &DevicePublicKey,
) -> [u8; DEVICE_SIGNATURE_LABEL.len() + 64] {
    let mut message = [0u8; DEVICE_SIGNATURE_LABEL.len() + 64];
    let (label, rest) = message.split_at_mut(DEVICE_SIGNATURE_LABEL.len());
    label.copy_from_slice(DEVICE_SIGNATURE_LABEL);
    rest[..32].copy_from_slice(&identity.0);
    rest[32..].copy_from_slice(&device.0);
    message
}

/// A person's identity key and this device's static key, with their secrets.
///
/// Secrets are wiped from memory on drop (both dalek types zeroize themselves) and never
/// appear in `Debug` output.
pub struct Identity {
    identity: SigningKey,
    device: StaticSecret,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.public_key().fingerprint())
            .field("device", &self.device_public_key())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Creates a new identity and device key from `rng` (the OS RNG in production).
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let identity = SigningKey::generate(rng);
        let device = StaticSecret::random_from_rng(rng);
        Self { identity, device }
    }

    /// Replaces this device's static key, keeping the identity: for a new or reset device.
    /// Contacts see a changed device key and are asked to accept it (see the contact book).
    pub fn regenerate_device_key(&mut self, rng: &mut (impl RngCore + CryptoRng)) {
        self.device = StaticSecret::random_from_rng(rng);
    }

    pub fn public_key(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.identity.verifying_key().to_bytes())
    }

    pub fn device_public_key(&self) -> DevicePublicKey {
        DevicePublicKey(X25519PublicKey::from(&self.device).to_bytes())
    }

    /// The identity's signature over this device's static key (see
    /// [`device_signature_message`]). Ed25519 is deterministic, so this is the same every
    /// time and need not be stored.
    pub fn device_signature(&self) -> [u8; 64] {
        let message = device_signature_message(&self.public_key(), &self.device_public_key());
        self.identity.sign(&message).to_bytes()
    }

    /// The device's static private key, for the Noise layer (snow takes raw bytes). The copy
    /// is wiped when the returned value is dropped.
    pub fn device_static_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.device.to_bytes())
    }

    /// The keys this device secures every link with ([`cairn_transports::hop`]): the device
    /// secret and the identity's signature over its public key.
    pub fn hop_keys(&self) -> Result<cairn_transports::hop::LocalKeys, IdentityError> {
        let credential = cairn_transports::hop::DeviceCredential {
            identity: self.public_key().0,
            device: self.device_public_key().0,
            signature: self.device_signature(),
        };
        cairn_transports::hop::LocalKeys::new(*self.device_static_secret(), credential)
            .map_err(|_| IdentityError::InvalidDeviceSignature)
    }

    /// This person's mailbox key ([`crate::seal::MailboxKey`]): it makes the recipient tags
    /// contacts put on envelopes for them. Derived from the identity secret, so it needs no
    /// storage of its own and is the same on every device of the identity.
    pub fn mailbox_key(&self) -> crate::seal::MailboxKey {
        crate::seal::MailboxKey(blake3::derive_key(
            "cairn 2026 mailbox key",
            self.identity.as_bytes(),
        ))
    }

    /// The identity's secret seed, for keys derived from it ([`crate::at_rest`]). Wiped when
    /// the returned value is dropped.
    pub(crate) fn secret_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.identity.to_bytes())
    }

    /// The root of the keys that seal this node's files ([`crate::at_rest::StorageKey`]).
    pub fn storage_key(&self) -> crate::at_rest::StorageKey {
        crate::at_rest::StorageKey::of(self)
    }

    /// Writes this identity to `home/identity.key`, refusing to replace an existing one:
    /// losing an identity means every contact must verify the user again, so overwriting is
    /// never a side effect (see [`change_protection`] for the deliberate rewrite).
    ///
    /// Creates `home` with mode 0700 if it does not exist.
    pub fn save_new(
        &self,
        home: &Path,
        protection: &Protection<'_>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), IdentityError> {
        let path = home.join(IDENTITY_FILE_NAME);
        let bytes = self.encode_file(protection, rng)?;
        private_file::create_home(home).map_err(|source| IdentityError::Io {
            path: home.to_path_buf(),
            source,
        })?;
        match private_file::write_atomically(&path, &bytes, private_file::Replace::Never) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(IdentityError::AlreadyExists { path })
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// Loads the identity from `home/identity.key`, unlocking it with `passphrase` if it is
    /// sealed (a passphrase given for an unsealed file is ignored).
    ///
    /// Errors tell apart a missing file, a file others can read, a corrupt file and a wrong
    /// passphrase, because each asks the user for a different fix.
    pub fn load(home: &Path, passphrase: Option<&str>) -> Result<Self, IdentityError> {
        let path = home.join(IDENTITY_FILE_NAME);
        let bytes = read_identity_file(&path)?;
        let parsed = ParsedFile::parse(&path, &bytes)?;
        let secrets: Zeroizing<Vec<u8>> = match &parsed.seal {
            None => Zeroizing::new(parsed.body.to_vec()),
            Some(seal) => {
                let passphrase = passphrase.ok_or(IdentityError::PassphraseRequired)?;
                let key = derive_file_key(passphrase, &seal.params, &seal.salt)?;
                let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
                // The checksum already matched, so the bytes are as written: a failure here is
                // (all but certainly) the passphrase. A deliberate edit that also fixed the
                // checksum lands here too, and is refused all the same.
                let plain = cipher
                    .decrypt(
                        Nonce::from_slice(&seal.nonce),
                        Payload {
                            msg: parsed.body,
                            aad: parsed.header,
                        },
                    )
                    .map_err(|_| IdentityError::WrongPassphrase)?;
                Zeroizing::new(plain)
            }
        };
        let identity = Self::from_secrets(&secrets).ok_or(IdentityError::Corrupt {
            path: path.clone(),
            reason: "secret keys of the wrong length",
        })?;
        if identity.public_key().0 != parsed.identity_public
            || identity.device_public_key().0 != parsed.device_public
        {
            return Err(IdentityError::Corrupt {
                path,
                reason: "the secret keys do not match the public keys",
            });
        }
        Ok(identity)
    }

    fn from_secrets(secrets: &[u8]) -> Option<Self> {
        if secrets.len() != SECRETS_LEN {
            return None;
        }
        let mut identity_secret = Zeroizing::new([0u8; 32]);
        let mut device_secret = Zeroizing::new([0u8; 32]);
        identity_secret.copy_from_slice(&secrets[..32]);
        device_secret.copy_from_slice(&secrets[32..]);
        Some(Self {
            identity: SigningKey::from_bytes(&identity_secret),
            device: StaticSecret::from(*device_secret),
        })
    }

    fn encode_file(
        &self,
        protection: &Protection<'_>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>, IdentityError> {
        let mut secrets = Zeroizing::new([0u8; SECRETS_LEN]);
        secrets[..32].copy_from_slice(self.identity.as_bytes());
        secrets[32..].copy_from_slice(self.device.as_bytes());

        let mut out = Vec::with_capacity(SEALED_FILE_LEN);
        out.extend_from_slice(FILE_MAGIC);
        out.push(FILE_VERSION);
        match protection {
            Protection::None => {
                out.push(PROTECTION_NONE);
                out.extend_from_slice(&self.public_key().0);
                out.extend_from_slice(&self.device_public_key().0);
                out.extend_from_slice(secrets.as_slice());
            }
            Protection::Passphrase { passphrase, params } => {
                params.validate()?;
                let mut salt = [0u8; SALT_LEN];
                let mut nonce = [0u8; NONCE_LEN];
                rng.fill_bytes(&mut salt);
                rng.fill_bytes(&mut nonce);
                let key = derive_file_key(passphrase, params, &salt)?;
                out.push(PROTECTION_ARGON2ID_CHACHA20POLY1305);
                out.extend_from_slice(&self.public_key().0);
                out.extend_from_slice(&self.device_public_key().0);
                out.extend_from_slice(&params.memory_kib.to_le_bytes());
                out.extend_from_slice(&params.iterations.to_le_bytes());
                out.extend_from_slice(&params.parallelism.to_le_bytes());
                out.extend_from_slice(&salt);
                out.extend_from_slice(&nonce);
                let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
                let sealed = cipher
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: secrets.as_slice(),
                            aad: &out,
                        },
                    )
                    .map_err(|_| IdentityError::InvalidKdfParams {
                        reason: "encryption failed".into(),
                    })?;
                out.extend_from_slice(&sealed);
            }
        }
        let checksum = blake3::derive_key(FILE_CHECKSUM_CONTEXT, &out);
        out.extend_from_slice(&checksum);
        Ok(out)
    }
}

/// How the identity file protects the secret keys at rest.
#[derive(Clone, Copy)]
pub enum Protection<'a> {
    /// Stored in the clear, guarded only by file permissions: for devices that must start
    /// unattended (a relay node on a Raspberry Pi).
    None,
    /// Sealed with a key derived from the passphrase.
    Passphrase {
        passphrase: &'a str,
        params: KdfParams,
    },
}

impl fmt::Debug for Protection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::None => f.write_str("Protection::None"),
            Protection::Passphrase { params, .. } => f
                .debug_struct("Protection::Passphrase")
                .field("passphrase", &"<hidden>")
                .field("params", params)
                .finish(),
        }
    }
}

/// Argon2id cost parameters. They are stored in the identity file, so they can be raised
/// later for new files without breaking old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory per derivation in KiB: what makes guessing expensive on GPUs.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes. 1 keeps the cost the same on a single-core Raspberry Pi as on a laptop.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: the RFC 9106 "second recommended" option, affordable on a
    /// phone or a Raspberry Pi (see the measured unlock time in the crate's tests).
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters so test suites stay fast. They offer no protection against guessing.
    pub fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn validate(&self) -> Result<(), IdentityError> {
        let cost = u64::from(self.memory_kib) * u64::from(self.iterations);
        if self.memory_kib > MAX_KDF_MEMORY_KIB
            || self.iterations > MAX_KDF_ITERATIONS
            || self.parallelism > MAX_KDF_PARALLELISM
            || cost > MAX_KDF_COST_KIB_PASSES
        {
            return Err(IdentityError::InvalidKdfParams {
                reason: format!(
                    "at most {MAX_KDF_MEMORY_KIB} KiB, {MAX_KDF_ITERATIONS} iterations, \
                     {MAX_KDF_PARALLELISM} lanes and {MAX_KDF_COST_KIB_PASSES} KiB x passes \
                     are supported, got {self:?}"
                ),
            });
        }
        self.argon2_params().map(|_| ())
    }

    fn argon2_params(&self) -> Result<argon2::Params, IdentityError> {
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32)).map_err(
            |e| IdentityError::InvalidKdfParams {
                reason: e.to_string(),
            },
        )
    }
}

fn derive_file_key(
    passphrase: &str,
    params: &KdfParams,
    salt: &[u8; SALT_LEN],
) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    if passphrase.is_empty() {
        return Err(IdentityError::EmptyPassphrase);
    }
    params.validate()?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.argon2_params()?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut_slice())
        .map_err(|e| IdentityError::InvalidKdfParams {
            reason: e.to_string(),
        })?;
    Ok(key)
}

/// Rewrites `home/identity.key` with new protection: sets, changes or removes the passphrase.
///
/// The file is replaced atomically with a fresh salt and nonce; a crash leaves either the old
/// file or the new one, never neither.
pub fn change_protection(
    home: &Path,
    current_passphrase: Option<&str>,
    new_protection: &Protection<'_>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(), IdentityError> {
    let identity = Identity::load(home, current_passphrase)?;
    let path = home.join(IDENTITY_FILE_NAME);
    let bytes = identity.encode_file(new_protection, rng)?;
    private_file::write_atomically(&path, &bytes, private_file::Replace::Allow)
        .map_err(|source| IdentityError::Io { path, source })
}

/// What can be learnt from an identity file without its passphrase: enough for the CLI to
/// decide whether to prompt, and to show whose identity it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFileInfo {
    pub identity: IdentityPublicKey,
    pub device: DevicePublicKey,
    /// `Some` when a passphrase is needed to unlock the file.
    pub kdf_params: Option<KdfParams>,
}

impl IdentityFileInfo {
    pub fn read(home: &Path) -> Result<Self, IdentityError> {
        let path = home.join(IDENTITY_FILE_NAME);
        let bytes = read_identity_file(&path)?;
        let parsed = ParsedFile::parse(&path, &bytes)?;
        Ok(Self {
            identity: IdentityPublicKey::from_bytes(parsed.identity_public).map_err(|_| {
                IdentityError::Corrupt {
                    path: path.clone(),
                    reason: "the identity public key is not a valid key",
                }
            })?,
            device: DevicePublicKey(parsed.device_public),
            kdf_params: parsed.seal.map(|seal| seal.params),
        })
    }
}

fn read_identity_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    private_file::read(path, MAX_FILE_LEN).map_err(|e| match e {
        private_file::ReadError::NotFound => IdentityError::NotFound {
            path: path.to_path_buf(),
        },
        private_file::ReadError::InsecurePermissions { mode } => {
            IdentityError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            }
        }
        private_file::ReadError::TooLarge => IdentityError::NotAnIdentityFile {
            path: path.to_path_buf(),
        },
        private_file::ReadError::NotARegularFile => IdentityError::NotAnIdentityFile {
            path: path.to_path_buf(),
        },
        private_file::ReadError::Io(source) => IdentityError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

struct SealParams {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

/// An identity file split into its parts, with every length and the checksum checked.
struct ParsedFile<'a> {
    /// Everything before the secrets: the associated data of the seal.
    header: &'a [u8],
    identity_public: [u8; 32],
    device_public: [u8; 32],
    seal: Option<SealParams>,
    /// The secrets, in the clear or sealed.
    body: &'a [u8],
}

impl<'a> ParsedFile<'a> {
    fn parse(path: &Path, bytes: &'a [u8]) -> Result<Self, IdentityError> {
        let corrupt = |reason| IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < FILE_MAGIC.len() || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
            return Err(IdentityError::NotAnIdentityFile {
                path: path.to_path_buf(),
            });
        }
        let version = *bytes.get(8).ok_or(corrupt("truncated header"))?;
        if version > FILE_VERSION {
            return Err(IdentityError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        if version != FILE_VERSION {
            return Err(corrupt("unknown format version"));
        }
        // The checksum is unkeyed: it tells accidental damage (a bad sector, a truncated copy)
        // apart from a wrong passphrase. Deliberate tampering is caught by the seal itself.
        let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(corrupt("truncated"));
        };
        let (content, checksum) = bytes.split_at(split);
        if split < COMMON_HEADER_LEN {
            return Err(corrupt("truncated"));
        }
        if blake3::derive_key(FILE_CHECKSUM_CONTEXT, content) != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        let protection = content[9];
        let identity_public = array32(&content[10..42]);
        let device_public = array32(&content[42..74]);
        match protection {
            PROTECTION_NONE => {
                if bytes.len() != PLAIN_FILE_LEN {
                    return Err(corrupt("wrong length for an unsealed identity"));
                }
                let (header, body) = content.split_at(COMMON_HEADER_LEN);
                Ok(Self {
                    header,
                    identity_public,
                    device_public,
                    seal: None,
                    body,
                })
            }
            PROTECTION_ARGON2ID_CHACHA20POLY1305 => {
                if bytes.len() != SEALED_FILE_LEN {
                    return Err(corrupt("wrong length for a sealed identity"));
                }
                let (header, body) = content.split_at(COMMON_HEADER_LEN + SEAL_PARAMS_LEN);
                let p = &header[COMMON_HEADER_LEN..];
                let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                let params = KdfParams {
                    memory_kib: u32_at(0),
                    iterations: u32_at(4),
                    parallelism: u32_at(8),
                };
                if params.validate().is_err() {
                    return Err(corrupt("key derivation parameters out of range"));
                }
                let mut salt = [0u8; SALT_LEN];
                salt.copy_from_slice(&p[12..12 + SALT_LEN]);
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&p[12 + SALT_LEN..]);
                Ok(Self {
                    header,
                    identity_public,
                    device_public,
                    seal: Some(SealParams {
                        params,
                        salt,
                        nonce,
                    }),
                    body,
                })
            }
            _ => Err(corrupt("unknown protection scheme")),
        }
    }
}

fn array32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(bytes);
    out
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// A short hash of an identity key, shown to people as ten groups of four hex digits
/// (160 bits: collisions cannot be ground out).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 20]);

impl Fingerprint {
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write_hex(f, pair)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Digits in a safety code. See [`safety_code`] for why there are this many.
pub const SAFETY_CODE_DIGITS: usize = 60;
const DIGITS_PER_IDENTITY: usize = SAFETY_CODE_DIGITS / 2;

/// The numbers two people read to each other to verify their identities, e.g. over a call.
/// Displayed as twelve groups of five digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyCode([u8; SAFETY_CODE_DIGITS]);

impl SafetyCode {
    /// The groups of five digits, in reading order.
    pub fn groups(&self) -> Vec<String> {
        self.0
            .chunks(5)
            .map(|group| group.iter().map(|d| char::from(b'0' + d)).collect())
            .collect()
    }
}

impl fmt::Display for SafetyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.groups().join(" "))
    }
}

impl fmt::Debug for SafetyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyCode({self})")
    }
}

/// The safety code of two identities: the same on both phones, whichever side computes it.
///
/// Each identity contributes 30 digits derived from its own key only, and the two halves are
/// ordered by key. A short code hashed from *both* keys (say 12 digits) would be unsafe: an
/// attacker in the middle picks both of the keys the victims see, so he only needs a
/// collision between his two sides, which takes about a million key generations for 40 bits.
/// With a half per identity he must instead produce a key whose 30 digits equal the real
/// contact's (about 2^100 tries), the same construction Signal uses for its safety numbers.
pub fn safety_code(a: &IdentityPublicKey, b: &IdentityPublicKey) -> SafetyCode {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut digits = [0u8; SAFETY_CODE_DIGITS];
    for (half, key) in digits.chunks_mut(DIGITS_PER_IDENTITY).zip([first, second]) {
        let hash = blake3::derive_key(SAFETY_CODE_CONTEXT, &key.0);
        // Five bytes (40 bits) per five digits: the bias of the reduction is below 1e-7.
        for (group, chunk) in half.chunks_mut(5).zip(hash.chunks(5)) {
            let mut value = chunk
                .iter()
                .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
                % 100_000;
            for digit in group.iter_mut().rev() {
                // `value % 10` is below 10, so the cast cannot truncate.
                *digit = (value % 10) as u8;
                value /= 10;
            }
        }
    }
    SafetyCode(digits)
}

/// Files only this user may read, written so that a crash never leaves a half-written one.
pub(crate) mod private_file {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Replace {
        Allow,
        Never,
    }

    #[derive(Debug)]
    pub(crate) enum ReadError {
        NotFound,
        InsecurePermissions { mode: u32 },
        TooLarge,
        NotARegularFile,
        Io(io::Error),
    }

    /// Creates the home directory (mode 0700) if it does not exist yet.
    pub(crate) fn create_home(home: &Path) -> io::Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(home)
    }

    /// Reads a private file of at most `max_len` bytes, refusing one that group or others can
    /// read or write: a key readable by other users may already be copied, and the user has
    /// to know (and fix it) rather than have us quietly tighten the mode.
    pub(crate) fn read(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, ReadError> {
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::NotFound),
            Err(e) => return Err(ReadError::Io(e)),
        };
        // Metadata of the open handle, not the path: the file cannot be swapped in between.
        let metadata = file.metadata().map_err(ReadError::Io)?;
        if !metadata.is_file() {
            return Err(ReadError::NotARegularFile);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ReadError::InsecurePermissions { mode });
            }
        }
        if metadata.len() > max_len {
            return Err(ReadError::TooLarge);
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(metadata.len() as usize));
        file.take(max_len + 1)
            .read_to_end(&mut bytes)
            .map_err(ReadError::Io)?;
        if bytes.len() as u64 > max_len {
            return Err(ReadError::TooLarge);
        }
        Ok(bytes)
    }

    /// Holds an exclusive advisory lock (`flock`) on `path`, created with mode 0600 if
    /// missing, until the returned guard is dropped; waits while another holds it. The lock
    /// goes with the process, so a writer that crashes never leaves it held.
    pub(crate) fn lock_exclusive(path: &Path) -> io::Result<nix::fcntl::Flock<fs::File>> {
        let mut options = fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))
    }

    /// Writes `bytes` to `path` with mode 0600: a temporary file in the same directory,
    /// fsynced, then renamed over the target (or linked, when replacing is not allowed, which
    /// fails atomically if the target exists), then the directory fsynced so the new name is
    /// durable too.
    pub(crate) fn write_atomically(path: &Path, bytes: &[u8], replace: Replace) -> io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = dir.join(temp_name);
        let result = write_then_publish(&temp, path, bytes, replace);
        if result.is_err() || replace == Replace::Never {
            // After a link (or a failure) the temporary name is left over; it must not be.
            let _ = fs::remove_file(&temp);
        }
        result?;
        fs::File::open(dir)?.sync_all()
    }

    fn write_then_publish(
        temp: &Path,
        path: &Path,
        bytes: &[u8],
        replace: Replace,
    ) -> io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(temp)?;
        #[cfg(unix)]
        {
            // The umask can only remove bits, but set the mode explicitly all the same.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        match replace {
            Replace::Allow => fs::rename(temp, path),
            Replace::Never => match fs::hard_link(temp, path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    // Some filesystems (FAT, some Android storage) have no hard links: fall
                    // back to check-then-rename, racy only against another writer of ours.
                    if fs::symlink_metadata(path).is_ok() {
                        return Err(io::ErrorKind::AlreadyExists.into());
                    }
                    fs::rename(temp, path)
                }
                other => other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core_06::SeedableRng;

    fn rng(seed: u64) -> rand_chacha_03::ChaCha20Rng {
        rand_chacha_03::ChaCha20Rng::seed_from_u64(seed)
    }

    #[test]
    fn device_signature_message_layout_is_fixed() {
        let identity = IdentityPublicKey([1; 32]);
        let device = DevicePublicKey([2; 32]);
        let message = device_signature_message(&identity, &device);
        assert_eq!(&message[..19], b"cairn device key v1");
        assert_eq!(&message[19..51], &[1; 32]);
        assert_eq!(&message[51..], &[2; 32]);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let identity = Identity::generate(&mut rng(1));
        let shown = format!("{identity:?}");
        let secret_hex: String = identity
            .identity
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!shown.contains(&secret_hex[..16]));
        assert!(!shown.contains(&format!("{:?}", identity.identity.as_bytes())));
        assert!(shown.contains("fingerprint"));
        let protection = Protection::Passphrase {
            passphrase: "hunter2",
            params: KdfParams::insecure_for_tests(),
        };
        assert!(!format!("{protection:?}").contains("hunter2"));
    }

    #[test]
    fn fingerprint_is_ten_groups_of_four_hex_digits() {
        let fingerprint = Identity::generate(&mut rng(2)).public_key().fingerprint();
        let text = fingerprint.to_string();
        let groups: Vec<&str> = text.split(' ').collect();
        assert_eq!(groups.len(), 10);
        assert!(groups
            .iter()
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())));
    }

    #[test]
    fn safety_code_golden_vector() {
        // Pins the derivation: both phones of every version must agree forever.
        let a = IdentityPublicKey([0x11; 32]);
        let b = IdentityPublicKey([0x22; 32]);
        let code = safety_code(&a, &b);
        assert_eq!(code, safety_code(&b, &a));
        assert_eq!(code.groups().len(), 12);
        let half = |key: &IdentityPublicKey| safety_code(key, key).groups()[..6].join(" ");
        assert_eq!(code.groups()[..6].join(" "), half(&a));
        assert_eq!(code.groups()[6..].join(" "), half(&b));
    }

    #[test]
    fn a_file_cannot_ask_for_more_than_four_times_the_default_work() {
        let default = KdfParams::default();
        assert!(default.validate().is_ok());
        let four_times = KdfParams {
            iterations: 12,
            ..default
        };
        assert!(four_times.validate().is_ok());
        for too_much in [
            KdfParams {
                iterations: 13,
                ..default
            },
            KdfParams {
                memory_kib: 512 * 1024,
                iterations: 1,
                parallelism: 1,
            },
        ] {
            assert!(matches!(
                too_much.validate(),
                Err(IdentityError::InvalidKdfParams { .. })
            ));
        }
    }

    #[test]
    fn parameters_out_of_range_are_refused_before_any_work() {
        let params = KdfParams {
            memory_kib: u32::MAX,
            iterations: 1,
            parallelism: 1,
        };
        assert!(matches!(
            params.validate(),
            Err(IdentityError::InvalidKdfParams { .. })
        ));
    }
}
