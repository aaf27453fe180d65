"""The documentation that is generated from code is current."""

from pathlib import Path

from swift_cispo.cli.args import TRAINING_FLAGS
from swift_cispo.cli.reference import render

REPO = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), "docs/cli.md is stale: run `python scripts/gen_cli_reference.py`"


def test_cli_reference_lists_every_flag():
    text = render()
    for name in (*TRAINING_FLAGS, "model", "dataset", "reward_funcs", "external_plugins", "rlhf_type", "system"):
        assert f"| `--{name}` |" in text
