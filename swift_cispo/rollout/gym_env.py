"""Environments for gym-style multi-turn rollouts, with ms-swift's interface and registry (``envs``).

``Env`` is ms-swift's ``swift.rollout.gym_env.Env``: ``reset`` gives the first observation, ``step``
answers each model reply with the next observation, a reward and whether the episode ended. The
``gym_scheduler`` runs them in training (``--multi_turn_scheduler gym_scheduler --gym_env NAME
--use_gym_env true``: the episode's total reward is the reward).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Tuple

from ..errors import UserError


class Env(ABC):
    def __init__(self, env_config):
        self.env_config = env_config

    @abstractmethod
    async def reset(self, config) -> Tuple[str, Dict[str, Any], str]:
        """From the trajectory's RolloutInferRequest: (first observation, info, system message)."""

    @abstractmethod
    async def step(self, action) -> Tuple[str, float, bool, Dict[str, Any]]:
        """From the conversation so far: (next observation, reward, done, info)."""

    @abstractmethod
    async def close(self):
        """Release what the environment holds."""


class ContextManager(ABC):
    """ms-swift 3.x's hook to trim a gym trajectory's history before each turn."""

    def __init__(self, ctx_config):
        self.ctx_config = ctx_config

    @abstractmethod
    def manage_context(self, history, trajectory_id: str):
        """The history to send for the next turn."""


class DummyContextManager(ContextManager):
    def manage_context(self, history, trajectory_id: str):
        return history


#: Name -> environment class.
envs: Dict[str, type] = {}
#: Name -> context manager class (ms-swift 3.x).
context_managers: Dict[str, type] = {"dummyContextManager": DummyContextManager}


def env_class(name: str) -> type:
    """The environment ``--gym_env NAME`` names, or one sentence listing the registered ones."""
    if name not in envs:
        registered = ", ".join(sorted(envs)) or "none"
        raise UserError(f"unknown gym environment '{name}'; registered: {registered} (plugin files add more)")
    return envs[name]
