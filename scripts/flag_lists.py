"""Command lines as lists of tokens: take flags out, or give some new values (the tests and scripts/ share these).

``swift rlhf`` refuses a flag given twice with different values, so a command built from a base list
and some changes must replace the base's flags rather than repeat them.
"""

from __future__ import annotations

from typing import Iterable


def without_flags(argv: list[str], names: Iterable[str]) -> list[str]:
    """``argv`` without ``--NAME`` and its values (every token up to the next ``--flag``) for each name."""
    names = set(names)
    out, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            skipping = token[2:] in names
        if not skipping:
            out.append(token)
    return out


def override_flags(base: list[str], flags: list[str]) -> list[str]:
    """``base`` with the flags that ``flags`` sets taken out, then ``flags``: each flag once, the new value wins."""
    return without_flags(base, [token[2:] for token in flags if token.startswith("--")]) + list(flags)
