"""The registry of SMART Backend Services clients: each facility system's public keys (a JWK
Set), the scopes it may be granted, its facility and roles; register, look up, disable.

Only public keys are registered, RSA of 2048 bits or more or EC on P-384, for RS384 or ES384.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from takamul.fhir.outcome import FhirError
from takamul.security.roles import validate_roles
from takamul.security.schema import security_client
from takamul.security.scopes import ScopeError, ScopeSet

__all__ = ["CLIENT_ALGORITHMS", "Client", "ClientRegistry", "public_jwks"]

CLIENT_ALGORITHMS = ("RS384", "ES384")  # SMART Backend Services: the server SHALL support both
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_ORG_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    jwks: dict[str, Any]
    scopes: ScopeSet
    facility: str | None
    roles: tuple[str, ...]
    active: bool
    demo: bool
    created: float

    def key(self, kid: str) -> ECKey | RSAKey | None:
        """The registered public key ``kid``."""
        for jwk in self.jwks.get("keys", []):
            if jwk.get("kid") == kid:
                key = import_key(jwk)
                return key if isinstance(key, ECKey | RSAKey) else None
        return None

    @property
    def kids(self) -> list[str]:
        return [str(k.get("kid")) for k in self.jwks.get("keys", [])]


class ClientRegistry:
    def __init__(
        self, engine: Engine, clock: Callable[[], float], reader: Engine | None = None
    ) -> None:
        self.engine = engine
        self.reader = reader or engine
        self.clock = clock

    def add(
        self,
        client_id: str,
        name: str,
        jwks: dict[str, Any] | str,
        scopes: str | Iterable[str],
        facility: str | None = None,
        roles: Iterable[str] = (),
        demo: bool = False,
    ) -> Client:
        """Register a client; a 400 FhirError says what is wrong (or that the id is taken)."""
        if not _CLIENT_ID.match(client_id):
            raise FhirError(
                400, f"Client id '{client_id}' must be 1-128 letters, digits or . _ : -", "value"
            )
        if facility is not None and not _ORG_ID.match(facility.removeprefix("Organization/")):
            raise FhirError(400, f"Facility '{facility}' is not an Organization id", "value")
        keys = public_jwks(jwks)
        try:
            allowed = ScopeSet.parse(scopes)
        except ScopeError as err:
            raise FhirError(400, str(err), "value") from err
        if not allowed:
            raise FhirError(400, "A client needs at least one allowed scope", "required")
        row = {
            "client_id": client_id,
            "name": name,
            "jwks": json.dumps(keys),
            "scopes": str(allowed),
            "facility": facility.removeprefix("Organization/") if facility else None,
            "roles": " ".join(validate_roles(roles)),
            "active": True,
            "demo": demo,
            "created": self.clock(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(security_client).values(**row))
        except IntegrityError as err:
            raise FhirError(
                409, f"A client '{client_id}' is already registered", "duplicate"
            ) from err
        found = self.get(client_id)
        assert found is not None
        return found

    def get(self, client_id: str) -> Client | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                select(security_client).where(security_client.c.client_id == client_id)
            ).first()
        return _client(row) if row is not None else None

    def all(self) -> list[Client]:
        with self.reader.connect() as conn:
            rows = conn.execute(select(security_client).order_by(security_client.c.client_id))
            return [_client(r) for r in rows]

    def set_active(self, client_id: str, active: bool) -> bool:
        """Disable (or enable) a client: its assertions are refused from the next request;
        tokens it already holds expire within the token lifetime. False if unknown."""
        with self.engine.begin() as conn:
            count = conn.execute(
                update(security_client)
                .where(security_client.c.client_id == client_id)
                .values(active=active)
            ).rowcount
        return bool(count)

    def demo_clients(self) -> list[str]:
        return [c.client_id for c in self.all() if c.active and c.demo]


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        jwks=json.loads(row.jwks),
        scopes=ScopeSet.parse(row.scopes),
        facility=row.facility,
        roles=tuple(row.roles.split()),
        active=bool(row.active),
        demo=bool(row.demo),
        created=row.created,
    )


def public_jwks(value: dict[str, Any] | str) -> dict[str, Any]:
    """A checked JWK Set of public signing keys from a JWKS, a single JWK or a PEM public key;
    every key gets a ``kid`` (its RFC 7638 thumbprint when it has none)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-----BEGIN"):
            return {"keys": [_public_jwk(_pem_key(text))]}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise FhirError(400, "The JWKS is neither JSON nor a PEM public key", "value") from err
    if not isinstance(value, dict):
        raise FhirError(400, "A JWKS is a JSON object with 'keys'", "value")
    raw = value.get("keys", [value] if "kty" in value else None)
    if not isinstance(raw, list) or not raw:
        raise FhirError(400, "The JWKS has no keys", "value")
    keys = [_public_jwk(_jwk_key(k)) for k in raw]
    kids = [k["kid"] for k in keys]
    if len(set(kids)) != len(kids):
        raise FhirError(400, "Two keys of the JWKS have the same kid", "value")
    KeySet.import_key_set({"keys": keys})  # one last check that joserfc reads it all
    return {"keys": keys}


def _jwk_key(jwk: Any) -> ECKey | RSAKey:
    if not isinstance(jwk, dict):
        raise FhirError(400, "Each key of a JWKS is a JSON object", "value")
    if jwk.get("kty") == "oct":
        raise FhirError(
            400, "Symmetric (oct) keys cannot be registered: register a public RSA or EC key"
        )
    if jwk.get("d") is not None or jwk.get("p") is not None:
        raise FhirError(
            400,
            "The JWKS holds a private key: register only the public keys (the private key "
            "never leaves the client)",
            "security",
        )
    alg = jwk.get("alg")
    if alg is not None and alg not in CLIENT_ALGORITHMS:
        raise FhirError(400, f"Key algorithm '{alg}' is not RS384 or ES384", "value")
    try:
        key = import_key(jwk)
    except (JoseError, ValueError, TypeError) as err:
        raise FhirError(400, f"A key of the JWKS cannot be read: {err}", "value") from err
    return _checked(key, alg)


def _pem_key(pem: str) -> ECKey | RSAKey:
    for cls in (ECKey, RSAKey):
        try:
            key = cls.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if key.is_private:
            raise FhirError(400, "That PEM is a private key: register the public key", "security")
        return _checked(key, None)
    raise FhirError(400, "The PEM is not an EC (P-384) or RSA public key", "value")


def _checked(key: Any, alg: Any) -> ECKey | RSAKey:
    if isinstance(key, ECKey):
        if key.curve_name != "P-384":
            raise FhirError(400, f"EC keys must be on P-384 for ES384, not {key.curve_name}")
        alg = alg or "ES384"
    elif isinstance(key, RSAKey):
        size = key.public_key.key_size
        if size < 2048:
            raise FhirError(400, f"RSA keys must have at least 2048 bits, not {size}", "value")
        alg = alg or "RS384"
    else:
        raise FhirError(400, "Only RSA and EC (P-384) keys are accepted", "value")
    expected = "ES384" if isinstance(key, ECKey) else "RS384"
    if alg != expected:
        raise FhirError(400, f"Key algorithm '{alg}' does not fit a {key.key_type} key", "value")
    return key


def _public_jwk(key: ECKey | RSAKey) -> dict[str, Any]:
    data = key.as_dict(private=False)
    data["kid"] = key.kid or key.thumbprint()
    data["alg"] = "ES384" if isinstance(key, ECKey) else "RS384"
    return data
