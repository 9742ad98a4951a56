#!/usr/bin/env python3
"""Writes the seed inputs in seeds/<target>/: genuine contact codes, identity files, contact
books, pairing scripts and pair-key states, built here from the formats' descriptions in
node/src (an independent implementation: a seed the crate refuses is a bug on one side).

Needs the `blake3` and `cryptography` (>= 44, for Argon2id) Python packages. Deterministic:
running it again gives the same files.
"""

import hashlib
import os
import struct

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))


def derive_key(context, data):
    return blake3.blake3(data, derive_key_context=context).digest()


def raw(public_key):
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class Person:
    def __init__(self, n):
        self.id_secret = hashlib.sha256(b"identity %d" % n).digest()
        self.dev_secret = hashlib.sha256(b"device %d" % n).digest()
        self.id_key = Ed25519PrivateKey.from_private_bytes(self.id_secret)
        self.id_pub = raw(self.id_key.public_key())
        self.dev_pub = raw(X25519PrivateKey.from_private_bytes(self.dev_secret).public_key())
        message = b"cairn device key v1" + self.id_pub + self.dev_pub
        self.signature = self.id_key.sign(message)
        self.mailbox = derive_key("cairn 2026 mailbox key", self.id_secret)


def short(text):
    data = text.encode()
    return bytes([len(data)]) + data


def code_payload(person, name, hints, commitment=None):
    out = bytes([1 if commitment else 0]) + person.id_pub + person.dev_pub + person.signature
    out += person.mailbox
    if commitment:
        out += commitment
    out += short(name) + bytes([len(hints)]) + b"".join(short(h) for h in hints)
    return out


def code_text(payload):
    checksum = blake3.blake3(
        bytes([1]) + payload, derive_key_context="cairn 2026 contact code checksum"
    ).digest()[:4]
    import base64

    return "cairn1:" + base64.b32encode(payload + checksum).decode().rstrip("=").lower()


def identity_file(person, passphrase=None, params=(64, 1, 1), salt=b"s" * 16, nonce=b"n" * 12):
    secrets = person.id_secret + person.dev_secret
    header = b"cairn-id" + bytes([1])
    if passphrase is None:
        content = header + bytes([0]) + person.id_pub + person.dev_pub + secrets
    else:
        memory, iterations, lanes = params
        header += bytes([1]) + person.id_pub + person.dev_pub
        header += struct.pack("<III", memory, iterations, lanes) + salt + nonce
        key = Argon2id(
            salt=salt, length=32, iterations=iterations, lanes=lanes, memory_cost=memory
        ).derive(passphrase.encode())
        content = header + ChaCha20Poly1305(key).encrypt(nonce, secrets, header)
    return content + derive_key("cairn 2026 identity file checksum", content)


def book_file(entries):
    out = b"cairn-cb" + bytes([2]) + struct.pack("<I", len(entries))
    for person, verification, name, hints, keys in entries:
        out += person.id_pub + person.dev_pub + person.signature + person.mailbox
        out += bytes([verification])
        out += short(name) + bytes([len(hints)]) + b"".join(short(h) for h in hints)
        out += len(keys).to_bytes(2, "little") + keys
    return out + derive_key("cairn 2026 contact book checksum", out)


def pair_state(outgoing, incoming):
    out = bytes([1, len(incoming)])
    for period in [outgoing] + incoming:
        out += struct.pack("<Q", period) + hashlib.sha256(b"%d" % period).digest()
    return out


def write(target, name, data):
    directory = os.path.join(HERE, "seeds", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def main():
    alice, bob, carol = Person(1), Person(2), Person(3)
    payloads = {
        "plain": code_payload(alice, "Alice", []),
        "hints": code_payload(bob, "Zoë 🌲", ["192.168.1.20:7420", "[fe80::1]:7420", "h:1", "x"]),
        "commitment": code_payload(carol, "c", ["lan:7420"], commitment=b"\x42" * 16),
    }
    for name, payload in payloads.items():
        text = code_text(payload)
        write("contact_code_text", name, text)
        write("contact_code_text", name + "-spaced", " ".join(text[i : i + 5] for i in range(0, len(text), 5)).upper())
        # Selector 0: the payload as it is (its signature is genuine).
        write("contact_code_payload", name, bytes([0]) + payload)
        write("contact_code_payload", name + "-mangled", bytes([6]) + payload)

    write("identity_file", "plain", bytes([0]) + identity_file(alice))
    write("identity_file", "sealed", bytes([0]) + identity_file(bob, "correct horse"))
    write("identity_file", "sealed-2-lanes", bytes([0]) + identity_file(carol, "x", params=(32, 2, 2)))
    write("identity_file", "edit-plain", bytes([3 | 8]) + b"\x0a\x00\x00")
    write("identity_file", "edit-sealed", bytes([3 | 4 | 8]) + b"\x50\x00\x01")

    write("contact_book_file", "empty", bytes([0]) + book_file([]))
    write(
        "contact_book_file",
        "three",
        bytes([0])
        + book_file(
            [
                (alice, 2, "Alice", ["192.168.1.20:7420"], pair_state(20_600, [20_600, 20_601])),
                (bob, 0, "Zoë 🌲", [], b""),
                (carol, 1, "carol", ["a", "b", "c", "d"], pair_state(9, [6, 7, 8, 9, 10])),
            ]
        ),
    )
    write("contact_book_file", "edit", bytes([3 | 4]) + b"\x30\x00\x01")
    write("contact_book_file", "edit-next-day", bytes([3 | 4 | (17 << 3)]) + b"\x30\x00\x00")

    # A complete honest pairing (Alice scanned at start): Bob scans, keys cross, confirmations
    # cross. Then the same with a forged confirmation and with an early key before the scan.
    write("pairing_messages", "honest", bytes([0, 2, 3, 1, 3, 1]))
    write("pairing_messages", "honest-other-order", bytes([2, 2, 3, 1, 3, 1]))
    write("pairing_messages", "forged-confirmation", bytes([0, 2, 3, 1, 5, 2]) + b"\x00" * 32)
    write("pairing_messages", "early-key", bytes([1, 2, 1, 0, 3, 3, 1]))
    write("pairing_messages", "garbage", bytes([0, 4, 34]) + bytes([1, 1]) + b"\x09" * 32)

    write("pair_keys", "fresh", bytes([0]) + pair_state(20_600, [20_597, 20_598, 20_599, 20_600, 20_601]))
    write("pair_keys", "first-day", bytes([0x44]) + pair_state(20_600, [20_600, 20_601]))
    write("pair_keys", "late", bytes([40 << 2]) + pair_state(100, [101]))


if __name__ == "__main__":
    main()
