"""Multi-turn rollout schedulers: ms-swift's scheduler API and the ``multi_turns`` registry.

A scheduler turns one prompt into one trajectory of several model turns, with environment or tool
text in between. Its API is ms-swift's (``swift/rollout/multi_turn.py``), so that a scheduler written
for ms-swift registers and runs unchanged:

- ``step(infer_request, response_choice, current_turn) -> dict``: build the next turn's request; may
  return ``response_token_ids`` with a ``response_loss_mask`` (0 marks environment/tool tokens, kept out
  of the loss), ``rollout_logprobs`` and ``rollout_infos``;
- ``check_finished(infer_request, response_choice, current_turn) -> bool``: stop here? (default: the
  turn was cut at the length limit, or ``max_turns`` is reached);
- ``async run(infer_request, request_config) -> RolloutOutput``: the whole loop, for schedulers that
  need full control; the default drives ``step``/``check_finished`` with the hooks
  ``on_trajectory_start`` and ``on_turn_end``.

The engine a scheduler calls is anything with ``async infer_async(request, request_config) ->
ChatCompletionResponse``; in training it is :class:`swift_cispo.rollout.engine.TrajectoryEngine`, which
batches the turns of all trajectories and keeps their tokens (:mod:`swift_cispo.rollout.trajectory`).
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC
from copy import deepcopy
from dataclasses import replace
from typing import Any, Dict, List, Optional, Union

from ..errors import UserError
from .gym_env import env_class
from .protocol import ChatCompletionResponseChoice, RequestConfig, RolloutInferRequest, RolloutOutput, remove_response


class RolloutScheduler(ABC):
    """One generation per request (a single turn); the base of every scheduler."""

    def __init__(self, infer_engine=None, max_turns: Optional[int] = None, *args, **kwargs):
        self.infer_engine = infer_engine
        self._tokenizer = kwargs.get("tokenizer")
        self.max_turns = max_turns

    async def on_trajectory_start(self, requests: List[RolloutInferRequest]) -> None:
        """Before the first turn: set up per-trajectory state (an environment's reset), editing ``requests`` in place."""

    async def on_turn_end(
        self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice, current_turn: int
    ) -> Dict[str, Any]:
        """After a turn's message is appended: may return ``done`` (overrides check_finished) and ``rollout_infos``."""
        return {}

    async def async_infer(
        self, infer_requests: list, request_config: RequestConfig, *, use_tqdm: Optional[bool] = None, **kwargs
    ) -> List[RolloutOutput]:
        """Run every request's trajectory concurrently; a ``run`` that returns several outputs is flattened."""
        if request_config.n != 1:
            raise ValueError("a rollout scheduler generates one response per request (request_config.n must be 1)")
        requests = [r if isinstance(r, RolloutInferRequest) else RolloutInferRequest(**r) for r in infer_requests]
        results = await asyncio.gather(*(self.run(request, request_config, **kwargs) for request in requests))
        return [output for result in results for output in (result if isinstance(result, list) else [result])]

    async def run(self, infer_request: RolloutInferRequest, request_config: RequestConfig, **kwargs) -> RolloutOutput:
        response = await self.infer_engine.infer_async(infer_request, request_config, **kwargs)
        token_ids = list(response.choices[0].token_ids or [])
        return RolloutOutput(
            response=response,
            messages=infer_request.messages,
            response_token_ids=[token_ids],
            response_loss_mask=[[1] * len(token_ids)],
            rollout_infos={"num_turns": 1},
        )

    @property
    def engine(self):
        return self.infer_engine

    @property
    def tokenizer(self):
        """The tokenizer given to the constructor, else the engine's."""
        if self._tokenizer is not None:
            return self._tokenizer
        return getattr(self.infer_engine, "tokenizer", None)


class MultiTurnScheduler(RolloutScheduler, ABC):
    """Several turns per trajectory: implement ``step`` (and optionally ``check_finished``), or override ``run``."""

    async def run(
        self, infer_request: RolloutInferRequest, request_config: RequestConfig, **kwargs
    ) -> Union[RolloutOutput, List[RolloutOutput]]:
        request = infer_request
        await self.on_trajectory_start([request])
        turn, infos = 1, {}
        token_ids: List[List[int]] = []  # per turn; a turn that continues the assistant message extends the last one
        loss_mask: List[List[int]] = []
        logprobs: List[List[float]] = []
        while True:
            messages = request.messages
            if turn == 1:
                remove_response(messages)  # a dataset row may carry a reference answer as its last message
            response = await self.infer_engine.infer_async(request, self.request_config_for(request_config, turn), **kwargs)
            choice = response.choices[0]
            if turn > 1 and not messages[-1]["content"]:
                remove_response(messages)  # the empty assistant placeholder a step may leave for the template
            continuing = messages[-1]["role"] == "assistant"
            if continuing:
                messages[-1]["content"] += choice.message.content
            else:
                messages.append({"role": "assistant", "content": choice.message.content})

            turn_result = await self.on_turn_end(request, choice, turn)
            infos.update(turn_result.get("rollout_infos") or {})
            finished = turn_result.get("done", self.check_finished(request, choice, turn))
            if self.max_turns:
                finished = finished or turn >= self.max_turns

            if finished:
                _add_final_turn(choice, self._extract_logprobs_from_choice(choice), continuing, token_ids, loss_mask, logprobs)
                return RolloutOutput(
                    response=response,
                    messages=messages,
                    response_token_ids=token_ids,
                    response_loss_mask=loss_mask,
                    rollout_infos={**infos, "num_turns": turn},
                    rollout_logprobs=logprobs if _logprobs_complete(logprobs, token_ids, loss_mask) else [],
                )

            result = self.step(request, choice, turn)
            request = result["infer_request"]
            if "response_token_ids" in result:
                _extend_or_append(token_ids, result["response_token_ids"], continuing)
            if "response_loss_mask" in result:
                ids = result.get("response_token_ids")
                if ids is None or len(result["response_loss_mask"]) != len(ids):
                    raise ValueError(
                        f"{type(self).__name__}.step returned a response_loss_mask without response_token_ids of the same length"
                    )
                _extend_or_append(loss_mask, result["response_loss_mask"], continuing)
            infos.update(result.get("rollout_infos") or {})
            turn_logprobs = result.get("rollout_logprobs") or self._extract_logprobs_from_choice(choice)
            if turn_logprobs:
                _extend_or_append(logprobs, turn_logprobs, continuing)
            turn += 1

    def request_config_for(self, request_config: RequestConfig, current_turn: int) -> RequestConfig:
        """The sampling settings of turn ``current_turn`` (a hook: the same for every turn by default)."""
        return request_config

    def step(self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice, current_turn: int) -> dict:
        """The next turn's request, as ``{'infer_request': ..., optional 'response_token_ids', 'response_loss_mask',
        'rollout_logprobs', 'rollout_infos'}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement step() or override run()")

    def check_finished(
        self, infer_request: RolloutInferRequest, response_choice: ChatCompletionResponseChoice, current_turn: int
    ) -> bool:
        if response_choice.finish_reason == "length":
            return True
        return bool(self.max_turns and current_turn >= self.max_turns)

    @staticmethod
    def _extract_logprobs_from_choice(response_choice: ChatCompletionResponseChoice) -> List[float]:
        if not response_choice.logprobs or "content" not in response_choice.logprobs:
            return []
        return [item["logprob"] for item in response_choice.logprobs["content"]]


def _extend_or_append(per_turn: list, values: list, continuing: bool) -> None:
    if continuing and per_turn:
        per_turn[-1].extend(values)
    else:
        per_turn.append(list(values))


def _add_final_turn(choice, turn_logprobs, continuing, token_ids, loss_mask, logprobs) -> None:
    """The last turn's tokens join the trajectory as ms-swift's do: appended to a continued assistant message,
    or as the only turn when no step reported tokens."""
    final = list(choice.token_ids or [])
    if continuing and token_ids:
        token_ids[-1].extend(final)
        if loss_mask:
            loss_mask[-1].extend([1] * len(final))
        if logprobs and turn_logprobs:
            logprobs[-1].extend(turn_logprobs)
    elif not token_ids:
        if final:
            token_ids.append(final)
            loss_mask.append([1] * len(final))
        if turn_logprobs:
            logprobs.append(list(turn_logprobs))


def _logprobs_complete(logprobs, token_ids, loss_mask) -> bool:
    """Rollout log-probs are usable only if there is one per trained token (loss mask 1) of the trajectory."""
    if not logprobs:
        return False
    count = sum(len(turn) for turn in logprobs)
    trained = sum(sum(turn) for turn in loss_mask) if loss_mask else sum(len(turn) for turn in token_ids)
    return count == trained


class GYMScheduler(MultiTurnScheduler):
    """An environment drives the dialogue: ``env.reset`` gives the first observation, ``env.step`` each reply's
    observation, reward and end (environments from :data:`swift_cispo.rollout.gym_env.envs`)."""

    def __init__(self, infer_engine=None, max_turns: Optional[int] = None, **kwargs):
        super().__init__(infer_engine, max_turns, **kwargs)
        self.gym_env_name = kwargs.get("gym_env")
        self._envs: Dict[str, Any] = {}
        self._total_rewards: Dict[str, float] = {}
        self._step_rewards: Dict[str, List[float]] = {}
        self._pending_obs: Dict[str, Optional[str]] = {}

    async def _close_and_remove(self, uuid: str) -> None:
        env = self._envs.pop(uuid, None)
        if env is not None:
            await env.close()
        for state in (self._total_rewards, self._step_rewards, self._pending_obs):
            state.pop(uuid, None)

    async def on_trajectory_start(self, requests: List[RolloutInferRequest]) -> None:
        async def start(request):
            if request.uuid in self._envs:
                await self._close_and_remove(request.uuid)
            env = self._create_env((request.data_dict or {}).get("env_config", {}))
            observation, _info, system_message = await env.reset(request)
            request.messages = ([{"role": "system", "content": system_message}] if system_message else []) + [
                {"role": "user", "content": observation}
            ]
            self._remember(request.uuid, env)

        await asyncio.gather(*(start(request) for request in requests))

    def _remember(self, uuid: str, env) -> None:
        self._envs[uuid] = env
        self._total_rewards[uuid] = 0.0
        self._step_rewards[uuid] = []
        self._pending_obs[uuid] = None

    async def on_turn_end(self, infer_request, response_choice, current_turn) -> Dict[str, Any]:
        env = self._envs.get(infer_request.uuid)
        if env is None:
            return {"done": True, "rollout_infos": {}}
        observation, reward, done, _info = await env.step(deepcopy(infer_request.messages))
        return await self._record(infer_request.uuid, observation, reward, done)

    async def _record(self, uuid: str, next_observation, reward, done) -> Dict[str, Any]:
        self._total_rewards[uuid] = self._total_rewards.get(uuid, 0.0) + float(reward)
        self._step_rewards.setdefault(uuid, []).append(float(reward))
        self._pending_obs[uuid] = None if done else next_observation
        infos = {"total_reward": self._total_rewards[uuid], "step_rewards": list(self._step_rewards[uuid]), "gym_done": done}
        if done:
            await self._close_and_remove(uuid)
        return {"done": done, "rollout_infos": infos}

    def step(self, infer_request, response_choice, current_turn) -> Dict[str, Any]:
        observation = self._pending_obs.get(infer_request.uuid)
        if observation is not None:
            infer_request.messages.append({"role": "user", "content": observation})
            self._pending_obs[infer_request.uuid] = None
        return {"infer_request": infer_request}

    def _create_env(self, env_config: Dict):
        return env_class(env_config.get("name", self.gym_env_name))(env_config)


class OpenEnvScheduler(GYMScheduler):
    """A GYMScheduler whose environments are OpenEnv servers; subclasses override ``parse_action`` (reply text ->
    action dict) and ``format_observation`` (observation -> text)."""

    def _create_env(self, env_config: Dict):
        raise UserError(
            "OpenEnv environments (OpenEnvScheduler) are not built yet in swift-cispo; this scheduler can be registered but not run"
        )

    def parse_action(self, text: str) -> Dict[str, Any]:
        """The reply as JSON if it is a JSON object (a ``` fence around it is dropped), else ``{'message': text}``."""
        text = text.strip()
        lines = text.splitlines()
        if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].strip().startswith("```"):
            text = "\n".join(lines[1:-1]).strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            return {"message": text}
        return parsed if isinstance(parsed, dict) else {"message": str(parsed)}

    def format_observation(self, observation: Any) -> str:
        try:
            return json.dumps(observation, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(observation)


class MathTipsScheduler(MultiTurnScheduler):
    """ms-swift's ``math_tip_trick``: a wrong answer gets one second chance within the same reply.

    After the first turn, a reply whose answer does not match the row's ``solution`` (else ``answer``;
    math-verify, as the ``accuracy`` reward) is cut before its ``<answer>`` or ``</think>`` and continued after the hint
    :attr:`tips_prompt`; the hint is context, not trained on. A correct reply, a cut-off one, or one that
    already had its hint ends the trajectory.
    """

    tips_prompt = "But wait... It seems I made a mistake,"

    def check_finished(self, infer_request, response_choice, current_turn) -> bool:
        from ..rewards.builtin import math_accuracy

        reply = infer_request.messages[-1]["content"]
        if self.tips_prompt in reply:
            return True
        row = infer_request.data_dict or {}
        reference = row.get("solution", row.get("answer"))
        if reference is None:
            raise UserError("multi-turn scheduler math_tip_trick needs a 'solution' or an 'answer' column in the dataset (the reference answer)")
        if math_accuracy(reply, reference) == 1.0:
            return True
        return super().check_finished(infer_request, response_choice, current_turn)

    def step(self, infer_request, response_choice, current_turn) -> Dict[str, Any]:
        reply = infer_request.messages[-1]["content"]
        cuts = [reply.index(tag) for tag in ("<answer>", "</think>") if tag in reply]
        infer_request.messages[-1]["content"] = reply[: min(cuts, default=len(reply))] + self.tips_prompt
        return {"infer_request": infer_request}  # the engine continues this assistant message


#: ScaleRL's interruption phrase (arXiv 2510.13786, Sec. 3.2), then the end of the thinking block.
SCALERL_INTERRUPTION = "Okay, time is up. Let me stop thinking and formulate a final answer now.\n</think>\n\n"


class ForcedInterruptionScheduler(MultiTurnScheduler):
    """ScaleRL's length control by forced interruption: think within ``thinking_budget`` tokens, then answer.

    The first turn may sample ``thinking_budget`` tokens. A reply that ends within it is the trajectory.
    One cut at the budget gets the interruption phrase appended to the same assistant message, as
    context that is neither trained nor counted. The model then continues and answers in what is left
    of ``--max_completion_length``. A reply that had already closed its thinking (``</think>``) when it
    was cut continues without the phrase. ``rollout_infos['interrupted']`` records which trajectories
    were interrupted.
    """

    def __init__(self, *args, thinking_budget: int | None = None, interruption_phrase: str = SCALERL_INTERRUPTION, **kwargs):
        super().__init__(*args, **kwargs)
        if thinking_budget is None or thinking_budget < 1:
            raise UserError("multi-turn scheduler forced_interruption needs --thinking_budget N (tokens of thinking before "
                            "the interruption), a whole number >= 1")
        self.thinking_budget, self.interruption_phrase = thinking_budget, interruption_phrase
        self.max_turns = 2  # think, then (if interrupted) answer

    def request_config_for(self, request_config: RequestConfig, current_turn: int) -> RequestConfig:
        # the answer turn gets whatever is left of the completion budget (the engine's default)
        return replace(request_config, max_tokens=self.thinking_budget if current_turn == 1 else None)

    def check_finished(self, infer_request, response_choice, current_turn) -> bool:
        return current_turn >= 2 or response_choice.finish_reason != "length"

    def step(self, infer_request, response_choice, current_turn) -> Dict[str, Any]:
        reply = infer_request.messages[-1]
        if "</think>" not in reply["content"]:
            reply["content"] += self.interruption_phrase
        return {"infer_request": infer_request, "rollout_infos": {"interrupted": True}}

    async def on_turn_end(self, infer_request, response_choice, current_turn) -> Dict[str, Any]:
        return {"rollout_infos": {"interrupted": False}} if current_turn == 1 else {}  # step() sets it when it interrupts


class ThinkingTipsScheduler(MultiTurnScheduler):
    """ms-swift's ``thinking_tips_scheduler`` turns each turn of a trajectory into its own training sample, so a
    group holds a varying number of samples; that is not built here, and naming it says so."""

    not_built = (
        "multi-turn scheduler thinking_tips_scheduler makes one training sample per turn (a varying number per "
        "prompt), which swift-cispo does not build; use math_tip_trick, or a scheduler that returns one "
        "trajectory per prompt"
    )

    def __init__(self, *args, **kwargs):
        raise UserError(self.not_built)


#: Name -> scheduler class; plugin files add theirs (``multi_turns['mine'] = MyScheduler``).
multi_turns: Dict[str, type] = {
    "math_tip_trick": MathTipsScheduler,
    "thinking_tips_scheduler": ThinkingTipsScheduler,
    "gym_scheduler": GYMScheduler,
    "openenv_scheduler": OpenEnvScheduler,
    "forced_interruption": ForcedInterruptionScheduler,
}


def scheduler_class(name: str) -> type:
    """The scheduler ``--multi_turn_scheduler NAME`` names, or one sentence listing the registered ones (or saying
    why a registered one cannot train here)."""
    if name not in multi_turns:
        registered = ", ".join(sorted(multi_turns))
        raise UserError(f"unknown multi-turn scheduler '{name}'; registered: {registered} (plugin files add more)")
    cls = multi_turns[name]
    if getattr(cls, "not_built", None):  # registered so that naming it says why, where it is looked up
        raise UserError(cls.not_built)
    if isinstance(cls, type) and issubclass(cls, OpenEnvScheduler):
        raise UserError(
            f"multi-turn scheduler {name} is an OpenEnvScheduler, whose environments are OpenEnv servers, which swift-cispo "
            "does not build; a gym_scheduler with an environment registered in envs trains"
        )
    if isinstance(cls, type) and cls.async_infer is not RolloutScheduler.async_infer:
        raise UserError(
            f"multi-turn scheduler {name} overrides async_infer to shape the whole batch (e.g. a tree rollout whose "
            "branches become the group), which swift-cispo does not build; schedulers that run one trajectory per "
            "request (step and check_finished, or run) train"
        )
    return cls


def make_scheduler(name: str, max_turns: int | None, tokenizer, gym_env: str | None = None, **options):
    """A new instance of the scheduler ``name`` (one per rollout: it may hold per-trajectory state); its
    ``infer_engine`` is set by the caller. ``options`` go to the scheduler's constructor (forced_interruption's
    budget and phrase)."""
    options["tokenizer"] = tokenizer
    if gym_env:
        options["gym_env"] = gym_env
    return scheduler_class(name)(infer_engine=None, max_turns=max_turns, **options)
