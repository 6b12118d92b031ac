"""Signed checkpoints: C2SP ``tlog-checkpoint`` bodies in C2SP ``signed-note`` envelopes.

A checkpoint says "the log named ``origin`` had ``size`` events and this
root". It is signed with Ed25519 in the note format Go's checksum database,
Sigstore and the other C2SP logs use, so an auditor's existing tools can
read it; the keys are spelled the way ``golang.org/x/mod/sumdb/note`` spells
them (``PRIVATE+KEY+name+hash+key`` and ``name+hash+key``).

Pure: no I/O. The key file beside the database is ``core/settings.py``'s.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from sessionstream.core.errors import ValidationFailed

ED25519 = b"\x01"
DASH = "\u2014 "


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\n"


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ValidationFailed(f"a key name has no spaces or '+': {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Signer:
    """An Ed25519 signing key with its name (the log's origin)."""

    name: str
    key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(_check_name(name), Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, text: str) -> Signer:
        """Read ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>``."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValidationFailed("a log signing key reads PRIVATE+KEY+<name>+<hash>+<key>")
        raw = base64.b64decode(parts[4])
        if raw[:1] != ED25519 or len(raw) != 33:
            raise ValidationFailed("the log signing key is not an Ed25519 key")
        signer = cls(_check_name(parts[2]), Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if _key_hash(signer.name, signer.public_bytes()).hex() != parts[3]:
            raise ValidationFailed("the log signing key's hash does not match its key")
        return signer

    def public_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def skey(self) -> str:
        seed = self.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        hashed = _key_hash(self.name, self.public_bytes()).hex()
        return f"PRIVATE+KEY+{self.name}+{hashed}+{base64.b64encode(ED25519 + seed).decode()}"

    def vkey(self) -> str:
        """The verifier key: ``<name>+<hash>+<base64(0x01 || public key)>``."""
        public = self.public_bytes()
        hashed = _key_hash(self.name, public).hex()
        return f"{self.name}+{hashed}+{base64.b64encode(ED25519 + public).decode()}"

    def sign(self, checkpoint: Checkpoint) -> str:
        """The checkpoint as a signed note (its origin is the key's name)."""
        return self.sign_text(checkpoint.body())

    def sign_text(self, body: str) -> str:
        """Any note text (ending in a newline) with this key's signature line."""
        signature = self.key.sign(body.encode())
        blob = _key_hash(self.name, self.public_bytes()) + signature
        return f"{body}\n{DASH}{self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True, slots=True)
class Verifier:
    name: str
    key_hash: bytes
    key: Ed25519PublicKey

    @classmethod
    def from_vkey(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise ValidationFailed("a verifier key reads <name>+<hash>+<key>")
        try:
            raw = base64.b64decode(parts[2], validate=True)
            key_hash = bytes.fromhex(parts[1])
        except ValueError as exc:
            raise ValidationFailed(f"the verifier key is malformed: {exc}") from exc
        if raw[:1] != ED25519 or len(raw) != 33:
            raise ValidationFailed("the verifier key is not an Ed25519 key")
        if _key_hash(parts[0], raw[1:]) != key_hash:
            raise ValidationFailed("the verifier key's hash does not match its name and key")
        return cls(parts[0], key_hash, Ed25519PublicKey.from_public_bytes(raw[1:]))

    def open(self, note: str) -> Checkpoint:
        """The checkpoint a note carries, if this key signed it; else ``ValidationFailed``."""
        return parse_body(self.verified_text(note))

    def verified_text(self, note: str) -> str:
        """A note's text, if this key signed it; else ``ValidationFailed``."""
        body, sep, signatures = note.partition("\n\n")
        if not sep or not body:
            raise ValidationFailed("not a signed note: no blank line before the signatures")
        body += "\n"
        for line in signatures.splitlines():
            if not line.startswith(DASH):
                raise ValidationFailed(f"not a signature line: {line!r}")
            name, _, blob64 = line[len(DASH) :].rpartition(" ")
            if name != self.name:
                continue
            blob = base64.b64decode(blob64)
            if blob[:4] != self.key_hash:
                continue
            try:
                self.key.verify(blob[4:], body.encode())
            except InvalidSignature as exc:
                raise ValidationFailed("the checkpoint's signature does not verify") from exc
            return body
        raise ValidationFailed(f"the checkpoint carries no signature by {self.name}")


def parse_body(body: str) -> Checkpoint:
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise ValidationFailed("a checkpoint body is origin, size and root, one per line")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except ValueError as exc:
        raise ValidationFailed(f"the checkpoint body is malformed: {exc}") from exc
    if size < 0 or len(root) != 32 or str(size) != lines[1]:
        raise ValidationFailed("the checkpoint's size or root is malformed")
    return Checkpoint(lines[0], size, root)
