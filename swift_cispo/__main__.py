"""``python -m swift_cispo rlhf ...`` is the same as ``swift rlhf ...``."""

from .cli.main import entry

entry()
