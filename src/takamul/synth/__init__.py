"""A synthetic national population (Saudi Arabia or Iran) in FHIR R4 NDJSON, with its truth.

``generate(load_config(...), out_dir)`` writes the resources and the ``truth/`` folder.
"""

from takamul.synth.config import ConfigError, load_config
from takamul.synth.generate import Summary, generate

__all__ = ["ConfigError", "Summary", "generate", "load_config"]
