"""How the screens name people: one function, so a patient, a caregiver and a referred person
are called the same way on every screen."""

from __future__ import annotations

from typing import Any

__all__ = ["person_name"]


def person_name(person: dict[str, Any]) -> str:
    """The name to call someone by (a Patient, RelatedPerson or Practitioner): the official
    (else first) name, its text, else given names then family."""
    names = person.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    if name.get("text"):
        return str(name["text"])
    return " ".join([*name.get("given", []), name.get("family", "")]).strip()
