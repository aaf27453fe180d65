"""``swift rlhf``'s flag names and ``--help`` text, stored so that a wrong flag or ``--help`` is answered at once.

The flags are the argument dataclasses' fields, and the training ones are copied from TRL's
``GRPOConfig``, which takes seconds to import. An unknown flag and ``--help`` need only the names and
the text, so both are rendered from the real parser into ``rlhf_spec.json`` (by
``python scripts/gen_cli_reference.py``, with docs/cli.md), and ``tests/test_docs.py`` checks that the
stored copy equals a fresh rendering: the dataclasses stay the one source of truth.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

SPEC_FILE = Path(__file__).with_name("rlhf_spec.json")
HELP_WIDTH = 100  # the stored --help is wrapped at this width, whatever the terminal's


def render() -> dict:
    """The flag names and help text of the real ``swift rlhf`` parser (imports TRL)."""
    from .parser import flag_names
    from .rlhf import build_parser

    parser = build_parser()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH + 2)  # argparse wraps at COLUMNS - 2
    try:
        text = parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return {"flags": flag_names(parser), "help": text}


def write() -> Path:
    SPEC_FILE.write_text(json.dumps(render(), indent=1) + "\n", encoding="utf-8")
    return SPEC_FILE


@cache
def stored() -> dict:
    return json.loads(SPEC_FILE.read_text(encoding="utf-8"))
