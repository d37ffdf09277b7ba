"""A small demonstration data set, loaded by ``make demo``: a family and their care in two
facilities, with Arabic and Persian names kept as written."""

from __future__ import annotations

from importlib import resources

import orjson

from takamul.rest.bundles import process
from takamul.rest.interactions import RequestContext
from takamul.settings import Settings
from takamul.store.repository import Store


def load_demo_bundle(settings: Settings) -> int:
    bundle = orjson.loads(resources.files("takamul.demo").joinpath("demo-bundle.json").read_bytes())
    store = Store(settings)
    try:
        result = process(store, bundle, RequestContext("urn:takamul:demo"), 50)
    finally:
        store.close()
    return len(result["entry"])
