"""People's logins for the web interface: argon2id password hashes, lockout after repeated
failures, and sessions whose token lives only in the person's cookie (the table keeps its hash).

Every failed login looks the same from outside (unknown user, wrong password, locked account,
disabled account), and costs the same argon2 verification, so that neither the message nor the
time tells an attacker which usernames exist.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from takamul.fhir.outcome import FhirError
from takamul.security.config import SecurityConfig
from takamul.security.errors import unauthenticated
from takamul.security.roles import role, validate_roles
from takamul.security.schema import security_session, security_user

__all__ = ["LOGIN_FAILED", "Session", "User", "UserDirectory"]

LOGIN_FAILED = (
    "Wrong username or password, or the account is locked for a while after repeated failures"
)
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
_LAST_SEEN_EVERY = 60.0  # seconds: a busy session does not write on every request

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    display_name: str | None
    roles: tuple[str, ...]
    facility: str | None
    patient: str | None
    active: bool
    demo: bool
    failed_attempts: int
    locked_until: float | None
    created: float


@dataclass(frozen=True, slots=True)
class Session:
    token: str  # the cookie value: returned once at login, never stored
    user: User
    created: float
    expires: float


class UserDirectory:
    def __init__(
        self,
        engine: Engine,
        config: SecurityConfig,
        clock: Clock,
        hasher: PasswordHasher | None = None,
        reader: Engine | None = None,
    ) -> None:
        self.engine = engine
        # SQLite's writer engine takes the write lock at BEGIN; lookups go to the reader.
        self.reader = reader or engine
        self.config = config
        self.clock = clock
        # argon2-cffi's default is RFC 9106's low-memory argon2id profile (64 MiB, t=3, p=4).
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None

    # -- accounts ---------------------------------------------------------------------

    def add(
        self,
        username: str,
        password: str,
        roles: Iterable[str],
        facility: str | None = None,
        display_name: str | None = None,
        patient: str | None = None,
        demo: bool = False,
    ) -> User:
        """Create a login; a 400 FhirError says what is missing (409 if the name is taken)."""
        name = _username(username)
        checked = validate_roles(roles)
        if not checked:
            raise FhirError(400, "A login needs at least one role", "required")
        for r in checked:
            if role(r).facility_scoped and not facility:
                raise FhirError(400, f"Role '{r}' sees one facility's patients: give --facility")
            if role(r).needs_patient and not patient:
                raise FhirError(400, f"Role '{r}' acts for one patient: give --patient")
        self._check_password(name, password)
        row = {
            "username": name,
            "password_hash": self.hasher.hash(password),
            "display_name": display_name,
            "roles": " ".join(checked),
            "facility": facility.removeprefix("Organization/") if facility else None,
            "patient": patient.removeprefix("Patient/") if patient else None,
            "failed_attempts": 0,
            "locked_until": None,
            "active": True,
            "demo": demo,
            "created": self.clock(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(security_user).values(**row))
        except IntegrityError as err:
            raise FhirError(409, f"A login '{name}' already exists", "duplicate") from err
        found = self.get(name)
        assert found is not None
        return found

    def _check_password(self, username: str, password: str) -> None:
        if len(password) < self.config.min_password_length:
            raise FhirError(
                400,
                f"The password must have at least {self.config.min_password_length} characters",
                "value",
            )
        if username in password.lower():
            raise FhirError(400, "The password must not contain the username", "value")

    def get(self, username: str) -> User | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                select(security_user).where(security_user.c.username == username.lower())
            ).first()
        return _user(row) if row is not None else None

    def all(self) -> list[User]:
        with self.reader.connect() as conn:
            rows = conn.execute(select(security_user).order_by(security_user.c.username))
            return [_user(r) for r in rows]

    def set_password(self, username: str, password: str) -> None:
        self._check_password(username.lower(), password)
        self._update(username, password_hash=self.hasher.hash(password))

    def set_active(self, username: str, active: bool) -> None:
        """Disable (or enable) a login; disabling also ends its sessions."""
        user = self._update(username, active=active)
        if not active:
            with self.engine.begin() as conn:
                conn.execute(delete(security_session).where(security_session.c.user_id == user.id))

    def unlock(self, username: str) -> None:
        self._update(username, failed_attempts=0, locked_until=None)

    def _update(self, username: str, **values: object) -> User:
        with self.engine.begin() as conn:
            count = conn.execute(
                update(security_user)
                .where(security_user.c.username == username.lower())
                .values(**values)
            ).rowcount
        if not count:
            raise FhirError(404, f"No login '{username}'", "not-found")
        found = self.get(username)
        assert found is not None
        return found

    def demo_users(self) -> list[str]:
        return [u.username for u in self.all() if u.active and u.demo]

    # -- logging in -------------------------------------------------------------------

    def login(self, username: str, password: str) -> Session:
        """A new session for the right password; a 401 AuthError (always the same) otherwise.

        ``lockout_attempts`` consecutive failures lock the account for ``lockout_minutes``;
        attempts during the lock are refused without counting; success resets the count.
        """
        user = self.get(username) if _USERNAME.match(username.lower()) else None
        now = self.clock()
        correct = self._verify(user, password)
        if user is None or not user.active:
            raise unauthenticated(LOGIN_FAILED, error="")
        if user.locked_until is not None and user.locked_until > now:
            raise unauthenticated(LOGIN_FAILED, error="")
        if not correct:
            self._record_failure(user.id, now)
            raise unauthenticated(LOGIN_FAILED, error="")
        self._record_success(user, password)
        return self._open_session(user, now)

    def _verify(self, user: User | None, password: str) -> bool:
        if user is None:
            # Spend the same time on an unknown name as on a known one.
            self._verify_hash(self._dummy(), password)
            return False
        with self.reader.connect() as conn:
            stored = conn.execute(
                select(security_user.c.password_hash).where(security_user.c.id == user.id)
            ).scalar_one()
        return self._verify_hash(stored, password)

    def _verify_hash(self, stored: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _record_failure(self, user_id: int, now: float) -> None:
        # Read and write in one transaction (row lock on PostgreSQL, write lock on SQLite), so
        # that concurrent wrong guesses cannot each see four failures and never lock.
        with self.engine.begin() as conn:
            failed = conn.execute(
                select(security_user.c.failed_attempts)
                .where(security_user.c.id == user_id)
                .with_for_update()
            ).scalar_one()
            failed += 1
            values: dict[str, object] = {"failed_attempts": failed}
            if failed >= self.config.lockout_attempts:
                # The count starts again once the lock is over.
                values = {
                    "failed_attempts": 0,
                    "locked_until": now + self.config.lockout_minutes * 60,
                }
            conn.execute(
                update(security_user).where(security_user.c.id == user_id).values(**values)
            )

    def _record_success(self, user: User, password: str) -> None:
        values: dict[str, object] = {"failed_attempts": 0, "locked_until": None}
        with self.reader.connect() as conn:
            stored = conn.execute(
                select(security_user.c.password_hash).where(security_user.c.id == user.id)
            ).scalar_one()
        if self.hasher.check_needs_rehash(stored):  # parameters raised since it was hashed
            values["password_hash"] = self.hasher.hash(password)
        with self.engine.begin() as conn:
            conn.execute(
                update(security_user).where(security_user.c.id == user.id).values(**values)
            )

    # -- sessions ---------------------------------------------------------------------

    def _open_session(self, user: User, now: float) -> Session:
        token = secrets.token_urlsafe(32)  # 32 random bytes
        expires = now + self.config.session_hours * 3600
        with self.engine.begin() as conn:
            conn.execute(delete(security_session).where(security_session.c.expires < now))
            conn.execute(
                insert(security_session).values(
                    id_hash=_hash(token),
                    user_id=user.id,
                    created=now,
                    expires=expires,
                    last_seen=now,
                )
            )
        return Session(token, user, now, expires)

    def session_user(self, token: str) -> User:
        """The user of a live session; a 401 AuthError if it is unknown, ended or idle."""
        now = self.clock()
        with self.reader.connect() as conn:
            row = conn.execute(
                select(
                    security_user,
                    security_session.c.id_hash,
                    security_session.c.expires.label("session_expires"),
                    security_session.c.last_seen,
                )
                .join(security_user, security_user.c.id == security_session.c.user_id)
                .where(security_session.c.id_hash == _hash(token))
            ).first()
        if row is None:
            raise unauthenticated("The session is not known (logged out?); log in again")
        if row.session_expires <= now:
            raise unauthenticated("The session has ended; log in again")
        if row.last_seen + self.config.session_idle_minutes * 60 <= now:
            raise unauthenticated("The session ended after a period without use; log in again")
        if not row.active:
            raise unauthenticated("This login is disabled")
        if now - row.last_seen >= _LAST_SEEN_EVERY:
            with self.engine.begin() as conn:
                conn.execute(
                    update(security_session)
                    .where(security_session.c.id_hash == row.id_hash)
                    .values(last_seen=now)
                )
        return _user(row)

    def logout(self, token: str) -> bool:
        with self.engine.begin() as conn:
            count = conn.execute(
                delete(security_session).where(security_session.c.id_hash == _hash(token))
            ).rowcount
        return bool(count)


def _hash(token: str) -> str:
    # SHA-256 is enough: the token is 256 random bits, not a password someone could guess.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _username(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME.match(name):
        raise FhirError(
            400,
            f"Username '{username}' must be 2-64 of a-z, 0-9 and . _ @ -, starting with a "
            "letter or digit",
            "value",
        )
    return name


def _user(row: object) -> User:
    r = row._mapping  # type: ignore[attr-defined]
    return User(
        id=int(r["id"]),
        username=r["username"],
        display_name=r["display_name"],
        roles=tuple(r["roles"].split()),
        facility=r["facility"],
        patient=r["patient"],
        active=bool(r["active"]),
        demo=bool(r["demo"]),
        failed_attempts=int(r["failed_attempts"]),
        locked_until=r["locked_until"],
        created=r["created"],
    )
