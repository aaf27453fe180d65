"""Running the plugin files named with ``--external_plugins``."""

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
    module_name = f"swift_cispo_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(module_name, None)
        raise UserError(f"plugin file {path_str} has a syntax error at line {err.lineno}: {err.msg}") from None
    except Exception as err:
        sys.modules.pop(module_name, None)
        frame = traceback.extract_tb(err.__traceback__)[-1]
        raise UserError(
            f"plugin file {path_str} failed while loading, at line {frame.lineno}: {type(err).__name__}: {err}"
        ) from None


def load_plugins(paths: list[str] | None) -> None:
    for path in paths or []:
        load_plugin(path)
