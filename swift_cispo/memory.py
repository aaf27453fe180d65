"""How much memory one training micro-batch needs, estimated before training, and the warning when it does not fit.

A run whose micro-batch does not fit was killed by the kernel's OOM killer with no word from the trainer (the 135M
SmolLM2 at ``--per_device_train_batch_size 128``, gradient checkpointing off, on a 24 GB machine). The estimate is
made from the model's config and the run's shapes, before any weights load:

* **static**: the weights (and a reference model's when ``beta > 0`` without LoRA), the gradients and AdamW's two
  states of every trainable parameter, in the parameters' dtype;
* **activations** saved for the backward pass of one micro-batch of ``batch x sequence`` tokens, per decoder layer
  ``9.5 h + 4 i + 2 kv`` values a token (hidden size, MLP size, key/value width): measured with
  ``torch.distributed._tools.mem_tracker`` on Llama layers of several shapes (sdpa attention, within 5%). Gradient
  checkpointing keeps one ``h`` a token per layer, plus one layer's activations while it is recomputed;
* **vocabulary logits**: TRL 1.16's fused LM head never holds the ``batch x sequence x vocabulary`` logits; it scores
  tiles of up to 4096 tokens x 32768 vocabulary entries into one buffer of that size. On the CPU its fold runs as torch
  ops whose float32 temporaries add 8.25 tiles of the real width (measured: 4.7 GB for 4096 tokens of SmolLM2's
  49152-entry vocabulary); on a GPU the Triton kernels fold in place (the buffer alone; not measured here);
  On the CPU the trainer skips the fused head when a micro-batch's completion logits fit
  (swift_cispo/trainers/log_probs.py): then the logits of the completion positions are held whole, and with
  log-softmax and autograd the peak holds 3.8 such tensors (measured with ``mem_tracker``; 4 are counted);
* **generation** (HF ``generate``, which happens between optimizer steps): the KV cache of the generation batch.

The peak is static memory plus the larger of the training pass (activations + logit tiles) and generation.
vLLM's engine (colocate) reserves its own memory and is not counted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("swift_cispo")

# TRL 1.16's fused LM head (trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE, trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE)
LOGIT_TILE_TOKENS = 4096
LOGIT_TILE_VOCAB = 32768
# values saved per token and decoder layer for backward: 9.5 x hidden + 4 x intermediate + 2 x key/value width
HIDDEN_FACTOR, INTERMEDIATE_FACTOR, KV_FACTOR = 9.5, 4.0, 2.0
# float32 temporaries of the fused head's fold on the CPU, in tiles of tokens x min(vocabulary, LOGIT_TILE_VOCAB)
CPU_FOLD_TILES = 8.25
#: The largest float32 completion logits (rows x positions x vocabulary x 4 bytes) the trainer's plain LM head
#: holds per chunk on the CPU (trainers/log_probs.py); beyond it TRL's fused head, which holds tiles only.
LOGITS_BUDGET_BYTES = 1 << 30


def plain_head_fits(rows: int, positions: int, vocab_size: int, budget: int = LOGITS_BUDGET_BYTES) -> bool:
    """Whether ``rows x positions`` float32 logits over the vocabulary fit the budget."""
    return rows * positions * vocab_size * 4 <= budget


# float32 completion-logit tensors alive at the peak of the plain head's forward and backward (measured 3.8)
PLAIN_LOGIT_COPIES = 4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model: parameter counts and the decoder's widths."""

    parameters: int
    trainable_parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    kv_width: int  # num_key_value_heads x head_dim
    vocab_size: int
    bytes_per_value: int  # 4 for float32, 2 for bfloat16/float16


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    generation: int

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def peak(self) -> int:
        return self.static + max(self.activations + self.logits, self.generation)

    def summary(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "logits", "generation")
        return ", ".join(f"{name} {gib(getattr(self, name))}" for name in parts if getattr(self, name))


def estimate_peak_memory(
    shape: ModelShape,
    *,
    batch_size: int,
    sequence_length: int,
    gradient_checkpointing: bool,
    generation_batch_size: int | None = None,
    reference_model: bool = False,
    device: str = "cpu",
    completion_length: int | None = None,
) -> MemoryEstimate:
    """Bytes one process needs at its peak to train micro-batches of ``batch_size`` sequences of ``sequence_length`` tokens
    (``completion_length`` of them completion: on the CPU, it decides whether the trainer uses the plain LM head)."""

    b = shape.bytes_per_value
    tokens = batch_size * sequence_length
    per_layer = HIDDEN_FACTOR * shape.hidden_size + INTERMEDIATE_FACTOR * shape.intermediate_size + KV_FACTOR * shape.kv_width
    if gradient_checkpointing:  # each layer's input, plus one layer recomputed during backward
        saved = shape.num_layers * shape.hidden_size + per_layer
    else:
        saved = shape.num_layers * per_layer
    activations = int(tokens * (saved + 2 * shape.hidden_size) * b)  # + embedding output and final norm
    tile_tokens = min(tokens, LOGIT_TILE_TOKENS)
    if device == "cpu" and completion_length is not None and plain_head_fits(batch_size, completion_length + 1, shape.vocab_size):
        logits = PLAIN_LOGIT_COPIES * batch_size * (completion_length + 1) * shape.vocab_size * 4
    else:
        logits = tile_tokens * LOGIT_TILE_VOCAB * b
        if device == "cpu":
            logits += int(CPU_FOLD_TILES * tile_tokens * min(shape.vocab_size, LOGIT_TILE_VOCAB) * 4)
    generating = generation_batch_size or batch_size
    kv_cache = 2 * shape.num_layers * shape.kv_width * sequence_length * generating * b
    step_logits = generating * shape.vocab_size * 4 * 2  # the last position's logits and their softmax, float32
    return MemoryEstimate(
        weights=shape.parameters * b * (2 if reference_model else 1),
        gradients=shape.trainable_parameters * b,
        optimizer=2 * shape.trainable_parameters * b,  # AdamW's exp_avg and exp_avg_sq, in the parameters' dtype
        activations=activations,
        logits=logits,
        generation=kv_cache + step_logits,
    )


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**29 else f"{n / 2**20:.0f} MiB"


def model_shape(model_config, dtype, lora_target_modules=None, lora_rank: int = 0) -> ModelShape:
    """The ``ModelShape`` of a transformers config: parameters counted on a meta-device model (no memory, no weights).

    ``lora_target_modules`` (names, or ``"all-linear"``) and ``lora_rank``: only the adapters train.
    """
    import torch
    from transformers import AutoModelForCausalLM

    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = parameters
    if lora_target_modules:
        targets = set([lora_target_modules] if isinstance(lora_target_modules, str) else lora_target_modules)
        output = model.get_output_embeddings()
        trainable = sum(
            lora_rank * (module.in_features + module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output
            and ("all-linear" in targets or name.rsplit(".", 1)[-1] in targets)
        )  # fmt: skip
    heads = getattr(text, "num_attention_heads", 1) or 1
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(
        parameters=parameters,
        trainable_parameters=trainable,
        hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        num_layers=text.num_hidden_layers,
        kv_width=kv_heads * head_dim,
        vocab_size=text.vocab_size,
        bytes_per_value=torch.empty((), dtype=dtype).element_size(),
    )


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for this process: the GPU's free memory, or the machine's MemAvailable within a cgroup's limit."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:  # a container's limit (cgroup v2)
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            available = min(available, int(limit) - int(open("/sys/fs/cgroup/memory.current").read()))
    except (OSError, ValueError):
        pass
    return available


def memory_warning(estimate_for, available: int, processes: int, config, where: str) -> str | None:
    """The one-sentence warning when ``processes`` micro-batches need more than ``available`` bytes; None if they fit.

    ``estimate_for(batch_size, gradient_checkpointing)`` -> ``MemoryEstimate``: the warning names the settings that fit.
    """
    batch, checkpointing = config.per_device_train_batch_size, bool(config.gradient_checkpointing)
    estimate = estimate_for(batch, checkpointing)
    if estimate.peak * processes <= available:
        return None
    each = f" ({processes} processes of {gib(estimate.peak)})" if processes > 1 else ""
    fixes = []
    if not checkpointing and estimate_for(batch, True).peak * processes <= available:
        fixes.append("--gradient_checkpointing true")
    for checkpointed in (checkpointing, True):
        # the largest divisor of the batch that fits, with the accumulation that keeps the optimizer step's size
        fitting = [b for b in range(batch - 1, 0, -1) if batch % b == 0 and estimate_for(b, checkpointed).peak * processes <= available]
        if fitting:
            more = config.gradient_accumulation_steps * batch // fitting[0]
            also = " --gradient_checkpointing true" if checkpointed and not checkpointing else ""
            fixes.append(f"--per_device_train_batch_size {fitting[0]} --gradient_accumulation_steps {more}{also} (the same step)")
            break
    advice = f"; {' or '.join(fixes)} would fit" if fixes else "; even one sequence with gradient checkpointing does not fit: use a smaller model or shorter sequences"
    return (
        f"one micro-batch is estimated to need {gib(estimate.peak * processes)}{each} at its peak but {gib(available)} of "
        f"{where} is available, so training may be killed for memory ({estimate.summary()}){advice}"
    )


def local_processes() -> int:
    """Training processes sharing this machine's memory (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def check_run(model_config, dtype, max_prompt_tokens: int, config, lora_target_modules=None, lora_rank: int = 0) -> str | None:
    """Estimate a run's micro-batch from its model config and settings; log and return the warning if it does not fit."""
    import torch

    shape = model_shape(model_config, dtype, lora_target_modules, lora_rank)
    gpu = torch.cuda.is_available() and not getattr(config, "use_cpu", False)
    available = available_memory("cuda" if gpu else "cpu")
    if available is None:
        return None
    sequence = max_prompt_tokens + config.max_completion_length

    def estimate_for(batch_size: int, checkpointing: bool) -> MemoryEstimate:
        return estimate_peak_memory(
            shape,
            batch_size=batch_size,
            sequence_length=sequence,
            gradient_checkpointing=checkpointing,
            generation_batch_size=None if config.use_vllm else batch_size * config.steps_per_generation,
            reference_model=config.beta > 0 and not lora_target_modules,
            device="cuda" if gpu else "cpu",
            # the trainer keeps TRL's fused head with an FP32 LM head (trainers/grpo_trainer.py), so the estimate does too
            completion_length=None if getattr(config, "cast_lm_head_to_fp32", False) else config.max_completion_length,
        )

    where = "GPU memory" if gpu else "memory"
    warning = memory_warning(estimate_for, available, 1 if gpu else local_processes(), config, where)
    logger.debug("memory estimate for %d-token sequences: %s", sequence, estimate_for(config.per_device_train_batch_size,
                                                                                       bool(config.gradient_checkpointing)).summary())
    if warning and os.environ.get("LOCAL_RANK", "0") == "0":
        logger.warning(warning)
    return warning


def longest_prompt_tokens(tokenizer, prompts, chat_template_kwargs=None, max_length: int | None = None, sample: int = 32) -> int:
    """Tokens of the longest prompt, as the trainer will render it; the longest by characters stand for the longest
    in tokens (only ``sample`` of them are tokenized)."""
    from .prompt_length import prompt_token_ids

    longest = sorted(range(len(prompts)), key=lambda i: len(str(prompts[i])), reverse=True)[:sample]
    tokens = max((len(prompt_token_ids(tokenizer, prompts[i], chat_template_kwargs)) for i in longest), default=0)
    return min(tokens, max_length) if max_length else tokens
