"""What a private key file says about itself without its passphrase: whether it is
passphrase-protected, and its public half (to find the same key in ssh-agent).

No paramiko here, so `corral validate` can look at auth.ssh_private_key without loading
the SSH stack. Formats: OpenSSH's own (`BEGIN OPENSSH PRIVATE KEY`, whose header carries
the public key in the clear) and PEM (PKCS#1 `Proc-Type: 4,ENCRYPTED`, PKCS#8
`BEGIN ENCRYPTED PRIVATE KEY`, whose public half is read from `<file>.pub` if present).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import struct

_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
MAX_KEY_FILE_BYTES = 1 << 20  # a private key is a few KB; anything this big is not one


@dataclasses.dataclass(frozen=True)
class KeyFacts:
    encrypted: bool
    public_blob: bytes | None  # the SSH wire form of the public key, when known


def read_key_facts(path: str) -> KeyFacts:
    """Raises OSError when the file cannot be read, ValueError when it is not a private
    key file we know."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES)
    text = data.decode("ascii", errors="replace")
    public_blob = _public_blob_from_pub_file(path + ".pub")
    if _OPENSSH_BEGIN in text:
        cipher, header_blob = _openssh_header(text)
        return KeyFacts(encrypted=cipher != b"none", public_blob=public_blob or header_blob)
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return KeyFacts(encrypted=True, public_blob=public_blob)
    if "PRIVATE KEY-----" in text:
        return KeyFacts(encrypted=False, public_blob=public_blob)
    raise ValueError("not a private key file (no 'BEGIN ... PRIVATE KEY' line)")


def _public_blob_from_pub_file(path: str) -> bytes | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            fields = handle.read(MAX_KEY_FILE_BYTES).split()
    except OSError:
        return None
    if len(fields) < 2:
        return None
    try:
        return base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return None


def _openssh_header(text: str) -> tuple[bytes, bytes | None]:
    """(cipher name, first public key blob) from an OpenSSH private key file."""
    body = text.split(_OPENSSH_BEGIN, 1)[1].split("-----END", 1)[0]
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"damaged OpenSSH private key: {error}") from None
    if not raw.startswith(_OPENSSH_MAGIC):
        raise ValueError("damaged OpenSSH private key: bad header")
    offset = len(_OPENSSH_MAGIC)
    cipher, offset = _ssh_string(raw, offset)
    _kdf, offset = _ssh_string(raw, offset)
    _kdf_options, offset = _ssh_string(raw, offset)
    if offset + 4 > len(raw):
        raise ValueError("damaged OpenSSH private key: truncated")
    (count,) = struct.unpack(">I", raw[offset:offset + 4])
    public_blob = _ssh_string(raw, offset + 4)[0] if count >= 1 else None
    return cipher, public_blob


def _ssh_string(raw: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(raw):
        raise ValueError("damaged OpenSSH private key: truncated")
    (length,) = struct.unpack(">I", raw[offset:offset + 4])
    end = offset + 4 + length
    if end > len(raw):
        raise ValueError("damaged OpenSSH private key: truncated")
    return raw[offset + 4:end], end
