"""An independent evaluation data generator for Takamul's client registry (issue 12).

Written without reading the registry, the MPI or Takamul's own synthetic generator, so that the
linker is measured on data it was not shaped by. See README.md.
"""

from .generate import Config, generate
from .perturb import CLASSES, ErrorRates

__all__ = ["CLASSES", "Config", "ErrorRates", "generate"]
