//! Shared setup: fixed identities so crashes reproduce, a private scratch directory for the
//! file loaders, and the formats' public (unkeyed) checksums, recomputed here so that mutated
//! inputs get past them and reach the parsers behind them.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cairn_node::contact::{
    ContactCode, DisplayName, ReachabilityHint, MAX_CODE_INPUT_BYTES, MAX_HINTS,
};
use cairn_node::identity::Identity;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// With `CAIRN_FUZZ_TRACE` set, prints what an input did (replay one with the target binary and
/// the input file to see which branch it reached); silent otherwise.
pub fn trace(what: std::fmt::Arguments<'_>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("CAIRN_FUZZ_TRACE").is_some()) {
        eprintln!("trace: {what}");
    }
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A deterministic identity: the same for every run with the same seed.
pub fn identity(seed: u64) -> Identity {
    Identity::generate(&mut rng(seed))
}

/// An empty directory (mode 0700) for this process, on tmpfs when there is one (the loaders
/// fsync every write). Left behind when the process exits; `rm -rf /dev/shm/cairn-node-fuzz-*`.
pub fn scratch(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("cairn-node-fuzz-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .expect("scratch directory");
    dir
}

/// Replaces `path` with `bytes`, mode 0600 (the loaders refuse anything more open).
pub fn write_private(path: &Path, bytes: &[u8]) {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("scratch file");
    file.write_all(bytes).expect("scratch write");
}

/// `content ‖ BLAKE3(derive_key context, content)`: how the identity file and the contact
/// book end.
pub fn with_file_checksum(context: &str, content: &[u8]) -> Vec<u8> {
    let mut out = content.to_vec();
    out.extend_from_slice(&blake3::derive_key(context, content));
    out
}

/// Replaces the last 32 bytes of a file with the checksum of what precedes them.
pub fn fix_file_checksum(context: &str, file: &mut [u8]) {
    if let Some(split) = file.len().checked_sub(32) {
        let sum = blake3::derive_key(context, &file[..split]);
        file[split..].copy_from_slice(&sum);
    }
}

pub const IDENTITY_CHECKSUM_CONTEXT: &str = "cairn 2026 identity file checksum";
pub const BOOK_CHECKSUM_CONTEXT: &str = "cairn 2026 contact book checksum";
const CODE_CHECKSUM_CONTEXT: &str = "cairn 2026 contact code checksum";

/// The text of a contact code with this payload: `cairn1:` and the base32 of the payload and
/// its checksum (written from the format's description, not from the crate's encoder).
pub fn code_text(payload: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new_derive_key(CODE_CHECKSUM_CONTEXT);
    hasher.update(&[1]);
    hasher.update(payload);
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&hasher.finalize().as_bytes()[..4]);
    format!("cairn1:{}", base32(&bytes))
}

/// RFC 4648 base32, lower case, no padding.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let value = block.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..chars {
            out.push(char::from(
                ALPHABET[((value >> (35 - 5 * i)) & 31) as usize],
            ));
        }
    }
    out
}

/// Decodes `text` with both entry points and checks they agree; an accepted code is then
/// checked with [`check_code`].
pub fn check_code_text(text: &str) -> Option<ContactCode> {
    let decoded = ContactCode::decode(text);
    let parsed: Result<ContactCode, _> = text.parse();
    assert_eq!(decoded, parsed, "decode and FromStr disagree");
    trace(format_args!("contact code: {decoded:?}"));
    let code = decoded.ok()?;
    check_code(&code);
    Some(code)
}

/// What every decoded code must satisfy: valid contents, and a canonical text form that
/// decodes (in either case) to the same code and re-encodes to the same text.
pub fn check_code(code: &ContactCode) {
    DisplayName::new(code.display_name().as_str()).expect("a decoded name must be valid");
    assert!(code.hints().len() <= MAX_HINTS, "too many hints decoded");
    for hint in code.hints() {
        ReachabilityHint::new(hint.as_str()).expect("a decoded hint must be valid");
    }
    code.identity()
        .verify_device(&code.device(), code.device_signature())
        .expect("a decoded code's device signature must verify");

    let encoded = code.encode();
    assert_eq!(code.to_string(), encoded, "Display and encode disagree");
    assert!(encoded.starts_with("cairn1:"), "encoded without the prefix");
    assert!(
        encoded.len() <= MAX_CODE_INPUT_BYTES,
        "the encoder writes a code the decoder refuses as too long"
    );
    assert!(
        !encoded.bytes().any(|b| b.is_ascii_uppercase()),
        "the canonical text is lower case"
    );
    let again = ContactCode::decode(&encoded).expect("an encoded code must decode");
    assert_eq!(&again, code, "encode then decode changed the code");
    assert_eq!(again.encode(), encoded, "re-encoding is not stable");
    let upper = ContactCode::decode(&encoded.to_ascii_uppercase())
        .expect("the upper-case form (the one QR codes carry) must decode");
    assert_eq!(&upper, code, "the upper-case form decodes to another code");
}
