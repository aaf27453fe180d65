"""Write docs/cli.md and swift_cispo/cli/rlhf_spec.json from the argument dataclasses (run after changing a flag)."""

from pathlib import Path

from swift_cispo.cli import spec
from swift_cispo.cli.reference import render

target = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
target.write_text(render(), encoding="utf-8")
print(f"wrote {target}")
print(f"wrote {spec.write()}")
