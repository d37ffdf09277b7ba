"""The FHIR R4 layer: definitions (loaded once), validation, search-parameter extraction.

Knows nothing of storage or the web; everything above builds on it.
"""

from takamul.fhir.definitions import Definitions, ElementDef, SearchParamDef, TypeRef, definitions

__all__ = ["Definitions", "ElementDef", "SearchParamDef", "TypeRef", "definitions"]
