"""Multi-turn rollouts in training: a registered scheduler runs every row's trajectory on the trainer's backend.

The trainer hands this module's :func:`multi_turn_rollout` to TRL as its ``rollout_func`` (the seam TRL
keeps for custom rollouts): TRL then scores, pads and trains what it returns. Per row it returns the
first turn's prompt tokens, the rest of the trajectory as the completion, and ``env_mask`` (TRL's name):
1 for tokens the policy sampled, 0 for environment/tool/hint text and template markers. TRL turns
``env_mask`` into its ``tool_mask``: masked tokens are left out of the loss, the completion-token count
the loss is normalised by, and the logged completion lengths.

The reward functions see, as ``completions``, the final assistant message of each conversation (as in
ms-swift), and the scheduler's ``rollout_infos`` (turn count, an environment's rewards...) as a column.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import torch

from ..errors import UserError
from ..rollout.engine import TrajectoryEngine, one_output_each, run_trajectories, trajectory_record, vllm_turns
from ..rollout.multi_turn import make_scheduler, scheduler_class
from ..rollout.protocol import RequestConfig, RolloutInferRequest

def with_multi_turn(config, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """TRL's constructor arguments for a multi-turn run: our rollout_func, and the gym reward under use_gym_env."""
    scheduler_class(config.multi_turn_scheduler)  # an unknown name stops here, before the model loads
    if kwargs.get("rollout_func") is not None:
        raise ValueError("multi_turn_scheduler supplies the rollout function; do not pass rollout_func as well")
    kwargs["rollout_func"] = multi_turn_rollout
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL's note on rollout_func; this use is ours, and tested
    if config.use_gym_env:
        args, kwargs = _with_gym_reward(args, kwargs)
    return args, kwargs


def server_scheduler(config) -> dict | None:
    """Server mode: the multi-turn scheduler the rollout server runs (its /info's ``multi_turn``), or None.
    Waits for the server as the rollout backend would (--vllm_server_timeout)."""
    if not (config.use_vllm and config.vllm_mode == "server"):
        return None
    from ..generation.auth import given_trainer_key
    from ..generation.client import RolloutClient

    key = given_trainer_key(config.vllm_server_api_key, config.vllm_server_api_key_file)
    client = RolloutClient(config.vllm_server_host, config.vllm_server_port, timeout=config.vllm_server_timeout, api_key=key)
    try:
        return client.wait_until_up().get("multi_turn")
    finally:
        client.session.close()


def check_server_scheduler(config, served: dict) -> None:
    """The flags that cannot run with a rollout server that runs the scheduler, in one sentence each."""
    where = f"the rollout server at {config.vllm_server_host}:{config.vllm_server_port}"
    if config.multi_turn_scheduler is not None:
        raise UserError(
            f"{where} runs multi-turn scheduler {served['scheduler']} itself, so --multi_turn_scheduler "
            f"{config.multi_turn_scheduler} would run a second one here; drop --multi_turn_scheduler from the trainer "
            "(the server's scheduler runs the turns, as in ms-swift's server mode)"
        )
    if config.max_staleness:
        raise UserError(f"{where} runs multi-turn scheduler {served['scheduler']}, whose turns follow the current "
                        "weights; --async_generate / --max_staleness cannot ask for them ahead, leave them off")


def with_server_multi_turn(config, served: dict, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """TRL's constructor arguments when the rollout server runs the scheduler (ms-swift's server mode): the
    rollout function that asks it for whole trajectories, and the gym reward when it runs a gym environment."""
    check_server_scheduler(config, served)
    where = f"the rollout server at {config.vllm_server_host}:{config.vllm_server_port}"
    if kwargs.get("rollout_func") is not None:
        raise ValueError(f"{where} runs the multi-turn scheduler; do not pass rollout_func as well")
    kwargs["rollout_func"] = server_multi_turn_rollout
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if served.get("use_gym_env"):
        args, kwargs = _with_gym_reward(args, kwargs)
    return args, kwargs


def _with_gym_reward(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = list(args)
    if len(args) >= 2:
        args[1] = [*_as_list(args[1]), gym_reward]
    else:
        kwargs["reward_funcs"] = [*_as_list(kwargs.get("reward_funcs")), gym_reward]
    return tuple(args), kwargs


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def gym_reward(completions, rollout_infos=None, **kwargs) -> list[float]:
    """--use_gym_env: the environment's total reward over the trajectory (its rollout_infos' total_reward)."""
    if rollout_infos is None:
        raise ValueError("gym_reward needs multi-turn rollouts (rollout_infos); it is added by use_gym_env")
    return [float(info.get("total_reward", 0.0)) for info in rollout_infos]


def build_scheduler(trainer):
    args = trainer.args
    options = {}
    if args.multi_turn_scheduler == "forced_interruption":
        options = {"thinking_budget": args.thinking_budget, "interruption_phrase": args.interruption_phrase}
    return make_scheduler(args.multi_turn_scheduler, args.max_turns, trainer.processing_class, args.gym_env, **options)


def as_messages(prompt) -> list[dict]:
    """A dataset prompt as a conversation (a plain-text prompt is the user's one message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


def multi_turn_rollout(prompts: list, trainer) -> dict:
    """TRL's ``rollout_func``: one trajectory per row of this process's generation batch, run here."""
    args = trainer.args
    rows = _rows(trainer, prompts)
    tokenizer = trainer.processing_class
    engine = TrajectoryEngine(
        tokenizer,
        generate_batch=_backend(trainer),
        max_completion_length=args.max_completion_length,
        eos_token_ids=trainer.eos_token_ids,
        chat_template_kwargs=getattr(trainer, "chat_template_kwargs", None) or {},
        scheduler_name=args.multi_turn_scheduler,
        model_name=str(getattr(trainer.model.config, "_name_or_path", "policy")),
    )
    scheduler = trainer._multi_turn_scheduler
    scheduler.infer_engine = engine
    requests = [
        RolloutInferRequest(messages=as_messages(prompt), data_dict=_columns(row), uuid=uuid.uuid4().hex)
        for prompt, row in zip(prompts, rows)
    ]
    config = RequestConfig(
        max_tokens=args.max_completion_length, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, logprobs=trainer.use_vllm, n=1,
    )  # fmt: skip
    with _generation_context(trainer):
        outputs = asyncio.run(run_trajectories(scheduler, engine, requests, config))
    one_output_each(outputs, args.multi_turn_scheduler)
    limit = args.max_completion_length
    records = [trajectory_record(o, engine.trajectories[r.uuid], tokenizer, limit) for o, r in zip(outputs, requests)]
    return training_batch(trainer, records, args.multi_turn_scheduler, with_logprobs=trainer.use_vllm)


def server_multi_turn_rollout(prompts: list, trainer) -> dict:
    """TRL's ``rollout_func`` when the rollout server runs the scheduler (``swift rollout --multi_turn_scheduler``,
    ms-swift's server mode): each process sends its rows and gets their finished trajectories back. The
    rows' other columns travel only with --vllm_server_pass_dataset, as in ms-swift."""
    args = trainer.args
    rows = _rows(trainer, prompts)
    backend = trainer.vllm_generation
    backend._push_weights()  # every process takes part (ZeRO-3 gathers); the main one sends
    client = _client(backend)
    payload = {
        "rows": [
            {"messages": as_messages(prompt), "data_dict": _columns(row) if args.vllm_server_pass_dataset else {}}
            for prompt, row in zip(prompts, rows)
        ],
        "max_tokens": args.max_completion_length,
        "chat_template_kwargs": getattr(trainer, "chat_template_kwargs", None) or {},
        **_sampling(trainer),
    }
    records = client.trajectories(payload)
    backend.last_rollout_version = backend.weights_version
    scheduler = trainer._server_scheduler["scheduler"]
    return training_batch(trainer, records, f"{scheduler} (on the rollout server)", with_logprobs=True)


def _rows(trainer, prompts: list) -> list:
    rows = trainer._rollout_rows
    if rows is None or len(rows) != len(prompts):
        raise RuntimeError("internal error: the multi-turn rollout lost its dataset rows")
    return rows


def _columns(row: dict) -> dict:
    """A row's columns but the prompt: the scheduler's ``data_dict`` (a reference solution, an environment seed...)."""
    return {key: value for key, value in row.items() if key != "prompt"}


def training_batch(trainer, records: list[dict], scheduler: str, with_logprobs: bool) -> dict:
    """What TRL's rollout_func returns, from one :func:`trajectory_record` per row; keeps the final replies
    for the rewards and logs the turn counts."""
    trainer._multi_turn_completions = [record["reply"] for record in records]
    trainer._metrics["train" if trainer.model.training else "eval"]["multi_turn/turns"].extend(
        float(record["rollout_infos"].get("num_turns", 1)) for record in records
    )
    interrupted = [record["rollout_infos"].get("interrupted") for record in records]
    if any(flag is not None for flag in interrupted):  # forced_interruption: the share of trajectories cut at the budget
        trainer._metrics["train" if trainer.model.training else "eval"]["multi_turn/interrupted"].append(
            sum(bool(flag) for flag in interrupted) / len(interrupted)
        )
    if not any(sum(record["env_mask"]) for record in records):
        raise UserError(f"multi-turn scheduler {scheduler} produced no sampled tokens in this rollout (nothing to train on)")
    return {
        "prompt_ids": [record["prompt_ids"] for record in records],
        "completion_ids": [record["completion_ids"] for record in records],
        "env_mask": [record["env_mask"] for record in records],
        "logprobs": [record["logprobs"] for record in records] if with_logprobs else None,
        "rollout_infos": [record["rollout_infos"] for record in records],
    }


# ------------------------------------------------------------------ backends: a batch of token prompts -> new tokens
def _backend(trainer):
    if not trainer.use_vllm:
        return _hf_generate(trainer)
    if trainer.args.vllm_mode == "colocate":
        return _colocate_generate(trainer)
    return _server_generate(trainer)


class _generation_context:
    """transformers' generate runs on the unwrapped model (ZeRO-3 weights gathered once for the whole rollout,
    so every process enters the gather once however many turns its trajectories take); vLLM needs nothing."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.context = None

    def __enter__(self):
        trainer = self.trainer
        if trainer.use_vllm:
            return self
        from trl.models.utils import unwrap_model_for_generation

        self.context = unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            generation_kwargs=trainer.generation_kwargs, gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        )  # fmt: skip
        trainer._multi_turn_model = self.context.__enter__()
        return self

    def __exit__(self, *exc):
        if self.context is not None:
            self.trainer._multi_turn_model = None
            return self.context.__exit__(*exc)
        return False


def _hf_generate(trainer):
    from transformers import GenerationConfig

    tokenizer = trainer.processing_class
    pad = tokenizer.pad_token_id
    device = trainer.accelerator.device

    def generate(prompts: list[list[int]], limits: list[int]):
        model = trainer._multi_turn_model
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        attention = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            attention[row, width - len(prompt) :] = 1
        config = GenerationConfig(**{**trainer.generation_config.to_dict(), "max_new_tokens": max(limits)})
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)
        new = output[:, width:].tolist()
        return [(_until_eos(tokens, trainer.eos_token_ids, pad)[:limit], None) for tokens, limit in zip(new, limits)]

    return generate


def _until_eos(tokens: list[int], eos_ids, pad: int) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


def _colocate_generate(trainer):
    backend = trainer.vllm_generation
    sampling = _sampling(trainer)
    sampling.update(sampling.pop("generation_kwargs") or {})

    def generate(prompts: list[list[int]], limits: list[int]):
        results = vllm_turns(backend.llm, prompts, limits, sampling)
        backend.last_rollout_version = backend.weights_version
        return results

    return generate


def _server_generate(trainer):
    """Each process asks the rollout server for its own trajectories' turns (the server batches what arrives).
    The current weights are pushed once, before the rollout's first turn (every process takes part)."""
    backend = trainer.vllm_generation
    backend._push_weights()
    client = _client(backend)

    def generate(prompts: list[list[int]], limits: list[int]):
        results: list = [None] * len(prompts)
        for limit in sorted(set(limits)):  # one request per distinct turn budget
            rows = [i for i, value in enumerate(limits) if value == limit]
            payload = client.generate(prompts=[prompts[i] for i in rows], n=1, max_tokens=limit, logprobs=0, **_sampling(trainer))
            logprobs = payload.get("logprobs")
            for j, i in enumerate(rows):
                token_logprobs = [step[0] if isinstance(step, list) else step for step in logprobs[j]] if logprobs else None
                results[i] = (list(payload["completion_ids"][j]), token_logprobs)
        backend.last_rollout_version = backend.weights_version
        return results

    return generate


def _client(backend):
    """The process's client of the rollout server: the main process holds the weight-pushing one; the others
    need HTTP only."""
    if backend.vllm_client is not None:
        return backend.vllm_client
    from ..generation.client import RolloutClient

    return RolloutClient(backend.server_host, backend.server_port, timeout=backend.server_timeout, api_key=backend.api_key)


def _sampling(trainer) -> dict:
    """The rollout's sampling settings, as the rollout server's requests name them."""
    return dict(
        repetition_penalty=trainer.repetition_penalty, temperature=trainer.temperature, top_p=trainer.top_p,
        top_k=trainer.top_k, min_p=0.0 if trainer.min_p is None else trainer.min_p,
        generation_kwargs=trainer.vllm_generation.generation_kwargs,
    )  # fmt: skip
