"""The ms-swift classes and helpers that plugin files import, in swift-cispo's terms.

ms-swift's reward base classes differ from swift-cispo's :class:`~swift_cispo.rewards.ORM` in two ways,
both kept here so that its plugin files compute the same rewards:

- the constructor takes ``args``, ms-swift's training configuration: swift rlhf passes a namespace of
  all its flags (ms-swift's flag names are the same);
- ``__call__`` receives each completion as its text (the assistant's reply, also for chat prompts),
  and the whole conversation, reply included, as ``messages``: ``inputs_convention = "ms_swift"``.
"""

from __future__ import annotations

import logging

from ..errors import UserError
from ..rewards.base import ORM as _ORM


class ORM(_ORM):
    """ms-swift's ``swift.rewards.ORM``: ``__call__(self, completions, **kwargs) -> list[float]``."""

    inputs_convention = "ms_swift"

    def __init__(self, args=None, **kwargs):
        self.args = args


class AsyncORM(ORM):
    """ms-swift's ``swift.rewards.AsyncORM``: ``async def __call__``; the async rewards of a batch run concurrently."""

    async def __call__(self, completions: list, **kwargs) -> list[float]:
        raise NotImplementedError


def get_logger(log_file: str | None = None, log_level: int | None = None, file_mode: str = "w") -> logging.Logger:
    """ms-swift's ``swift.utils.get_logger``: here the logger of plugin files, under swift-cispo's own."""
    logger = logging.getLogger("swift_cispo.plugin")
    if log_level is not None:
        logger.setLevel(log_level)
    if log_file is not None:
        handler = logging.FileHandler(log_file, mode=file_mode)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def to_device(data, device, non_blocking: bool = False):
    """ms-swift's ``swift.utils.to_device``: every tensor in nested dicts, lists and tuples moved to ``device``."""
    if hasattr(data, "to") and callable(data.to) and not isinstance(data, type):
        return data.to(device=device, non_blocking=non_blocking)
    if isinstance(data, dict):
        return {key: to_device(value, device, non_blocking) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(value, device, non_blocking) for value in data)
    return data


class _UnavailableMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise UserError(cls._sentence)


def unavailable(plugin: str, module: str, name: str, why: str) -> type:
    """A stand-in for an ms-swift class with no meaning here: importing it works (ms-swift's example plugins
    import them at the top, for type hints), using it ends in one sentence naming the plugin and the name."""
    sentence = f"plugin file {plugin} uses {module}.{name}, which swift-cispo does not have: {why}"

    def refuse(self, *args, **kwargs):
        raise UserError(sentence)

    return _UnavailableMeta(name, (), {"__init__": refuse, "__call__": refuse, "_sentence": sentence, "__module__": module})
