"""Write docs/cli.md, docs/migrating-from-ms-swift.md and swift_cispo/cli/rlhf_spec.json from the argument
dataclasses and the ms-swift flag catalogue (run after changing a flag)."""

from pathlib import Path

from swift_cispo.cli import spec
from swift_cispo.cli.reference import render, render_migration

docs = Path(__file__).resolve().parents[1] / "docs"
for name, text in (("cli.md", render()), ("migrating-from-ms-swift.md", render_migration())):
    (docs / name).write_text(text, encoding="utf-8")
    print(f"wrote {docs / name}")
print(f"wrote {spec.write()}")
