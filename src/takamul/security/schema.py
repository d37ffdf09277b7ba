"""The security tables beside the shared record: the server's signing keys, registered clients,
assertion ids already used, people's logins and their sessions.

On their own ``MetaData`` so that the store never depends on security; created once at start.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from takamul.store.schema import RowId

__all__ = [
    "assertion_jti",
    "create_security_tables",
    "security_client",
    "security_metadata",
    "security_session",
    "security_user",
    "signing_key",
]

security_metadata = MetaData()

# The keys our access tokens are signed with. The newest key that is not retired signs; every key
# whose retired_at is unset or still in the future verifies (rotation with a grace period).
signing_key = Table(
    "security_signing_key",
    security_metadata,
    Column("kid", String(128), primary_key=True),
    Column("algorithm", String(16), nullable=False),  # ES384 | RS384
    # the private JWK, as JSON (no key secret configured) or as a compact JWE sealed with it
    Column("private_jwk", Text, nullable=False),
    Column("public_jwk", Text, nullable=False),  # for the JWKS without unsealing anything
    Column("created", Float, nullable=False),
    Column("retired_at", Float, nullable=True),
)

# SMART Backend Services clients: facility systems that authenticate with a signed JWT.
security_client = Table(
    "security_client",
    security_metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", Text, nullable=False),
    Column("jwks", Text, nullable=False),  # a JWK Set of public keys, as JSON
    Column("scopes", Text, nullable=False),  # allowed scopes, space-separated
    Column("facility", String(64), nullable=True),  # Organization id; None = not bound
    Column("roles", Text, nullable=False, default=""),  # space-separated
    Column("active", Boolean, nullable=False, default=True),
    Column("demo", Boolean, nullable=False, default=False),  # refused in production
    Column("created", Float, nullable=False),
)

# Every client-assertion jti seen, until the assertion expires: a second use is a replay.
assertion_jti = Table(
    "security_assertion_jti",
    security_metadata,
    Column("client_id", String(128), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires", Float, nullable=False),
    Index("ix_security_assertion_jti_expires", "expires"),
)

security_user = Table(
    "security_user",
    security_metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),  # argon2id, PHC string format
    Column("display_name", Text, nullable=True),
    Column("roles", Text, nullable=False),  # space-separated
    Column("facility", String(64), nullable=True),
    # the Patient a caregiver acts for (or a patient's own record); None for staff
    Column("patient", String(64), nullable=True),
    Column("failed_attempts", Integer, nullable=False, default=0),
    Column("locked_until", Float, nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("demo", Boolean, nullable=False, default=False),
    Column("created", Float, nullable=False),
)

# Login sessions of the web interface; the cookie holds the token, the table only its SHA-256,
# so that a copy of the database does not give anyone a session.
security_session = Table(
    "security_session",
    security_metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Index("ix_security_session_user", "user_id"),
    Index("ix_security_session_expires", "expires"),
)


def create_security_tables(engine: Engine) -> None:
    """Create the security tables that do not exist yet (idempotent)."""
    security_metadata.create_all(engine)
