"""Derive Takamul's compact R4 definition table from the official HL7 package.

Source: the npm package ``hl7.fhir.r4.examples`` 4.0.1 (CC0-1.0), files ``Bundle-types.json``,
``Bundle-resources.json`` and ``Bundle-searchParams.json``. The output,
``src/takamul/fhir/data/r4-definitions.json.gz``, keeps only what the server needs at run time
(element cardinality and types, primitive regexes, search parameters, the Patient compartment), so
the server never downloads anything when it starts.

Usage: python scripts/derive_definitions.py PATH/TO/package [OUT]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

SOURCE = (
    "hl7.fhir.r4.examples 4.0.1 (CC0-1.0): Bundle-types.json, Bundle-resources.json, "
    "Bundle-searchParams.json"
)
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def _entries(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    return [e["resource"] for e in bundle["entry"]]


def _type_code(t: dict[str, Any]) -> str:
    for ext in t.get("extension", []):
        if ext["url"] == FHIR_TYPE_EXT:
            return str(ext["valueUrl"])
    return str(t["code"])


def _element(el: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"min": el.get("min", 0), "max": el.get("max", "*")}
    if el.get("contentReference"):
        out["ref"] = el["contentReference"].lstrip("#")
    types = []
    for t in el.get("type", []):
        entry: dict[str, Any] = {"code": _type_code(t)}
        targets = [p.rsplit("/", 1)[-1] for p in t.get("targetProfile", [])]
        if targets:
            entry["targets"] = targets
        types.append(entry)
    if types:
        out["types"] = types
    if el.get("isSummary"):
        out["summary"] = True
    if el.get("isModifier"):
        out["modifier"] = True
    return out


def _structure(sd: dict[str, Any]) -> dict[str, Any]:
    elements = {}
    for el in sd["snapshot"]["element"]:
        # Slices in core resources are rare; keep the unsliced element definition only.
        if "sliceName" in el:
            continue
        elements[el["path"]] = _element(el)
    return {
        "kind": sd["kind"],
        "abstract": sd.get("abstract", False),
        "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None,
        "elements": elements,
    }


def _primitive_regexes(types: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for sd in types:
        if sd["kind"] != "primitive-type":
            continue
        for el in sd["snapshot"]["element"]:
            if el["path"] == f"{sd['id']}.value":
                for t in el.get("type", []):
                    for ext in t.get("extension", []):
                        if ext["url"] == REGEX_EXT:
                            out[sd["id"]] = ext["valueString"]
    return out


def _search_params(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in params:
        item = {
            "url": p["url"],
            "code": p["code"],
            "base": p["base"],
            "type": p["type"],
            "expression": p.get("expression"),
        }
        if p.get("target"):
            item["target"] = p["target"]
        if p.get("component"):
            item["component"] = [
                {"definition": c["definition"], "expression": c["expression"]}
                for c in p["component"]
            ]
        out.append(item)
    return out


def derive(package: Path) -> dict[str, Any]:
    types = _entries(package / "Bundle-types.json")
    resources = _entries(package / "Bundle-resources.json")
    structures = [
        r
        for r in types + resources
        if r["resourceType"] == "StructureDefinition" and r.get("derivation") != "constraint"
    ]
    compartments = {
        r["code"]: {c["code"]: c.get("param", []) for c in r["resource"]}
        for r in resources
        if r["resourceType"] == "CompartmentDefinition"
    }
    return {
        "source": SOURCE,
        "fhirVersion": "4.0.1",
        "types": {sd["id"]: _structure(sd) for sd in structures},
        "primitives": _primitive_regexes(types),
        "searchParameters": _search_params(_entries(package / "Bundle-searchParams.json")),
        "compartments": compartments,
    }


def main() -> None:
    package = Path(sys.argv[1])
    out = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else (Path(__file__).resolve().parents[1] / "src/takamul/fhir/data/r4-definitions.json.gz")
    )
    data = json.dumps(derive(package), sort_keys=True, separators=(",", ":")).encode()
    # mtime=0 so that the same package always gives the same bytes.
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    print(f"wrote {out} ({out.stat().st_size} bytes) from {package}")


if __name__ == "__main__":
    main()
