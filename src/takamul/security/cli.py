"""The operator's security commands: ``takamul clients``, ``token``, ``users``, ``keys`` and
``demo-credentials``. Secrets are printed once, to standard output only, and never logged.

``takamul.cli`` registers them::

    app.add_typer(clients_app, name="clients"); app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys"); app.command("token")(token)
    app.command("demo-credentials")(demo)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey, import_key
from rich.console import Console
from rich.table import Table

from takamul.fhir.outcome import FhirError
from takamul.security.config import SecurityConfig
from takamul.security.errors import OAuthError, SecurityStartupError
from takamul.security.keys import SIGNING_ALGORITHMS, SigningKeyError
from takamul.security.service import Security
from takamul.settings import Settings

__all__ = ["clients_app", "demo", "keys_app", "token", "users_app"]

console = Console(stderr=True, soft_wrap=True)
DEFAULT_BASE = "http://127.0.0.1:8080/fhir"

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="sqlite:///path (default data/takamul.sqlite) or postgresql://...",
        envvar="TAKAMUL_DATABASE_URL",
    ),
]
BaseOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help=f"The server's FHIR base (default TAKAMUL_BASE_URL, else {DEFAULT_BASE})",
        envvar="TAKAMUL_BASE_URL",
    ),
]

clients_app = typer.Typer(help="SMART Backend Services clients.", no_args_is_help=True)
users_app = typer.Typer(help="People's logins for the web interface.", no_args_is_help=True)
keys_app = typer.Typer(help="The server's token signing keys.", no_args_is_help=True)


@contextmanager
def _security(db: str | None) -> Iterator[Security]:
    """Open the security tables; print a refusal (not a traceback) and exit 1 on failure."""
    url = Settings.from_env(database_url=db).database_url
    security = Security.open(url, SecurityConfig.from_env())
    try:
        yield security
    except (FhirError, OAuthError, SigningKeyError, SecurityStartupError) as err:
        console.print(f"[red]{_message(err)}[/]")
        raise typer.Exit(1) from err
    finally:
        security.engine.dispose()


def _message(err: Exception) -> str:
    return err.description if isinstance(err, OAuthError) else str(err)


def _split(value: str) -> list[str]:
    return [v for v in value.replace(",", " ").split() if v]


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- clients ------------------------------------------------------------------------------


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Option("--id", help="The client_id to give the system")],
    name: Annotated[str, typer.Option("--name", help="Who runs it, e.g. 'Olaya PHC EHR'")],
    scopes: Annotated[str, typer.Option("--scopes", help="Allowed scopes, e.g. 'system/*.rs'")],
    jwks: Annotated[
        Path | None, typer.Option("--jwks", help="The client's public JWK Set (JSON file)")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Or one public key (PEM file)")
    ] = None,
    facility: Annotated[
        str | None, typer.Option("--facility", help="Organization id the client acts for")
    ] = None,
    roles: Annotated[str, typer.Option("--roles", help="Roles, comma-separated")] = "",
    db: DbOption = None,
) -> None:
    """Register a Backend Services client: its public keys, allowed scopes and facility."""
    if (jwks is None) == (public_key is None):
        console.print("[red]clients add: give --jwks FILE or --public-key FILE (one of them)[/]")
        raise typer.Exit(2)
    source = jwks if jwks is not None else public_key
    assert source is not None
    text = source.read_text(encoding="utf-8")
    with _security(db) as security:
        client = security.clients.add(
            client_id, name, text, scopes, facility, _split(roles), demo=False
        )
        console.print(
            f"Registered client [bold]{client.client_id}[/] (keys {', '.join(client.kids)}; "
            f"scopes {client.scopes}; facility {client.facility or '-'})"
        )


@clients_app.command("list")
def clients_list(db: DbOption = None) -> None:
    """The registered clients."""
    with _security(db) as security:
        table = Table("client_id", "name", "facility", "scopes", "roles", "keys", "state")
        for c in security.clients.all():
            state = ("active" if c.active else "disabled") + (" DEMO" if c.demo else "")
            table.add_row(
                c.client_id,
                c.name,
                c.facility or "-",
                str(c.scopes),
                " ".join(c.roles) or "-",
                ", ".join(k[:12] for k in c.kids),
                state,
            )
        Console(soft_wrap=True).print(table)


@clients_app.command("disable")
def clients_disable(
    client_id: Annotated[str, typer.Option("--id", help="The client to disable")],
    db: DbOption = None,
) -> None:
    """Refuse the client's assertions from now on (its tokens expire within minutes)."""
    _set_client(client_id, False, db)


@clients_app.command("enable")
def clients_enable(
    client_id: Annotated[str, typer.Option("--id", help="The client to enable again")],
    db: DbOption = None,
) -> None:
    """Accept a disabled client again."""
    _set_client(client_id, True, db)


def _set_client(client_id: str, active: bool, db: str | None) -> None:
    with _security(db) as security:
        if not security.clients.set_active(client_id, active):
            console.print(f"[red]No client '{client_id}'[/]")
            raise typer.Exit(1)
        console.print(f"Client {client_id} {'enabled' if active else 'disabled'}")


@clients_app.command("keygen")
def clients_keygen(
    out: Annotated[Path, typer.Option("--out", help="File prefix, e.g. keys/olaya-ehr")],
    alg: Annotated[str, typer.Option("--alg", help="ES384 or RS384")] = "ES384",
) -> None:
    """Make a key pair for a client: PREFIX.private.jwk (keep it on the client, mode 600) and
    PREFIX.jwks.json (register it with `clients add --jwks`)."""
    if alg not in SIGNING_ALGORITHMS:
        console.print("[red]--alg must be ES384 or RS384[/]")
        raise typer.Exit(2)
    key: ECKey | RSAKey = (
        ECKey.generate_key("P-384") if alg == "ES384" else RSAKey.generate_key(3072)
    )
    kid = key.thumbprint()
    private = {**key.as_dict(private=True), "kid": kid, "alg": alg}
    public = {"keys": [{**key.as_dict(private=False), "kid": kid, "alg": alg, "use": "sig"}]}
    out.parent.mkdir(parents=True, exist_ok=True)
    private_path = Path(f"{out}.private.jwk")
    _write_private(private_path, json.dumps(private, indent=2))
    Path(f"{out}.jwks.json").write_text(json.dumps(public, indent=2) + "\n", encoding="utf-8")
    console.print(f"Wrote {private_path} (private, mode 600) and {out}.jwks.json (public)")


def _write_private(path: Path, text: str) -> None:
    # Created with mode 600 from the start, so that the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


@clients_app.command("assertion")
def clients_assertion(
    client_id: Annotated[str, typer.Option("--client", help="The client_id (iss and sub)")],
    key_file: Annotated[Path, typer.Option("--key", help="The client's private JWK file")],
    token_url: Annotated[
        str | None, typer.Option("--token-url", help="Default: <server root>/auth/token")
    ] = None,
    base_url: BaseOption = None,
) -> None:
    """Print a signed client assertion (five minutes, fresh jti), as a facility system would
    make one: for curl and scripted checks of the token endpoint."""
    from takamul.security.config import server_root

    print(
        make_assertion(
            client_id,
            json.loads(key_file.read_text(encoding="utf-8")),
            token_url or server_root(base_url or DEFAULT_BASE) + "/auth/token",
        )
    )


def make_assertion(client_id: str, private_jwk: dict[str, Any], token_url: str) -> str:
    """A SMART Backend Services client assertion signed with ``private_jwk``."""
    try:
        key = import_key(private_jwk)
    except (JoseError, ValueError) as err:
        raise typer.BadParameter(f"the key file is not a private JWK: {err}") from err
    alg = private_jwk.get("alg") or ("ES384" if private_jwk.get("kty") == "EC" else "RS384")
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    header = {"alg": alg, "kid": private_jwk.get("kid") or key.thumbprint(), "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg])


# -- tokens -------------------------------------------------------------------------------


def token(
    client: Annotated[str, typer.Option("--client", help="A registered client_id")],
    scope: Annotated[str, typer.Option("--scope", help="Scopes, e.g. 'system/*.rs'")],
    lifetime: Annotated[int, typer.Option("--lifetime", help="Seconds (default 300)")] = 300,
    patient: Annotated[
        str | None, typer.Option("--patient", help="Launch patient for patient/ scopes")
    ] = None,
    base_url: BaseOption = None,
    db: DbOption = None,
) -> None:
    """Mint a short-lived access token for a client from the server's own key; prints the
    token alone on standard output (use it as `Authorization: Bearer ...`)."""
    base = (base_url or DEFAULT_BASE).rstrip("/")
    with _security(db) as security:
        security.keys.ensure_signing_key()
        minted = security.tokens.mint(client, scope, base, lifetime, patient)
    print(minted)


# -- users --------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Option("--username", help="The login name")],
    roles: Annotated[str, typer.Option("--roles", help="Roles, comma-separated")],
    facility: Annotated[
        str | None, typer.Option("--facility", help="Organization id (facility-bound roles)")
    ] = None,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    patient: Annotated[
        str | None, typer.Option("--patient", help="The Patient a caregiver acts for")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    db: DbOption = None,
) -> None:
    """Create a person's login with roles (password from a prompt or --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _security(db) as security:
        user = security.users.add(
            username, password, _split(roles), facility, display_name, patient
        )
        console.print(
            f"Created login [bold]{user.username}[/] ({' '.join(user.roles)}; "
            f"facility {user.facility or '-'})"
        )


@users_app.command("list")
def users_list(db: DbOption = None) -> None:
    """The logins, their roles and state (never their hashes)."""
    with _security(db) as security:
        table = Table("username", "name", "roles", "facility", "patient", "state")
        now = time.time()
        for u in security.users.all():
            state = "active" if u.active else "disabled"
            if u.locked_until and u.locked_until > now:
                state = f"locked until {_when(u.locked_until)}"
            table.add_row(
                u.username,
                u.display_name or "-",
                " ".join(u.roles),
                u.facility or "-",
                u.patient or "-",
                state + (" DEMO" if u.demo else ""),
            )
        Console(soft_wrap=True).print(table)


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Option("--username")], db: DbOption = None
) -> None:
    """Disable a login and end its sessions."""
    with _security(db) as security:
        security.users.set_active(username, False)
        console.print(f"Login {username} disabled; its sessions ended")


@users_app.command("unlock")
def users_unlock(username: Annotated[str, typer.Option("--username")], db: DbOption = None) -> None:
    """Lift a lockout after failed logins."""
    with _security(db) as security:
        security.users.unlock(username)
        console.print(f"Login {username} unlocked")


# -- keys ---------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(
    grace: Annotated[
        int | None,
        typer.Option("--grace-seconds", help="How long older keys still verify (default 3600)"),
    ] = None,
    alg: Annotated[str, typer.Option("--alg", help="ES384 or RS384")] = "ES384",
    db: DbOption = None,
) -> None:
    """Create a new signing key; older keys verify for the grace period, then retire."""
    with _security(db) as security:
        seconds = security.config.key_grace_seconds if grace is None else grace
        if seconds < security.config.token_lifetime:
            console.print(
                "[yellow]The grace period is shorter than the token lifetime: some tokens "
                "already issued will stop verifying before they expire[/]"
            )
        key = security.keys.rotate(seconds, alg)
        sealed = "sealed" if key.sealed else "UNSEALED (set TAKAMUL_KEY_SECRET)"
        console.print(f"New signing key {key.kid} ({key.algorithm}, {sealed})")


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """The signing keys: which signs, which verify until when, which are retired."""
    with _security(db) as security:
        table = Table("kid", "alg", "created", "state", "stored")
        now = time.time()
        signing = True
        for k in security.keys.keys(fresh=True):
            if k.retired_at is None and signing:
                state, signing = "signs", False
            elif k.active_at(now):
                state = f"verifies until {_when(k.retired_at)}" if k.retired_at else "verifies"
            else:
                state = f"retired {_when(k.retired_at)}"
            table.add_row(
                k.kid, k.algorithm, _when(k.created), state, "sealed" if k.sealed else "unsealed"
            )
        Console(soft_wrap=True).print(table)


@keys_app.command("retire")
def keys_retire(
    kid: Annotated[str, typer.Argument(help="The key id to retire now")], db: DbOption = None
) -> None:
    """Retire a key at once (compromise): tokens it signed stop verifying."""
    with _security(db) as security:
        if not security.keys.retire(kid):
            console.print(f"[red]No key '{kid}'[/]")
            raise typer.Exit(1)
        console.print(f"Key {kid} retired")


# -- demo ---------------------------------------------------------------------------------

DEMO_USERS = (
    ("demo-clinician", "clinician", "phc-riyadh-olaya", None, "Dr Huda Al-Harbi (DEMO)"),
    ("demo-chw", "community-health-worker", "rhh-fars-1", None, "Zahra Karimi (DEMO)"),
    # the synthetic population's first primary-care centre (takamul synth, SA), where
    # `make demo` puts outreach Tasks: a worklist and patients for the web app's screens
    ("demo-chw-phc", "community-health-worker", "org-phc-00001", None, "Noura (DEMO)"),
    ("demo-clinician-phc", "clinician", "org-phc-00001", None, "Dr Saad (DEMO)"),
    ("demo-coordinator", "care-coordinator", "hosp-king-fahad", None, "Care coordinator (DEMO)"),
    ("demo-analyst", "analyst", None, None, "Equity analyst (DEMO)"),
    ("demo-reviewer", "registry-reviewer", None, None, "Registry reviewer (DEMO)"),
    ("demo-admin", "administrator", None, None, "Administrator (DEMO)"),
    ("demo-caregiver", "caregiver", None, "demo-fatimah", "Abdulrahman, son of Fatimah (DEMO)"),
)
DEMO_CLIENTS = (
    ("demo-facility-ehr", "Olaya PHC EHR (DEMO)", "system/*.cruds", "phc-riyadh-olaya", ""),
    ("demo-ministry", "Ministry integration (DEMO)", "system/*.rs", None, ""),
)


def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the demo clients' private keys")
    ] = Path("data/demo-credentials"),
    db: DbOption = None,
) -> None:
    """Create the clearly marked demo clients and logins (demo- prefix) and print their
    credentials once. Production mode refuses to start while any of them is active."""
    with _security(db) as security:
        security.keys.ensure_signing_key()
        _remove_demo(security)
        table = Table("DEMO login", "password", "role", "facility / patient", title="DEMO ONLY")
        for username, role_name, facility, patient, display in DEMO_USERS:
            password = secrets.token_urlsafe(12)
            security.users.add(
                username, password, [role_name], facility, display, patient, demo=True
            )
            table.add_row(username, password, role_name, facility or patient or "-")
        Console(soft_wrap=True).print(table)
        out.mkdir(parents=True, exist_ok=True)
        for client_id, name, scopes, facility, roles in DEMO_CLIENTS:
            key = ECKey.generate_key("P-384")
            kid = key.thumbprint()
            private = {**key.as_dict(private=True), "kid": kid, "alg": "ES384"}
            public = {"keys": [{**key.as_dict(private=False), "kid": kid, "alg": "ES384"}]}
            security.clients.add(
                client_id, name, public, scopes, facility, _split(roles), demo=True
            )
            path = out / f"{client_id}.private.jwk"
            _write_private(path, json.dumps(private, indent=2))
            console.print(f"DEMO client [bold]{client_id}[/] ({scopes}): private key {path}")
        console.print(
            "[yellow]These are DEMO credentials, printed once; production mode refuses to "
            "start while they exist.[/]"
        )


def _remove_demo(security: Security) -> None:
    # Re-running the demo replaces its credentials: the old ones were printed only once.
    from sqlalchemy import delete

    from takamul.security.schema import security_client, security_session, security_user

    with security.engine.begin() as conn:
        ids = [u.id for u in security.users.all() if u.demo]
        conn.execute(delete(security_session).where(security_session.c.user_id.in_(ids)))
        conn.execute(delete(security_user).where(security_user.c.demo.is_(True)))
        conn.execute(delete(security_client).where(security_client.c.demo.is_(True)))
