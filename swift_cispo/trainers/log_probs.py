"""Per-token log-probs of the completion from the model's own LM head, where that beats TRL's fused head.

TRL patches the policy with a fused LM head that never holds the ``(batch, completion, vocab)`` logits: it
projects the hidden states in tiles and recomputes each tile in the backward pass. On a GPU (Triton) it
scores only the completion positions, and the memory it saves is what makes long completions and large
vocabularies fit. Elsewhere it scores *every* position, prompt included, to keep the tile shapes fixed.
Measured on SmolLM2-135M (vocabulary 49152) on a 2-core CPU, a micro-batch of 32 x (62 prompt + 64
completion) tokens takes 24.3 s forward and backward through the fused head and 16.3 s through the
model's own head on the completion positions (``logits_to_keep``): the projection of the prompt positions,
and its recomputation, are a third of the training step (bench/real_model_throughput.py).

So on a CPU, when a chunk's completion logits are small enough to hold (``LOGITS_BUDGET_BYTES``), the trainer
takes the plain path (``swift_cispo.memory.plain_head_fits``): the model's forward with ``logits_to_keep``, then log-softmax. Same numbers, checked
against TRL's fused head at the gradient (tests/test_log_probs.py). Everything else (a GPU, images, a
router's auxiliary loss, an FP32 LM head) stays on TRL's path.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

def completion_log_probs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, temperature: float,
    compute_entropy: bool, autocast,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """log pi(o_t | o_<t) of the last ``logits_to_keep`` tokens, and their entropies (no gradient), as TRL's fused head.

    The logits at position t predict token t+1, so ``logits_to_keep + 1`` positions are projected and the
    last dropped. A padded position (attention 0) gets log-prob and entropy 0, as in TRL.
    """
    with autocast:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep + 1).logits
    logits = logits[:, :-1].float() / temperature
    padded = attention_mask[:, -logits_to_keep:] == 0
    log_probs = selective_log_softmax(logits, input_ids[:, -logits_to_keep:]).masked_fill(padded, 0.0)
    entropies = None
    if compute_entropy:
        with torch.no_grad():
            entropies = entropy_from_logits(logits).masked_fill(padded, 0.0)
    return log_probs, entropies
