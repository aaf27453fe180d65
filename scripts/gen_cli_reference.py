"""Write docs/cli.md and docs/migrating-from-ms-swift.md from the argument dataclasses and the ms-swift flag catalogue."""

from pathlib import Path

from swift_cispo.cli.reference import render, render_migration

docs = Path(__file__).resolve().parents[1] / "docs"
for name, text in (("cli.md", render()), ("migrating-from-ms-swift.md", render_migration())):
    (docs / name).write_text(text, encoding="utf-8")
    print(f"wrote {docs / name}")
