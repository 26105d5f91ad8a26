"""Ed25519 signatures of events by edge nodes (verified by the correlator).

The signed bytes are the event's canonical JSON without its ``signature`` field, so any change
to any other field breaks the signature. Keys are raw 32-byte Ed25519 keys, base64 in config.
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import ConfigError, SignatureError
from shared.events import EventBase, Signature, canonical_bytes

E = TypeVar("E", bound=EventBase)
_UNSIGNED = frozenset({"signature"})


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes_raw()).decode()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes_raw()).decode()


def load_private_key(b64: str, field: str = "signing_key") -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{field}: not a base64 raw 32-byte Ed25519 private key") from exc


def load_public_key(b64: str, field: str = "public_key") -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{field}: not a base64 raw 32-byte Ed25519 public key") from exc


def sign_event(event: E, key: Ed25519PrivateKey, key_id: str) -> E:
    """A copy of the event carrying its signature."""
    if not hasattr(event, "signature"):
        raise SignatureError(f"{type(event).__name__} has no signature field")
    raw = key.sign(canonical_bytes(event, _UNSIGNED))
    sig = Signature(alg="ed25519", key_id=key_id, value=base64.b64encode(raw).decode())
    return event.model_copy(update={"signature": sig})


def verify_event(event: EventBase, key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless the event carries a valid signature by this key."""
    sig = getattr(event, "signature", None)
    if not isinstance(sig, Signature):
        raise SignatureError("signature: missing")
    try:
        key.verify(base64.b64decode(sig.value), canonical_bytes(event, _UNSIGNED))
    except InvalidSignature as exc:
        raise SignatureError(f"signature: does not verify with key {sig.key_id!r}") from exc
