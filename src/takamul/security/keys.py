"""The server's own signing keys: ES384 (P-384) by default, rotated with a grace period, sealed
at rest with the key secret, and published as a JWK Set for whoever verifies our tokens.

The newest unretired key signs; every key whose retirement is unset or still ahead verifies, so a
rotation never invalidates a token in flight. Keys are cached in memory and re-read every few
seconds (another worker or ``takamul keys rotate`` may have changed them).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import Engine, insert, select, update

from takamul.security.schema import signing_key

__all__ = ["SIGNING_ALGORITHMS", "KeyRing", "SigningKey", "SigningKeyError", "random_secret"]

SIGNING_ALGORITHMS = ("ES384", "RS384")
_SEAL = {"alg": "dir", "enc": "A256GCM"}
_SEAL_ALGS = ["dir", "A256GCM"]

Clock = Callable[[], float]
AsymmetricKey = ECKey | RSAKey


class SigningKeyError(RuntimeError):
    """A signing key cannot be created, read or unsealed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    created: float
    retired_at: float | None
    public: AsymmetricKey
    sealed: bool  # stored encrypted with the key secret
    private_text: str = field(repr=False)  # as stored; unsealed on first signature

    def active_at(self, now: float) -> bool:
        """May verify at ``now``: not retired, or retirement still ahead."""
        return self.retired_at is None or self.retired_at > now

    def public_jwk(self) -> dict[str, Any]:
        return {**self.public.as_dict(private=False), "alg": self.algorithm, "use": "sig"}


class KeyRing:
    """The signing keys in the database, cached; ``secret`` seals the private keys."""

    def __init__(
        self,
        engine: Engine,
        secret: str | None,
        clock: Clock,
        refresh_seconds: float = 15.0,
        reader: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.reader = reader or engine
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self._seal_key = _derive(secret) if secret else None
        self._keys: list[SigningKey] = []
        self._loaded_at = float("-inf")
        self._private: dict[str, AsymmetricKey] = {}
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------

    def keys(self, fresh: bool = False) -> list[SigningKey]:
        """All keys, newest first (retired ones included)."""
        now = self.clock()
        if fresh or now - self._loaded_at > self.refresh_seconds:
            self._reload(now)
        return self._keys

    def _reload(self, now: float) -> None:
        with self.reader.connect() as conn:
            rows = conn.execute(select(signing_key).order_by(signing_key.c.created.desc())).all()
        keys = [_from_row(r) for r in rows]
        with self._lock:
            self._keys = keys
            self._loaded_at = now

    def signing_key(self) -> tuple[SigningKey, AsymmetricKey]:
        """The key that signs now (newest never scheduled for retirement) and its private part."""
        for key in self.keys():
            if key.retired_at is None:
                return key, self._private_of(key)
        raise SigningKeyError("No signing key: run `takamul keys rotate` to create one")

    def ensure_signing_key(self, algorithm: str = "ES384") -> SigningKey:
        """The current signing key, created first if there is none (development start-up)."""
        current = [k for k in self.keys(fresh=True) if k.retired_at is None]
        return current[0] if current else self.create(algorithm)

    def verification_key(self, kid: str) -> SigningKey | None:
        """The key ``kid`` if it may verify now; None if unknown or retired."""
        now = self.clock()
        for fresh in (False, True):
            for key in self.keys(fresh and self._may_refresh(now)):
                if key.kid == kid:
                    return key if key.active_at(now) else None
        return None

    def _may_refresh(self, now: float) -> bool:
        # An unknown kid re-reads the table at most once a second, so that tokens with random
        # kids cannot turn into a query each.
        return now - self._loaded_at > 1.0

    def jwks(self) -> dict[str, Any]:
        """The public keys that verify now, for ``/.well-known/jwks.json``."""
        now = self.clock()
        return {"keys": [k.public_jwk() for k in self.keys() if k.active_at(now)]}

    def _private_of(self, key: SigningKey) -> AsymmetricKey:
        cached = self._private.get(key.kid)
        if cached is None:
            cached = _import(self._unseal(key))
            self._private[key.kid] = cached
        return cached

    def _unseal(self, key: SigningKey) -> dict[str, Any]:
        if not key.sealed:
            return dict(json.loads(key.private_text))
        if self._seal_key is None:
            raise SigningKeyError(
                f"Signing key {key.kid} is sealed; set TAKAMUL_KEY_SECRET (or "
                "TAKAMUL_KEY_SECRET_FILE) to the secret it was sealed with"
            )
        try:
            opened = jwe.decrypt_compact(key.private_text, self._seal_key, algorithms=_SEAL_ALGS)
        except (JoseError, ValueError) as err:
            raise SigningKeyError(
                f"Signing key {key.kid} cannot be unsealed with the configured key secret "
                "(was TAKAMUL_KEY_SECRET changed?); restore the secret or rotate the keys"
            ) from err
        if opened.protected.get("kid") != key.kid:
            raise SigningKeyError(f"Signing key {key.kid} was sealed for another key id")
        return dict(json.loads(opened.plaintext or b"{}"))

    def check_unsealable(self) -> list[str]:
        """Problems reading the private parts of the keys that may still sign or verify."""
        problems = []
        now = self.clock()
        for key in self.keys(fresh=True):
            if not key.active_at(now):
                continue
            try:
                self._private_of(key)
            except SigningKeyError as err:
                problems.append(str(err))
        return problems

    # -- writing ----------------------------------------------------------------------

    def create(self, algorithm: str = "ES384") -> SigningKey:
        """A new key that signs from now on; older keys keep verifying (see ``rotate``)."""
        private = _generate(algorithm)
        kid = private.thumbprint()
        private_jwk = {**private.as_dict(private=True), "kid": kid}
        public_jwk = {**private.as_dict(private=False), "kid": kid}
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                insert(signing_key).values(
                    kid=kid,
                    algorithm=algorithm,
                    private_jwk=self._seal(private_jwk, kid),
                    public_jwk=json.dumps(public_jwk),
                    created=now,
                    retired_at=None,
                )
            )
        self.keys(fresh=True)
        return next(k for k in self._keys if k.kid == kid)

    def rotate(self, grace_seconds: float, algorithm: str = "ES384") -> SigningKey:
        """Create a new signing key and retire every older one after ``grace_seconds`` (at
        least the token lifetime, so that tokens already issued stay valid until they expire)."""
        new = self.create(algorithm)
        until = self.clock() + grace_seconds
        with self.engine.begin() as conn:
            conn.execute(
                update(signing_key)
                .where(signing_key.c.kid != new.kid)
                .where((signing_key.c.retired_at.is_(None)) | (signing_key.c.retired_at > until))
                .values(retired_at=until)
            )
        self.keys(fresh=True)
        return new

    def retire(self, kid: str) -> bool:
        """Retire ``kid`` now (a key believed compromised): its tokens stop verifying at once
        in this process, and in others at their next refresh. False if no such key."""
        with self.engine.begin() as conn:
            count = conn.execute(
                update(signing_key).where(signing_key.c.kid == kid).values(retired_at=self.clock())
            ).rowcount
        self.keys(fresh=True)
        return bool(count)

    def _seal(self, private_jwk: dict[str, Any], kid: str) -> str:
        text = json.dumps(private_jwk)
        if self._seal_key is None:
            return text
        return jwe.encrypt_compact(
            {**_SEAL, "kid": kid}, text.encode(), self._seal_key, algorithms=_SEAL_ALGS
        )


def _derive(secret: str) -> OctKey:
    # HKDF, not a password hash: the secret is expected to be random (32+ characters, checked
    # in production), and HKDF binds the derived key to this one purpose.
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"takamul", info=b"signing-key-seal/v1"
    ).derive(secret.encode("utf-8"))
    return OctKey.import_key(raw)


def _generate(algorithm: str) -> AsymmetricKey:
    if algorithm == "ES384":
        return ECKey.generate_key("P-384")
    if algorithm == "RS384":
        return RSAKey.generate_key(3072)
    raise SigningKeyError(f"Signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}")


def _import(jwk: dict[str, Any]) -> AsymmetricKey:
    return ECKey.import_key(jwk) if jwk.get("kty") == "EC" else RSAKey.import_key(jwk)


def _from_row(row: Any) -> SigningKey:
    text: str = row.private_jwk
    return SigningKey(
        kid=row.kid,
        algorithm=row.algorithm,
        created=row.created,
        retired_at=row.retired_at,
        public=_import(json.loads(row.public_jwk)),
        sealed=not text.lstrip().startswith("{"),
        private_text=text,
    )


def random_secret() -> str:
    """A fresh key secret for TAKAMUL_KEY_SECRET (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)
