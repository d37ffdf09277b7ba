"""``python -m bench.registry_eval``: see ``cli.py``."""

from .cli import main

raise SystemExit(main())
