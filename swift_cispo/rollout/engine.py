"""The engine a multi-turn scheduler calls during training: ms-swift's ``infer_async``, batched, on tokens.

Every trajectory of a rollout runs concurrently (one coroutine each, as in ms-swift). Each turn's request
waits until every trajectory still running has asked for its next turn (or 50 ms have passed with some
of them busy elsewhere, e.g. in an environment), and then all waiting turns are generated in one batch
by the backend: transformers' ``generate``, the colocated vLLM engine, or the rollout server. The prompt
of each turn is its trajectory's tokens (see :mod:`.trajectory`), so the tokens trained on are the tokens
sampled.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from .protocol import ChatCompletionResponse, ChatCompletionResponseChoice, ChatMessage, RequestConfig, RolloutOutput, UsageInfo
from .trajectory import Trajectory, continue_with, encode

#: (prompt token ids per request, max new tokens per request) -> per request (new token ids, their log-probs or None)
GenerateBatch = Callable[[list[list[int]], list[int]], list[tuple[list[int], list[float] | None]]]

WAIT_FOR_STRAGGLERS_S = 0.05


class BudgetSpent(Exception):
    """A trajectory asked for another turn after being told its completion budget was spent."""


def render(tokenizer, messages: list[dict], chat_template_kwargs: dict | None = None) -> str:
    """The conversation as the model's chat template writes it, ready for the model's next words: a new
    assistant turn, or the continuation of a trailing assistant message."""
    continuing = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing,
        **(chat_template_kwargs or {}),
    )  # fmt: skip


class TrajectoryEngine:
    def __init__(
        self,
        tokenizer,
        generate_batch: GenerateBatch,
        max_completion_length: int,
        eos_token_ids: Sequence[int],
        chat_template_kwargs: dict | None = None,
        scheduler_name: str = "the scheduler",
        model_name: str = "policy",
    ):
        self.tokenizer = tokenizer
        self.generate_batch = generate_batch
        self.max_completion_length = max_completion_length
        self.eos_token_ids = set(eos_token_ids)
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.scheduler_name = scheduler_name
        self.model_name = model_name
        self.trajectories: dict[str, Trajectory] = {}
        self.turns: dict[str, int] = {}  # model turns asked for, per trajectory
        self.last: dict[str, tuple[list, ChatCompletionResponse]] = {}  # its latest conversation and response
        self.running = 0  # trajectories whose coroutine has not returned; set by the rollout runner
        self._pending: list[tuple[list[int], int, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- ms-swift's engine interface
    async def infer_async(self, infer_request, request_config: RequestConfig | None = None, **kwargs) -> ChatCompletionResponse:
        uuid = infer_request.uuid
        rendered = render(self.tokenizer, infer_request.messages, {**self.chat_template_kwargs, **(infer_request.chat_template_kwargs or {})})
        trajectory = self.trajectories.get(uuid)
        if trajectory is None:
            trajectory = self.trajectories[uuid] = Trajectory.start(encode(self.tokenizer, rendered))
            prompt_ids = list(trajectory.token_ids)
        else:
            prompt_ids = continue_with(trajectory, self.tokenizer, rendered, self.scheduler_name)
        budget = self.max_completion_length - trajectory.completion_length
        asked = request_config.max_tokens if request_config and request_config.max_tokens else budget
        max_tokens = min(asked, budget)
        self.turns[uuid] = self.turns.get(uuid, 0) + 1
        if max_tokens <= 0:  # the completion budget is spent (environment text included): an empty turn, cut
            if self.last.get(uuid) and self.last[uuid][1].choices[0].token_ids == []:
                raise BudgetSpent(uuid)  # asked again after an empty 'length' turn: the scheduler does not stop
            return self._remember(uuid, infer_request, self._response(prompt_ids, [], None, "length"))
        future = asyncio.get_running_loop().create_future()
        self._pending.append((prompt_ids, max_tokens, future))
        self.maybe_flush()
        ids, logprobs = await future
        trajectory.append(ids, trained=1, logprobs=logprobs)
        finished = "stop" if ids and ids[-1] in self.eos_token_ids else ("length" if len(ids) >= max_tokens else "stop")
        return self._remember(uuid, infer_request, self._response(prompt_ids, ids, logprobs, finished))

    def _remember(self, uuid: str, infer_request, response: ChatCompletionResponse) -> ChatCompletionResponse:
        self.last[uuid] = (infer_request.messages, response)
        return response

    # ---------------------------------------------------------------- batching
    def maybe_flush(self) -> None:
        """Generate now if every running trajectory is waiting; otherwise soon, for the ones that are."""
        if not self._pending:
            return
        if len(self._pending) >= self.running:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WAIT_FOR_STRAGGLERS_S, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            results = self.generate_batch([prompt for prompt, _, _ in batch], [limit for _, limit, _ in batch])
        except Exception as error:  # every waiting trajectory sees the backend's error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, limit, future), (ids, logprobs) in zip(batch, results):
            ids = list(ids)[:limit]
            future.set_result((ids, list(logprobs)[: len(ids)] if logprobs is not None else None))

    def _response(self, prompt_ids, ids, logprobs, finish_reason) -> ChatCompletionResponse:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        content = None
        if logprobs is not None:
            content = {"content": [{"token": self.tokenizer.decode([i]), "logprob": lp} for i, lp in zip(ids, logprobs)]}
        choice = ChatCompletionResponseChoice(
            index=0, message=ChatMessage(role="assistant", content=text), finish_reason=finish_reason, logprobs=content,
            token_ids=list(ids),
        )  # fmt: skip
        usage = UsageInfo(prompt_tokens=len(prompt_ids), completion_tokens=len(ids), total_tokens=len(prompt_ids) + len(ids))
        return ChatCompletionResponse(model=self.model_name, choices=[choice], usage=usage, prompt_token_ids=prompt_ids)


async def run_trajectories(scheduler, engine: TrajectoryEngine, requests: list, request_config: RequestConfig) -> list:
    """Each request's ``scheduler.run`` concurrently; the engine batches their turns. One output per request."""
    engine.running = len(requests)

    async def one(request):
        try:
            return await scheduler.run(request, request_config)
        except BudgetSpent:  # ended here rather than looping on empty turns; its tokens are in the engine
            messages, response = engine.last[request.uuid]
            return RolloutOutput(response=response, messages=messages, rollout_infos={"num_turns": engine.turns[request.uuid]})
        finally:
            engine.running -= 1
            engine.maybe_flush()  # the others may all be waiting on this one

    return await asyncio.gather(*(one(request) for request in requests))


def sampled_logprobs(completion) -> list[float] | None:
    """vLLM's log-prob of each sampled token (requested with ``logprobs=0``), or None when not requested."""
    if completion.logprobs is None:
        return None
    return [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]


def vllm_turns(llm, prompts: list[list[int]], limits: list[int], sampling: dict) -> list[tuple[list[int], list[float] | None]]:
    """One batch of turns on a vLLM engine (the :data:`GenerateBatch` of vLLM colocate and of the rollout server):
    each token prompt with its own token budget, one sample each, with the sampled tokens' log-probs.
    ``sampling``: SamplingParams settings, generation_kwargs already merged in."""
    from vllm import SamplingParams

    params = [SamplingParams(**{**sampling, "n": 1, "logprobs": 0, "max_tokens": limit}) for limit in limits]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), sampled_logprobs(o.outputs[0])) for o in outputs]


def final_reply(output, tokenizer, trajectory: Trajectory) -> str:
    """What the reward functions score: the conversation's last assistant message (ms-swift's convention)."""
    for message in reversed(output.messages or []):
        if message.get("role") == "assistant":
            return message.get("content") or ""
    return tokenizer.decode(trajectory.completion_ids, skip_special_tokens=True)


def one_output_each(outputs: list, scheduler: str) -> None:
    """A scheduler's ``run`` must give one RolloutOutput per request; refuse a list (one sample per turn)."""
    for output in outputs:
        if isinstance(output, list):
            from ..errors import UserError

            raise UserError(
                f"multi-turn scheduler {scheduler} returned {len(output)} outputs for one trajectory; splitting a "
                "trajectory into several training samples is not built here: return one RolloutOutput per request"
            )


def trajectory_record(output, trajectory: Trajectory, tokenizer, limit: int) -> dict:
    """One trajectory as training needs it: the first prompt's tokens, the rest as the completion (cut at
    ``limit``), which of those tokens the policy sampled, their log-probs, the scheduler's infos and the reply."""
    return {
        "prompt_ids": trajectory.token_ids[: trajectory.prompt_length],
        "completion_ids": trajectory.completion_ids[:limit],
        "env_mask": trajectory.trained[:limit],
        "logprobs": trajectory.logprobs[:limit],
        "rollout_infos": dict(output.rollout_infos),
        "reply": final_reply(output, tokenizer, trajectory),
    }
