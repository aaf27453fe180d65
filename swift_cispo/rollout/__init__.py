"""Rollout schedulers (single- and multi-turn), gym environments and the records they exchange.

The interfaces and registries are ms-swift's, so plugin files written for ms-swift register here
unchanged and train with ``--multi_turn_scheduler NAME`` (see :mod:`.multi_turn` and :mod:`.engine`).
"""

from .gym_env import ContextManager, Env, context_managers, envs
from .multi_turn import GYMScheduler, MathTipsScheduler, MultiTurnScheduler, OpenEnvScheduler, RolloutScheduler, multi_turns
from .protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
    InferRequest,
    Messages,
    RequestConfig,
    RolloutInferRequest,
    RolloutOutput,
    UsageInfo,
)

__all__ = [
    "ChatCompletionResponse",
    "ChatCompletionResponseChoice",
    "ChatMessage",
    "ContextManager",
    "Env",
    "GYMScheduler",
    "InferRequest",
    "MathTipsScheduler",
    "Messages",
    "MultiTurnScheduler",
    "OpenEnvScheduler",
    "RequestConfig",
    "RolloutInferRequest",
    "RolloutOutput",
    "RolloutScheduler",
    "UsageInfo",
    "context_managers",
    "envs",
    "multi_turns",
]
