"""The FHIR RESTful semantics (R4 http.html) independent of any web framework: interactions,
batch and transaction Bundles, search and history Bundles, the CapabilityStatement.

The HTTP layer (``takamul.api``), the bulk loader and the demo all go through it.
"""

from takamul.rest.bundles import process as process_bundle
from takamul.rest.interactions import RequestContext, Result

__all__ = ["RequestContext", "Result", "process_bundle"]
