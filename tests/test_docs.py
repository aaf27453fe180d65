"""The documentation that is generated from code is current."""

from pathlib import Path

from swift_cispo.cli.args import TRAINING_FLAGS
from swift_cispo.cli.reference import render, render_migration

REPO = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), "docs/cli.md is stale: run `python scripts/gen_cli_reference.py`"


def test_cli_reference_lists_every_flag():
    text = render()
    for name in (*TRAINING_FLAGS, "model", "dataset", "reward_funcs", "external_plugins", "rlhf_type", "system"):
        assert f"| `--{name}` |" in text


def test_migration_guide_is_current():
    current = (REPO / "docs" / "migrating-from-ms-swift.md").read_text(encoding="utf-8")
    assert current == render_migration(), "docs/migrating-from-ms-swift.md is stale: run `python scripts/gen_cli_reference.py`"


def test_migration_guide_lists_every_catalogued_flag_once():
    from swift_cispo.cli.msswift import catalogue

    text = render_migration()
    flags = catalogue()
    assert len(flags) > 350  # ms-swift 4.6's GRPO flags, all sections
    for name in flags:
        assert text.count(f"| `--{name}` |") == 1, name
    for name in ("dataloader_num_workers", "warmup_ratio", "chord_mu_peak", "multi_turn_scheduler", "quant_bits"):
        assert f"| `--{name}` |" in text


def test_stored_rlhf_flags_and_help_are_current():
    """The unknown-flag and --help paths read rlhf_spec.json instead of importing TRL: it must be the real parser's."""
    from swift_cispo.cli import spec

    fresh = spec.render()
    stored = spec.stored()
    assert stored["flags"] == fresh["flags"], "swift_cispo/cli/rlhf_spec.json is stale: run `python scripts/gen_cli_reference.py`"
    assert stored["help"] == fresh["help"], "swift_cispo/cli/rlhf_spec.json is stale: run `python scripts/gen_cli_reference.py`"
    assert "--epsilon_high" in stored["flags"] and "--model" in stored["flags"]
