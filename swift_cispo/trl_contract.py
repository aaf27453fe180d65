"""What this package relies on inside TRL and transformers, written down so a release that moves it fails loudly.

swift-cispo subclasses TRL's ``GRPOTrainer``. Most of what it uses is public, but a few seams are
private: the rollout itself (``_generate_and_score_completions``), the log-prob pass, the reward
call, transformers' checkpoint hooks, and the colocated vLLM engine's setup, which
:mod:`swift_cispo.generation.backends` forks to choose the engine's dtype. Each is listed here with
the parameters it must have (and, for the fork, the source it was forked from), and
:func:`contract_breaks` compares them with the installed packages. ``tests/test_trl_contract.py``
runs it in about a second, so a TRL bump fails there, with the list, rather than somewhere inside
a long end-to-end run or silently.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from importlib import metadata

#: The TRL releases this package is tested with (setup.py pins the same range).
TESTED_TRL = ((1, 16), (1, 17))  # >= 1.16, < 1.17

# "module:Qualified.name" -> parameter names, in order ("self" included for methods).
SIGNATURES: dict[str, tuple[str, ...]] = {
    # the rollout seam the trainer calls once per generation, and the pieces of TRL's batching it reuses
    "trl.trainer.grpo_trainer:GRPOTrainer._generate_and_score_completions": ("self", "inputs"),
    "trl.trainer.utils:split_tensor_dict": ("tensor_dict", "num_chunks"),
    "trl.trainer.utils:shuffle_sequence_dict": ("seq_dict",),
    "trl.trainer.utils:split_pixel_values_by_grid": ("batch",),
    "trl.trainer.utils:unsplit_pixel_values_by_grid": ("batch",),
    # the loss path
    "trl.trainer.grpo_trainer:GRPOTrainer._compute_loss": ("self", "model", "inputs"),
    "trl.trainer.grpo_trainer:GRPOTrainer._get_per_token_logps_and_entropies": (
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
        "compute_aux_loss", "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask",
        "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
    ),
    "trl.trainer.grpo_trainer:GRPOTrainer.get_high_entropy_mask": ("self", "entropies", "mask", "threshold"),
    # the plain LM-head path (trainers/log_probs.py) that stands in for TRL's fused head on a CPU
    "trl.trainer.utils:selective_log_softmax": ("logits", "index", "temperature", "row_mask"),
    "trl.trainer.utils:entropy_from_logits": ("logits", "chunk_size"),
    # rewards and async prefetch
    "trl.trainer.grpo_trainer:GRPOTrainer._calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "trl.trainer.grpo_trainer:GRPOTrainer._tokenize_prompts": ("self", "prompts"),
    # the train sampler, rebuilt from TRL's as EpochSampler (set_epoch, No-Positive-Resampling)
    "trl.trainer.grpo_trainer:GRPOTrainer._get_train_sampler": ("self", "dataset"),
    "trl.trainer.utils:RepeatSampler.__init__": (
        "self", "data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed",
    ),
    # transformers' hooks: batches are fetched (and prepared) per optimizer step, checkpoints extended
    "transformers.trainer:Trainer.get_batch_samples": ("self", "epoch_iterator", "num_batches", "device"),
    "transformers.trainer:Trainer._prepare_inputs": ("self", "inputs"),
    "transformers.trainer:Trainer._save_rng_state": ("self", "output_dir"),
    "transformers.trainer:Trainer._load_rng_state": ("self", "checkpoint"),
    "transformers.trainer:Trainer._load_optimizer_and_scheduler": ("self", "checkpoint"),
    # the vLLM backends: TRL's VLLMGeneration, built with the arguments TRL's trainer gives it
    "trl.generation.vllm_generation:VLLMGeneration.__init__": (
        "self", "model", "accelerator", "processing_class", "mode", "structured_outputs_regex", "server_base_url",
        "server_host", "server_port", "server_timeout", "group_port", "tensor_parallel_size",
        "gpu_memory_utilization", "max_model_length", "max_num_seqs", "enable_sleep_mode", "model_impl",
        "trust_remote_code", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
        "max_completion_length", "logprobs", "generation_kwargs",
    ),
    "trl.generation.vllm_generation:VLLMGeneration._iter_named_params": ("self",),
    "trl.generation.vllm_generation:empty_cache": (),
    "trl.trainer.utils:ensure_master_addr_port": ("addr", "port"),
}

# "module:Qualified.name" -> text its source must contain: behaviour the trainer counts on.
SOURCE_MARKERS: dict[str, tuple[str, ...]] = {
    # transformers hands each batch to _prepare_inputs (this trainer's hand-off from its rollout window)
    "transformers.trainer:Trainer.training_step": ("self._prepare_inputs(",),
    "transformers.trainer:Trainer.prediction_step": ("self._prepare_inputs(",),
    # ... fetches a step's batches with get_batch_samples, where this trainer generates, and restores the RNG there
    "transformers.trainer:Trainer._run_epoch": ("get_batch_samples(", "_load_rng_state("),
    # TRL keeps metrics and rollout logs in these dicts, and syncs vLLM weights when the step changes
    "trl.trainer.grpo_trainer:GRPOTrainer.__init__": ("self._metrics =", "self._logs ="),
    "trl.trainer.grpo_trainer:GRPOTrainer._generate_single_turn": ("self._last_loaded_step",),
    # TRL's own ratio metrics, which the trainer removes (a correction it does not apply)
    "trl.trainer.grpo_trainer:GRPOTrainer._generate_and_score_completions": (
        "sampling/importance_sampling_ratio/min",
        "sampling/importance_sampling_ratio/mean",
        "sampling/importance_sampling_ratio/max",
        '"old_per_token_logps"',
        '"sampling_per_token_logps"',
    ),
    "trl.generation.vllm_generation:VLLMGeneration.sync_weights": ("_llm_weights_sleeping",),
    # EpochSampler re-draws TRL's permutation for a given epoch: one randperm of the data per epoch
    "trl.trainer.utils:RepeatSampler.__iter__": ("torch.randperm(self.num_samples, generator=self.generator)",),
}

# "module:Qualified.name" -> sha256 prefix of its source: code this package forks (ColocateGeneration._init_vllm
# is TRL's engine setup with a dtype added). A change upstream means the fork must be reviewed.
FORKED_SOURCES: dict[str, str] = {
    "trl.generation.vllm_generation:VLLMGeneration._init_vllm": "0e584002e0f6a9c0",
}


def _resolve(target: str):
    module_name, _, qualified = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualified.split("."):
        obj = getattr(obj, part)
    return obj


def contract_breaks() -> list[str]:
    """Every way the installed TRL / transformers differ from what this package relies on (empty: none)."""
    breaks: list[str] = []
    for target, expected in SIGNATURES.items():
        try:
            found = tuple(inspect.signature(_resolve(target)).parameters)
        except (ImportError, AttributeError) as err:
            breaks.append(f"{target}: missing ({err})")
            continue
        if found != expected:
            breaks.append(f"{target}: parameters are {found}, expected {expected}")
    for target, markers in SOURCE_MARKERS.items():
        try:
            source = inspect.getsource(_resolve(target))
        except (ImportError, AttributeError, OSError, TypeError) as err:
            breaks.append(f"{target}: missing ({err})")
            continue
        breaks += [f"{target}: no longer contains {marker!r}" for marker in markers if marker not in source]
    for target, digest in FORKED_SOURCES.items():
        try:
            source = inspect.getsource(_resolve(target))
        except (ImportError, AttributeError, OSError, TypeError) as err:
            breaks.append(f"{target}: missing ({err})")
            continue
        if hashlib.sha256(source.encode()).hexdigest()[:16] != digest:
            breaks.append(f"{target}: its source changed; review the fork in swift_cispo/generation/backends.py")
    return breaks


def trl_version_problem() -> str | None:
    """One sentence when the installed TRL is outside the tested range, else None."""
    version = metadata.version("trl")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    low, high = TESTED_TRL
    if low <= parts < high:
        return None
    return (
        f"TRL {version} is installed, but swift-cispo is tested with TRL >= {low[0]}.{low[1]}, < {high[0]}.{high[1]}; "
        "run `python -m pytest tests/test_trl_contract.py` to see which internals it relies on have moved"
    )
