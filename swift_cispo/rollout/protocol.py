"""The request and response records a rollout scheduler reads and returns.

Field for field ms-swift's (``swift/infer_engine/protocol.py``), so that a scheduler written for
ms-swift builds and reads them unchanged; only the fields a text-only GRPO rollout uses are kept
(no images, audio, tools or streaming).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

#: A conversation: ``[{"role": "user", "content": "..."}, ...]``.
Messages = List[Dict[str, Any]]


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class InferRequest:
    """One conversation to continue."""

    messages: Messages
    chat_template_kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutInferRequest(InferRequest):
    """A request during a rollout: ``data_dict`` holds the dataset row's other columns, ``uuid`` names the trajectory."""

    data_dict: Dict[str, Any] = field(default_factory=dict)
    uuid: Optional[str] = None


@dataclass
class RequestConfig:
    """Sampling settings of one generation call (ms-swift's names; None: the engine's default)."""

    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    stop: Optional[List[str]] = field(default_factory=list)
    seed: Optional[int] = None
    stream: bool = False
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    n: int = 1


@dataclass
class ChatMessage:
    role: str
    content: Union[str, List[Dict[str, Any]]]
    reasoning_content: Optional[str] = None


@dataclass
class ChatCompletionResponseChoice:
    """One generated turn: the message, why generation stopped, and (when asked) its token ids and log-probs."""

    index: int
    message: ChatMessage
    finish_reason: Optional[str]  # 'stop', 'length' or None
    logprobs: Optional[Dict[str, List[Dict[str, Any]]]] = None  # {'content': [{'token', 'logprob'}, ...]}
    token_ids: Optional[List[int]] = None


@dataclass
class UsageInfo:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass
class ChatCompletionResponse:
    model: str
    choices: List[ChatCompletionResponseChoice]
    usage: UsageInfo = field(default_factory=UsageInfo)
    id: str = field(default_factory=lambda: _new_id("chatcmpl"))
    object: str = "chat.completion"
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_token_ids: Optional[List[int]] = None


@dataclass
class RolloutOutput:
    """A finished trajectory: the last response, the whole conversation, and per turn the response tokens,
    which of them count in the loss (1) or are environment/tool text (0), and their rollout log-probs."""

    response: ChatCompletionResponse
    messages: Optional[Messages] = None
    response_token_ids: List[List[int]] = field(default_factory=list)
    response_loss_mask: List[List[int]] = field(default_factory=list)
    rollout_infos: Dict[str, Any] = field(default_factory=dict)
    rollout_logprobs: List[List[float]] = field(default_factory=list)


def remove_response(messages: Messages) -> Optional[str]:
    """Drop a trailing assistant message and return its content (ms-swift's ``swift.utils.remove_response``)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages.pop()["content"]
    return None
