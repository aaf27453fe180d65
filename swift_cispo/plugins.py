"""Running the plugin files named with ``--external_plugins``.

A plugin file may be written for swift-cispo (``from swift_cispo.rewards import ORM, orms``) or for
ms-swift (``from swift.rewards import ORM, orms``): each file runs with an import hook that answers
ms-swift's module paths with swift-cispo's classes and registries (:mod:`swift_cispo.compat.ms_swift`).
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from .errors import UserError


def load_plugin(path_str: str) -> None:
    """Execute one plugin file as a module, so it can register rewards (``orms``) and losses."""
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise UserError(f"plugin file {path_str} does not exist")
    if path.suffix != ".py":
        raise UserError(f"plugin file {path_str} must be a Python file ending in .py")
    try:
        _run(path)
    except UserError:
        raise
    except SyntaxError as err:
        where = "" if Path(err.filename or path).name == path.name else f" (in {Path(err.filename).name})"
        raise UserError(f"plugin file {path_str} has a syntax error at line {err.lineno}{where}: {err.msg}") from None
    except Exception as err:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f"line {frame.lineno}" if Path(frame.filename).name == path.name else f"{Path(frame.filename).name} line {frame.lineno}"
        raise UserError(f"plugin file {path_str} failed while loading, at {where}: {type(err).__name__}: {err}") from None


def _run(path: Path):
    """Execute ``path`` as the module ``swift_cispo_plugin_<stem>``, with ms-swift's module paths importable."""
    from .compat.ms_swift import plugin_builtins

    module_name = f"swift_cispo_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = plugin_builtins(path, _sibling)  # exec keeps a __builtins__ already there
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _sibling(path: Path):
    """A module file next to a plugin, imported by its plain name (ms-swift puts the plugin's folder on sys.path)."""
    return sys.modules.get(f"swift_cispo_plugin_{path.stem}") or _run(path)


def load_plugins(paths: list[str] | None) -> None:
    for path in paths or []:
        load_plugin(path)
