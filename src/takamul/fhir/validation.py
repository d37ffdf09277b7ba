"""Structural validation of FHIR R4 JSON resources, driven by the loaded StructureDefinitions.

Checks names, JSON shapes, cardinality, primitive formats and references, reporting every issue.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from takamul.fhir.definitions import ElementDef, TypeDef, definitions

__all__ = ["Issue", "validate_resource"]


@dataclass(frozen=True, slots=True)
class Issue:
    severity: str  # "error" | "warning"
    code: str  # FHIR issue-type code: structure, required, value, invalid, not-supported, invariant
    diagnostics: str
    expression: str  # FHIRPath location, e.g. "Patient.name[0].given[1]"


def validate_resource(resource: object, expected_type: str | None = None) -> list[Issue]:
    """Every structural problem of ``resource``; no issue of severity "error" means it is valid."""
    issues: list[Issue] = []
    if not isinstance(resource, dict):
        _error(
            issues,
            "structure",
            "A FHIR resource must be a JSON object; send an object with a 'resourceType' property",
            expected_type or "Resource",
        )
        return issues
    rtype = resource.get("resourceType")
    if expected_type is not None and isinstance(rtype, str) and rtype != expected_type:
        _error(
            issues,
            "invalid",
            f"The resource is a {rtype} but a {expected_type} was expected; "
            f"send a {expected_type} or use the {rtype} endpoint",
            expected_type,
        )
    try:
        _check_resource(resource, "", issues, contained=False)
    except RecursionError:
        # Hostile input (e.g. extensions nested thousands deep) must not crash the caller.
        message = "The resource is nested too deeply to validate; flatten its structure"
        _error(issues, "too-costly", message, rtype if isinstance(rtype, str) else "Resource")
    return issues


# ---------------------------------------------------------------------------------------------
# Precomputed index: per (type, path) node, the JSON property names it accepts.


Checker = Callable[[Any], str | None]
_SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)


@dataclass(slots=True)
class _Slot:
    """What one JSON property name means inside one node."""

    key: str  # JSON name, e.g. "valueQuantity" or "_given"
    step: str  # FHIRPath step, e.g. "value.ofType(Quantity)"
    code: str  # the FHIR type of the value
    array: bool
    max_count: int | None  # a numeric max cardinality above 1, else None
    shadow: bool  # a "_name" holding the id/extension of a primitive
    shadow_key: str  # for a primitive, the name of its "_name" sibling (for nulls in arrays)
    base_key: str  # for a shadow, the name of the primitive it extends
    checker: Checker | None  # set for primitives
    node_key: tuple[str, str] | None  # set for complex types: the node holding the children
    targets: tuple[str, ...]  # Reference targets; () or ("Resource",) means any
    choice: str | None  # the choice element path, e.g. "Observation.value[x]"
    contained: bool  # DomainResource.contained: the value is a contained resource
    node: _Node | None = None  # node_key's node, filled in on first use


@dataclass(slots=True)
class _Node:
    label: str  # definition path used in messages, e.g. "Patient.contact" or "HumanName"
    slots: dict[str, _Slot]
    required: tuple[tuple[str, tuple[str, ...], int], ...]  # (step, JSON names, min)
    choices: tuple[tuple[str, ElementDef], ...]  # (stem, element) for choice elements
    is_resource: bool
    extension_value_keys: frozenset[str] | None  # set for the Extension type (ext-1)


@cache
def _children_index(type_name: str) -> dict[str, tuple[ElementDef, ...]]:
    """Parent path -> its direct child elements; one pass per type instead of a scan per lookup."""
    out: dict[str, list[ElementDef]] = {}
    for path, el in definitions().types[type_name].elements.items():
        if "." in path:
            out.setdefault(path.rsplit(".", 1)[0], []).append(el)
    return {parent: tuple(children) for parent, children in out.items()}


_NODES: dict[tuple[str, str], _Node] = {}


def _node(key: tuple[str, str]) -> _Node:
    # Built lazily by key so that self-referencing types (Extension.extension, Questionnaire.item)
    # terminate: a slot stores the key, never the node itself.
    node = _NODES.get(key)
    if node is None:
        node = _NODES[key] = _build_node(*key)
    return node


def _build_node(type_name: str, path: str) -> _Node:
    typedef = definitions().types[type_name]
    is_resource = path == type_name and typedef.kind == "resource"
    slots: dict[str, _Slot] = {}
    required: list[tuple[str, tuple[str, ...], int]] = []
    choices: list[tuple[str, ElementDef]] = []
    for el in _children_index(type_name).get(path, ()):
        if el.max == "0":
            continue  # prohibited (xhtml.extension): an unknown name is the right report
        new = _element_slots(typedef, el, is_resource)
        slots.update((s.key, s) for s in new)
        if el.is_choice:
            choices.append((el.name, el))
        if el.min > 0:
            required.append((_display(el), tuple(s.key for s in new), el.min))
    ext_keys = None
    if type_name == "Extension" and path == "Extension":
        ext_keys = frozenset(k for k, s in slots.items() if s.choice == "Extension.value[x]")
    return _Node(path, slots, tuple(required), tuple(choices), is_resource, ext_keys)


def _display(el: ElementDef) -> str:
    return el.name + "[x]" if el.is_choice else el.name


def _element_slots(typedef: TypeDef, el: ElementDef, in_resource: bool) -> list[_Slot]:
    """The JSON names one element can appear under (choice variants and "_name" shadows)."""
    target = _resolve_ref(typedef, el)
    inline = target.path in _children_index(typedef.name)
    max_count = int(el.max) if el.max not in ("1", "*") else None
    out = []
    for tref in target.types:
        code = _normalise(tref.code)
        stem = el.name
        key, step = stem, stem
        if el.is_choice:
            key = stem + _upper_first(code)
            step = f"{stem}.ofType({code})"
        primitive = _is_primitive(code)
        node_key = None
        if not primitive and code != "Resource":
            node_key = (typedef.name, target.path) if inline else (code, code)
        slot = _Slot(
            key=key,
            step=step,
            code=code,
            array=el.is_array,
            max_count=max_count,
            shadow=False,
            shadow_key="_" + key,
            base_key="",
            checker=_checker(code) if primitive else None,
            node_key=node_key,
            targets=tref.targets,
            choice=el.path if el.is_choice else None,
            contained=code == "Resource" and el.path.endswith(".contained"),
        )
        out.append(slot)
        if primitive and _may_have_shadow(typedef, el, code, in_resource):
            out.append(_shadow_slot(slot))
    return out


def _resolve_ref(typedef: TypeDef, el: ElementDef) -> ElementDef:
    """Follow contentReference (e.g. Questionnaire.item.item -> Questionnaire.item)."""
    seen = set()
    while el.ref is not None and el.ref not in seen:
        seen.add(el.ref)
        el = typedef.elements[el.ref]
    return el


def _shadow_slot(base: _Slot) -> _Slot:
    return _Slot(
        key="_" + base.key,
        step=base.step,
        code="Element",
        array=base.array,
        max_count=base.max_count,
        shadow=True,
        shadow_key="",
        base_key=base.key,
        checker=None,
        node_key=("Element", "Element"),
        targets=(),
        choice=base.choice,
        contained=False,
    )


def _may_have_shadow(typedef: TypeDef, el: ElementDef, code: str, in_resource: bool) -> bool:
    # Element.id and Extension.url are XML attributes, and xhtml carries no extensions: none of
    # them can have a "_name" sibling. Resource.id is a real element and can.
    if code == "xhtml" or (el.name == "id" and not in_resource):
        return False
    return not (typedef.name == "Extension" and el.path == "Extension.url")


def _normalise(code: str) -> str:
    # FHIRPath system types (System.String) carry a plain string in JSON.
    return "string" if code.startswith(_SYSTEM_PREFIX) else code


def _upper_first(code: str) -> str:
    return code[:1].upper() + code[1:]


def _is_primitive(code: str) -> bool:
    typedef = definitions().types.get(code)
    return typedef is not None and typedef.kind == "primitive-type"


# ---------------------------------------------------------------------------------------------
# Primitive values


# Hints for the formats people get wrong most; the regex itself is the authority.
_FORMAT_HINTS = {
    "date": "use YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz (time needs a zone)",
    "instant": "use YYYY-MM-DDThh:mm:ss.sss+zz:zz (with a time zone)",
    "time": "use hh:mm:ss",
    "id": "use 1-64 characters from A-Z, a-z, 0-9, '-' and '.'",
    "uuid": "use urn:uuid: followed by a lower-case UUID",
    "oid": "use urn:oid: followed by a dotted OID",
    "code": "codes have no leading/trailing or repeated whitespace",
}


_XSD_SPACES = " \t\n\r"
_XSD_SPACE_FORMS = {
    " ": " ",
    "\t": "\t",
    "\n": "\n",
    "\r": "\r",
    "\\t": "\t",
    "\\n": "\n",
    "\\r": "\r",
}


def _xsd_to_python(pattern: str) -> str:
    r"""Translate an XML-schema regex to Python's dialect.

    XML schema's \s is only [ \t\n\r], while Python's also matches Unicode spaces (e.g. U+00A0),
    which would wrongly reject such characters in strings.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = pattern.index("]", i + 1)
            out.append(_xsd_class(pattern[i + 1 : end]))
            i = end + 1
        elif pattern.startswith(("\\s", "\\S"), i):
            out.append("[ \\t\\n\\r]" if pattern[i + 1] == "s" else "[^ \\t\\n\\r]")
            i += 2
        else:
            step = 2 if pattern[i] == "\\" else 1
            out.append(pattern[i : i + step])
            i += step
            continue
        if out[-1] == "[ \\t\\n\\r]" and pattern[i : i + 1] in ("*", "+"):
            # A whitespace run is never followed by something that needs its spaces (base64Binary:
            # "(\s*([0-9a-zA-Z\+/=]){4}\s*)+"), so make it possessive: without that, an
            # invalid base64 value takes exponential time to reject.
            out.append(pattern[i] + "+")
            i += 1
    return "".join(out)


def _xsd_class(body: str) -> str:
    """One character class; a class with \\S is "not whitespace" plus the spaces it lists."""
    body = body.replace("\\s", " \\t\\n\\r")
    if "\\S" not in body:
        return f"[{body}]"
    if body.startswith("^"):
        raise ValueError(f"unsupported XML-schema character class: [{body}]")
    # Everything else in the class is non-whitespace, already covered by \S.
    listed = {space for form, space in _XSD_SPACE_FORMS.items() if form in body.replace("\\S", "")}
    missing = "".join(s for s in _XSD_SPACES if s not in listed)
    return "[^" + missing.encode("unicode_escape").decode() + "]" if missing else "(?s:.)"


@cache
def _regex(code: str) -> re.Pattern[str] | None:
    pattern = definitions().primitive_regex.get(code)
    return re.compile(_xsd_to_python(pattern)) if pattern else None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


_INT_LOW = {"integer": _INT32_MIN, "positiveInt": 1, "unsignedInt": 0}


@cache
def _checker(code: str) -> Checker:
    if code == "boolean":
        return _check_boolean
    if code in _INT_LOW:
        return partial(_check_integer, code=code, low=_INT_LOW[code])
    if code == "decimal":
        return _check_decimal
    if code == "xhtml":
        return _check_xhtml
    return _string_checker(code)


def _check_boolean(value: object) -> str | None:
    if value is True or value is False:
        return None
    return f"Expected a JSON boolean but got {_json_kind(value)}; send true or false without quotes"


def _check_integer(value: object, code: str, low: int) -> str | None:
    if value.__class__ is not int:  # bool is a subclass of int, so compare the exact class
        return (
            f"Expected a JSON integer ({code}) but got {_json_kind(value)}; "
            "send a whole number without quotes"
        )
    assert isinstance(value, int)
    if not low <= value <= _INT32_MAX:
        return f"{value} is out of range for {code} ({low}..{_INT32_MAX}); send a value in range"
    return None


def _check_decimal(value: object) -> str | None:
    if value.__class__ is int:
        return None
    if isinstance(value, float):
        # Python's json module accepts NaN and Infinity, which are not JSON numbers.
        return None if math.isfinite(value) else f"{value} is not a number; send a finite decimal"
    return f"Expected a JSON number (decimal) but got {_json_kind(value)}; send it without quotes"


def _check_xhtml(value: object) -> str | None:
    if not isinstance(value, str):
        return f"Narrative div must be a JSON string of XHTML but got {_json_kind(value)}"
    if not value.lstrip().startswith("<div"):
        return (
            "Narrative div must be XHTML starting with '<div'; wrap the narrative in "
            '<div xmlns="http://www.w3.org/1999/xhtml">...</div>'
        )
    return None


def _string_checker(code: str) -> Checker:
    fullmatch = _fullmatch(code)

    def check(value: object) -> str | None:
        if value.__class__ is str and fullmatch(value):
            return None
        return _string_problem(value, code)

    return check


def _fullmatch(code: str) -> Callable[[str], object]:
    regex = _regex(code)
    # string and markdown allow any character ("[ \r\n\t\S]+" translates to "(?s:.)+"): for
    # those, being non-empty is the whole check, and skipping the regex halves the time on text.
    if regex is None or regex.pattern == "(?s:.)+":
        return bool
    return regex.fullmatch


def _string_problem(value: object, code: str) -> str | None:
    if not isinstance(value, str):
        return (
            f"Expected a JSON string ({code}) but got {_json_kind(value)}; send the value in quotes"
        )
    if value == "":
        return f"Empty string is not allowed for a {code}; omit the element or give it a value"
    hint = _FORMAT_HINTS.get(code, "correct the value")
    return f"Invalid {code} value {_shorten(value)!r}: not in the R4 {code} format; {hint}"


def _shorten(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Walking the JSON


def _error(issues: list[Issue], code: str, diagnostics: str, expression: str) -> None:
    issues.append(Issue("error", code, diagnostics, expression))


def _check_resource(obj: object, loc: str, issues: list[Issue], contained: bool) -> None:
    """Validate ``obj`` as a resource of its own resourceType; ``loc`` is "" at the root."""
    where = loc or "Resource"
    if not isinstance(obj, dict):
        kind = _json_kind(obj)
        _error(issues, "structure", f"Expected a resource (a JSON object) but got {kind}", where)
        return
    rtype = obj.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        message = "Missing 'resourceType'; a resource needs a 'resourceType' string naming its type"
        _error(issues, "structure", message, where)
        return
    if rtype not in definitions().resource_types:
        message = f"Unknown resource type {rtype!r}; use one of the concrete FHIR R4 resource types"
        _error(issues, "not-supported", message, where)
        return
    loc = loc or rtype
    _walk(obj, _node((rtype, rtype)), loc, issues)
    _check_resource_id(obj, rtype, loc, issues)
    if contained:
        _check_contained_rules(obj, rtype, loc, issues)


def _check_resource_id(obj: dict[str, Any], rtype: str, loc: str, issues: list[Issue]) -> None:
    # Resource.id is typed "string" in the snapshot, but its content must have the id format.
    rid = obj.get("id")
    if isinstance(rid, str) and rid:
        message = _checker("id")(rid)
        if message is not None:
            _error(issues, "value", f"{rtype}.id: {message}", f"{loc}.id")


def _check_contained_rules(obj: dict[str, Any], rtype: str, loc: str, issues: list[Issue]) -> None:
    if "id" not in obj:
        message = f"Contained {rtype} has no 'id'; give it one so the container can refer to '#id'"
        _error(issues, "required", message, loc)
    if "contained" in obj:
        message = (
            f"Contained {rtype} must not contain resources itself (dom-2); "
            "move them into the container's 'contained'"
        )
        _error(issues, "structure", message, f"{loc}.contained")


def _walk(obj: dict[str, Any], node: _Node, loc: str, issues: list[Issue]) -> None:
    slots = node.slots
    seen_choice: dict[str, str] | None = None
    for key, value in obj.items():
        slot = slots.get(key)
        if slot is None:
            if key != "resourceType" or not node.is_resource:
                _error(issues, "structure", _unknown_message(key, node), f"{loc}.{key}")
            continue
        if slot.choice is not None:
            seen_choice = _note_choice(seen_choice, slot, loc, issues)
        checker = slot.checker
        # Fast path for the commonest case, a single primitive value: no path string is built.
        if checker is not None and not slot.array and value is not None and type(value) is not list:
            message = checker(value)
            if message is not None:
                _error(issues, "value", message, f"{loc}.{slot.step}")
        elif slot.shadow:
            _check_shadow(value, slot, obj, f"{loc}.{slot.step}", issues)
        else:
            _check_value(value, slot, obj, f"{loc}.{slot.step}", issues)
    if node.required:
        _check_required(obj, node, loc, issues)
    if node.extension_value_keys is not None:
        _check_extension_rule(obj, node.extension_value_keys, loc, issues)


def _note_choice(
    seen: dict[str, str] | None, slot: _Slot, loc: str, issues: list[Issue]
) -> dict[str, str]:
    """Record which type of a choice element is used; two types of one choice is an error."""
    seen = {} if seen is None else seen
    assert slot.choice is not None
    first = seen.setdefault(slot.choice, slot.step)
    if first != slot.step:
        stem = first.split(".", 1)[0]
        message = (
            f"Only one type of {stem}[x] may be given, but both {first} and {slot.step} "
            "are present; keep one"
        )
        _error(issues, "structure", message, f"{loc}.{slot.step}")
    return seen


def _check_required(obj: dict[str, Any], node: _Node, loc: str, issues: list[Issue]) -> None:
    # A primitive that has only its "_name" (extensions, e.g. data-absent-reason) is present.
    for step, names, minimum in node.required:
        if minimum == 1:
            for name in names:
                if name in obj:
                    break
            else:
                _missing(node, step, 0, minimum, loc, issues)
            continue
        values = [obj[name] for name in names if name in obj]
        count = max((len(v) if isinstance(v, list) else 1 for v in values), default=0)
        if count < minimum:
            _missing(node, step, count, minimum, loc, issues)


def _missing(
    node: _Node, step: str, count: int, minimum: int, loc: str, issues: list[Issue]
) -> None:
    what = "is missing" if count == 0 else f"has only {count} value(s)"
    message = (
        f"Required element '{step}' {what} in {node.label} (minimum cardinality {minimum}); add it"
    )
    _error(issues, "required", message, f"{loc}.{step.removesuffix('[x]')}")


def _check_value(
    value: object, slot: _Slot, parent: dict[str, Any], path: str, issues: list[Issue]
) -> None:
    if value is None:
        message = f"'{slot.key}' is null; FHIR JSON does not allow nulls, omit the element instead"
        _error(issues, "structure", message, path)
    elif slot.array:
        _check_array(value, slot, parent, path, issues)
    elif isinstance(value, list):
        message = f"'{slot.key}' allows a single value but got a JSON array; send one value"
        _error(issues, "structure", message, path)
    else:
        _check_item(value, slot, path, issues)


def _check_array(
    value: object, slot: _Slot, parent: dict[str, Any], path: str, issues: list[Issue]
) -> None:
    if not isinstance(value, list):
        message = f"'{slot.key}' repeats, so it must be a JSON array; wrap the value in [ ]"
        _error(issues, "structure", message, path)
        _check_item(value, slot, path, issues)
        return
    if not value:
        message = f"'{slot.key}' is an empty array; FHIR JSON does not allow that, omit the element"
        _error(issues, "structure", message, path)
        return
    if slot.max_count is not None and len(value) > slot.max_count:
        message = f"'{slot.key}' has {len(value)} values but allows at most {slot.max_count}"
        _error(issues, "structure", message, path)
    shadow = parent.get(slot.shadow_key) if slot.checker is not None else None
    for i, item in enumerate(value):
        if item is None:
            # A null is how a primitive array says "this entry only has extensions in _name".
            if not (isinstance(shadow, list) and i < len(shadow) and shadow[i] is not None):
                message = f"'{slot.key}[{i}]' is null; allowed only when '_{slot.key}[{i}]' is not"
                _error(issues, "structure", message, f"{path}[{i}]")
            continue
        _check_item(item, slot, f"{path}[{i}]", issues)


def _check_item(value: object, slot: _Slot, path: str, issues: list[Issue]) -> None:
    if slot.checker is not None:
        message = slot.checker(value)
        if message is not None:
            _error(issues, "value", message, path)
    elif slot.node_key is None:
        _check_resource(value, path, issues, contained=slot.contained)
    elif _object_shape_ok(value, slot, path, issues):
        assert isinstance(value, dict)
        node = slot.node
        if node is None:
            node = slot.node = _node(slot.node_key)
        _walk(value, node, path, issues)
        if slot.code == "Reference":
            _check_reference(value, slot.targets, path, issues)


def _object_shape_ok(value: object, slot: _Slot, path: str, issues: list[Issue]) -> bool:
    if not isinstance(value, dict):
        message = f"'{slot.key}' must be a JSON object ({slot.code}) but got {_json_kind(value)}"
        _error(issues, "structure", message, path)
        return False
    if not value:
        message = (
            f"'{slot.key}' is an empty object; FHIR JSON does not allow that, omit the element"
        )
        _error(issues, "structure", message, path)
        return False
    if len(value) == 1 and "id" in value and not slot.shadow:  # a shadow's value is its sibling
        message = f"'{slot.key}' has only an 'id' (ele-1); give it content or omit the element"
        _error(issues, "invariant", message, path)
    return True


def _check_shadow(
    value: object, slot: _Slot, parent: dict[str, Any], path: str, issues: list[Issue]
) -> None:
    base = parent.get(slot.base_key)
    if value is None:
        _error(issues, "structure", f"'{slot.key}' is null; omit it instead", path)
    elif not slot.array:
        if isinstance(value, list):
            message = f"'{slot.key}' must be one object because '{slot.base_key}' does not repeat"
            _error(issues, "structure", message, path)
        else:
            _check_item(value, slot, path, issues)
    elif not isinstance(value, list) or not value:
        message = f"'{slot.key}' must be a non-empty JSON array aligned with '{slot.base_key}'"
        _error(issues, "structure", message, path)
    else:
        _check_shadow_items(value, slot, base, path, issues)


def _check_shadow_items(
    value: list[Any], slot: _Slot, base: object, path: str, issues: list[Issue]
) -> None:
    if isinstance(base, list) and len(base) != len(value):
        message = (
            f"'{slot.key}' has {len(value)} entries but '{slot.base_key}' has {len(base)}; "
            "they must line up one to one (use null for entries without extensions)"
        )
        _error(issues, "structure", message, path)
    for i, item in enumerate(value):
        if item is None:
            if not isinstance(base, list):  # with a base array, its own null check covers this
                message = f"'{slot.key}[{i}]' is null and there is no '{slot.base_key}' value"
                _error(issues, "structure", message, f"{path}[{i}]")
            continue
        _check_item(item, slot, f"{path}[{i}]", issues)


def _unknown_message(key: str, node: _Node) -> str:
    label = node.label
    if key == "resourceType":
        return (
            f"'resourceType' is only allowed at the root of a resource, not in {label}; remove it"
        )
    stem = key.removeprefix("_")
    if key.startswith("_") and stem in node.slots:
        return f"'{key}' is not allowed: '{stem}' in {label} is not a primitive value"
    for choice_stem, el in node.choices:
        if stem == choice_stem:
            return f"'{key}' in {label} needs a type suffix; use one of {_choice_names(el)}"
        suffix = stem[len(choice_stem) :]
        if stem.startswith(choice_stem) and suffix[:1].isupper():
            return (
                f"'{key}': '{suffix}' is not an allowed type for {choice_stem}[x] in {label}; "
                f"use one of {_choice_names(el)}"
            )
    return (
        f"Unknown element '{key}' in {label}; "
        f"check the spelling against the R4 definition of {label}"
    )


def _choice_names(el: ElementDef) -> str:
    names = [el.name + _upper_first(_normalise(t.code)) for t in el.types]
    return ", ".join(names if len(names) <= 8 else [*names[:8], "..."])


def _check_extension_rule(
    obj: dict[str, Any], value_keys: frozenset[str], loc: str, issues: list[Issue]
) -> None:
    # ext-1: an extension has either a value[x] or nested extensions, never both, never neither.
    has_value = not value_keys.isdisjoint(obj)
    has_nested = "extension" in obj
    if has_value and has_nested:
        message = "An extension has both a value[x] and nested 'extension' (ext-1); remove one"
        _error(issues, "invariant", message, loc)
    elif not has_value and not has_nested:
        message = "An extension needs a value[x] or nested 'extension' (ext-1); add a value"
        _error(issues, "invariant", message, loc)


# ---------------------------------------------------------------------------------------------
# References


@cache
def _relative_ref() -> re.Pattern[str]:
    id_pattern = _xsd_to_python(definitions().primitive_regex["id"])
    return re.compile(rf"([A-Z][A-Za-z]+)/({id_pattern})(?:/_history/({id_pattern}))?")


_CONDITIONAL_REF = re.compile(r"([A-Z][A-Za-z]+)\?\S+")


def _check_reference(
    value: dict[str, Any], targets: tuple[str, ...], path: str, issues: list[Issue]
) -> None:
    ref = value.get("reference")
    if not isinstance(ref, str) or not ref:
        return  # a wrong type or empty string is already reported as a value problem
    problem = _reference_problem(ref, targets)
    if problem is not None:
        _error(issues, problem[0], problem[1], f"{path}.reference")


def _reference_problem(ref: str, targets: tuple[str, ...]) -> tuple[str, str] | None:
    """(issue code, message) when ``ref`` is not a usable reference for these targets."""
    if ref == "#":
        return None  # a contained resource referring to its container
    if ref.startswith(("http://", "https://")):
        ok = _checker("url")(ref) is None
        return None if ok else ("value", f"Invalid reference {_shorten(ref)!r}; {_REF_FORMS}")
    for prefix, code in (("#", "id"), ("urn:uuid:", "uuid"), ("urn:oid:", "oid")):
        if ref.startswith(prefix):
            text = ref[1:] if prefix == "#" else ref
            ok = _checker(code)(text) is None
            return None if ok else ("value", f"Invalid reference {_shorten(ref)!r}; {_REF_FORMS}")
    match = _relative_ref().fullmatch(ref) or _CONDITIONAL_REF.fullmatch(ref)
    if match is None:
        return "value", f"Invalid reference {_shorten(ref)!r}; {_REF_FORMS}"
    rtype = match.group(1)
    if rtype not in definitions().resource_types:
        return "value", f"Reference {_shorten(ref)!r} names unknown resource type {rtype!r}"
    if targets and "Resource" not in targets and rtype not in targets:
        return "invalid", (
            f"A reference to {rtype} is not allowed here ({_shorten(ref)!r}); "
            f"refer to one of: {', '.join(targets)}"
        )
    return None


_REF_FORMS = (
    "use 'Type/id' (id: 1-64 of A-Z a-z 0-9 - .), an absolute http(s) URL, "
    "'urn:uuid:<lower-case uuid>', 'urn:oid:<oid>' or '#id' of a contained resource"
)
