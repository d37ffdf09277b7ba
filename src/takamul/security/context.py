"""Who is asking and what they may do: the ``AccessContext`` of a request, made from its bearer
token or session cookie, with the checks the API asks of it (``allows``, ``require``,
``search_restrictions``) and break-the-glass.

Break-the-glass: a clinician sends ``X-Break-Glass-Reason: <why>`` (percent-encode non-ASCII);
the context then carries the reason, facility scoping is lifted for that request (never the
scopes), and the server must write the access to the audit log flagged for review.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from starlette.datastructures import Headers

from takamul.fhir.definitions import definitions
from takamul.fhir.search_values import ReferenceEntry
from takamul.security.errors import forbidden, unauthenticated
from takamul.security.memo import ByIdentity
from takamul.security.roles import ROLES, capabilities_for_roles, scopes_for_roles
from takamul.security.scopes import Restriction, ScopeSet, combine_restrictions, search_indexer
from takamul.security.tokens import AccessToken, TokenService
from takamul.security.users import User, UserDirectory

__all__ = [
    "BREAK_GLASS_HEADER",
    "PATIENT_CONTEXT_REFERENCE_TYPES",
    "SESSION_COOKIE",
    "SESSION_COOKIE_HTTPS",
    "AccessContext",
    "authenticate",
    "context_for_token",
    "context_for_user",
    "session_cookie",
]

SESSION_COOKIE = "takamul_session"
# Over https the __Host- prefix makes browsers refuse the cookie unless Secure, Path=/ and
# without Domain, so that no sibling subdomain can plant or read it.
SESSION_COOKIE_HTTPS = "__Host-takamul_session"
BREAK_GLASS_HEADER = "x-break-glass-reason"
MIN_REASON, MAX_REASON = 10, 500
# Outside the Patient compartment, patient/ scopes reach only who and where care happens and
# the forms to fill, never other people's data (Person, Group...).
PATIENT_CONTEXT_REFERENCE_TYPES = frozenset(
    {
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "HealthcareService",
        "Medication",
        "Questionnaire",
        "ValueSet",
        "CodeSystem",
    }
)


@dataclass(frozen=True, slots=True)
class AccessContext:
    """What the server knows about who makes a request."""

    client_id: str | None  # a Backend Services client (token); None for a person's session
    user: str | None  # a person's username (session); None for a client
    roles: frozenset[str]
    facility: str | None  # Organization id; None = not bound to a facility
    scopes: ScopeSet
    patient: str | None = None  # launch patient of patient/ scopes (a caregiver's dependent)
    break_glass: str | None = None  # the reason given, when breaking the glass
    capabilities: frozenset[str] = frozenset()
    token_id: str | None = None  # the access token's jti, for the audit log
    display_name: str | None = None

    @property
    def who(self) -> str:
        """``client:<id>`` or ``user:<name>``, for the audit log."""
        return f"client:{self.client_id}" if self.client_id else f"user:{self.user}"

    @property
    def facility_scoped(self) -> bool:
        """Patients are limited to the facility's own and those it treats (see roles.py)."""
        return self.facility is not None and self.break_glass is None

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def allows(
        self, resource_type: str, interaction: str, resource: dict[str, Any] | None = None
    ) -> bool:
        """Scopes (with granular restrictions) and patient context allow ``interaction`` (c, r,
        u, d, s) on ``resource_type``; with ``resource``, on that resource. Facility scoping
        and consent are the server's further checks."""
        if resource is not None and resource.get("resourceType") != resource_type:
            return False
        for grant in self.scopes.grants(resource_type, interaction):
            if resource is not None and not grant.matches(resource):
                continue
            if grant.context == "patient" and not self._patient_allows(resource_type, resource):
                continue
            return True
        return False

    def allows_whole_type(self, resource_type: str, interaction: str) -> bool:
        """``allows`` holds for every resource of the type: a scope grants it with no granular
        restriction and outside a patient context."""
        return any(
            not grant.restrictions and grant.context != "patient"
            for grant in self.scopes.grants(resource_type, interaction)
        )

    def require(
        self, resource_type: str, interaction: str, resource: dict[str, Any] | None = None
    ) -> None:
        """``allows``, or a 403 AuthError that says what was refused."""
        if not self.allows(resource_type, interaction, resource):
            what = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
            target = f"{resource_type}/{resource.get('id')}" if resource else resource_type
            raise forbidden(
                f"The granted scopes ({self.scopes or 'none'}) do not allow "
                f"{what.get(interaction, interaction)} of {target}"
            )

    def search_restrictions(self, resource_type: str) -> list[Restriction]:
        """Search parameters to AND into a search of ``resource_type``: the scopes' granular
        restrictions and, for patient/ scopes, the launch patient (by the compartment's
        ``patient`` or ``subject`` parameter: narrower than the compartment, never wider).
        ``[]`` when nothing needs adding; a 403 AuthError when the search is not allowed."""
        alternatives: list[tuple[Restriction, ...]] = []
        for grant in self.scopes.grants(resource_type, "s"):
            extra = self._patient_restriction(resource_type) if grant.context == "patient" else ()
            if extra is not None:
                alternatives.append(grant.restrictions + extra)
        if not alternatives:
            raise forbidden(
                f"The granted scopes ({self.scopes or 'none'}) do not allow searching "
                f"{resource_type}"
            )
        combined = combine_restrictions(alternatives)
        if combined is None:
            raise forbidden(
                f"The granted scopes restrict {resource_type} in ways that cannot be combined "
                "into one search; ask for a token with only one of them"
            )
        return combined

    def in_patient_compartment(self, resource: dict[str, Any]) -> bool:
        """The resource is in the launch patient's compartment (R4 CompartmentDefinition)."""
        if self.patient is None:
            return False
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            return resource.get("id") == self.patient
        params = definitions().patient_data().get(str(rtype))
        if not params:
            return False
        try:
            entries = search_indexer().extract(resource)
        except ValueError:
            return False
        return any(
            isinstance(e, ReferenceEntry)
            and e.target_type == "Patient"
            and e.target_id == self.patient
            for p in params
            for e in entries.get(p, ())
        )

    def _patient_allows(self, resource_type: str, resource: dict[str, Any] | None) -> bool:
        if self.patient is None:
            return False
        if resource_type in PATIENT_CONTEXT_REFERENCE_TYPES:
            return True
        if resource is None:
            return _in_compartment_types(resource_type)
        return self.in_patient_compartment(resource)

    def _patient_restriction(self, resource_type: str) -> tuple[Restriction, ...] | None:
        if self.patient is None:
            return None
        if resource_type == "Patient":
            return (("_id", self.patient),)
        if resource_type in PATIENT_CONTEXT_REFERENCE_TYPES:
            return ()
        params = definitions().patient_data().get(resource_type)
        if not params:
            return None
        param = next((p for p in ("patient", "subject") if p in params), params[0])
        return ((param, f"Patient/{self.patient}"),)


def _in_compartment_types(resource_type: str) -> bool:
    return resource_type == "Patient" or resource_type in definitions().patient_data()


def context_for_token(token: AccessToken) -> AccessContext:
    """The context of a verified token, made once per token object (the token service keeps one
    while the token is valid), not for every request made with it."""
    return _CONTEXTS(token)


def _new_context(token: AccessToken) -> AccessContext:
    roles = frozenset(token.roles)
    return AccessContext(
        client_id=token.client_id,
        user=None,
        roles=roles,
        facility=token.facility,
        scopes=token.scopes,
        patient=token.patient,
        capabilities=capabilities_for_roles(r for r in roles if r in ROLES),
        token_id=token.token_id,
    )


_CONTEXTS: ByIdentity[AccessToken, AccessContext] = ByIdentity(_new_context)


def context_for_user(user: User) -> AccessContext:
    known = [r for r in user.roles if r in ROLES]
    return AccessContext(
        client_id=None,
        user=user.username,
        roles=frozenset(user.roles),
        facility=user.facility,
        scopes=scopes_for_roles(known),
        patient=user.patient,
        capabilities=capabilities_for_roles(known),
        display_name=user.display_name,
    )


def authenticate(
    headers: Mapping[str, str],
    *,
    tokens: TokenService,
    users: UserDirectory,
    audience: str,
) -> AccessContext:
    """The context of a request from ``Authorization: Bearer`` (an access token for
    ``audience``, our FHIR base) or else the session cookie; 401 when neither holds, 403 when
    break-the-glass is asked by someone who may not."""
    # Starlette's headers are looked up case-insensitively already; any other mapping is copied
    lower = headers if isinstance(headers, Headers) else {k.lower(): v for k, v in headers.items()}
    context = _credentials(lower, tokens, users, audience)
    reason = lower.get(BREAK_GLASS_HEADER)
    if reason is None:
        return context
    return _break_glass(context, reason)


def _credentials(
    headers: Mapping[str, str], tokens: TokenService, users: UserDirectory, audience: str
) -> AccessContext:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthenticated(
                "Send the access token as 'Authorization: Bearer <token>'", error="invalid_request"
            )
        return context_for_token(tokens.verify(value.strip(), audience))
    session = session_cookie(headers.get("cookie", ""))
    if session:
        return context_for_user(users.session_user(session))
    raise unauthenticated(
        "Authentication required: send 'Authorization: Bearer <access token>' (SMART Backend "
        "Services, see /.well-known/smart-configuration) or log in at /auth/login",
        error="",
    )


def session_cookie(cookie_header: str) -> str | None:
    """The session token from a Cookie header (the __Host- name first)."""
    found: dict[str, str] = {}
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name in (SESSION_COOKIE_HTTPS, SESSION_COOKIE):
            found.setdefault(name, value.strip().strip('"'))
    return found.get(SESSION_COOKIE_HTTPS) or found.get(SESSION_COOKIE) or None


def _break_glass(context: AccessContext, raw: str) -> AccessContext:
    if not context.has("break-glass"):
        raise forbidden(
            "Break-the-glass (X-Break-Glass-Reason) is for clinicians only; send the request "
            "without that header"
        )
    reason = " ".join(unquote(raw).split())
    if not MIN_REASON <= len(reason) <= MAX_REASON:
        raise forbidden(
            f"Break-the-glass needs a reason of {MIN_REASON} to {MAX_REASON} characters in "
            "X-Break-Glass-Reason (percent-encode non-ASCII text)"
        )
    return replace(context, break_glass=reason)
