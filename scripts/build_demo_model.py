#!/usr/bin/env python
"""Rebuild swift-cispo's embedded demo: a tiny causal LM plus its addition data set.

What gets written (into ``--output_dir``, by default the installed ``swift_cispo/demo/`` folder):

* ``model/``: a ``Qwen2ForCausalLM`` with its tokenizer, chat template and generation config, loadable with
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and nothing else (no hub access).
* ``addition.jsonl``: the 400 problems ``a+b=`` with ``0 <= a, b <= 19``, columns ``prompt`` (plain string) and
  ``answer``, in a fixed shuffled order.

Design, and why:

* **Character-level tokenizer.** One token per byte, so one per ASCII character: a digit is always exactly one
  token, which keeps the arithmetic learnable by a very small network, and there are no merges to train or download.
  Technically it is a byte-level BPE with an empty merge list, built with ``Qwen2Tokenizer`` itself, because that is
  the class ``AutoTokenizer`` forces onto every ``qwen2`` checkpoint in transformers 5 (a ``WordLevel`` character
  vocabulary would reload without its spaces and newlines; see ``build_tokenizer``). Specials: ``<pad>``, ``<eos>``,
  ``<unk>``. A minimal chat template (system line, user text, assistant text + ``<eos>``; the generation prompt adds
  nothing) lets conversational data sets render to exactly the plain-text prompts.
* **Tiny Qwen2.** 2 layers, hidden size 128, 2 attention heads of dimension 64 (kernels and attention backends
  commonly want head_dim >= 64), tied embeddings: about a third of a million parameters, ~1.4 MB on disk, and fast
  enough that an RL run finishes in minutes on two CPU cores. Qwen2 is a mainstream architecture every TRL code path
  supports (RoPE positions also make left-padded generation and right-padded scoring agree).
* **A weak "base model", deliberately.** RL post-training sharpens what a pretrained model can already sometimes do;
  it does not teach from scratch in a few hundred steps. So the model is briefly pretrained with plain next-token
  cross-entropy on the task, but with *label noise*: each time a problem is seen, its target answer is the true sum
  only with probability ``--clean_prob`` and otherwise the sum shifted by -2, -1, +1 or +2. The network learns the
  format (answer digits, then ``<eos>``) and a distribution over answers whose mode is usually right, yet sampling at
  temperature 1.0 is correct only ~a quarter of the time. That is the starting point where a reward for exact
  matches can visibly climb, which is the whole point of the demo.
* **Reproducible.** Fixed seeds, a private ``torch.Generator`` for the noise, deterministic algorithms and a fixed
  thread count, so re-running the script on the same machine and torch build rewrites bit-identical weights (across
  different CPUs, floating-point results may differ in the last bits).

The script ends with checks: tokenizer round trip, chat template, reload with the Auto classes, and the base
model's exact-match rate, both greedily and as the expected reward of temperature-1.0 sampling (computed exactly
from the model's probabilities, not sampled).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from swift_cispo.demo.task import all_problems, make_problems  # noqa: E402

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

# System message on its own line, then the user's text; the assistant's reply is closed by <eos>. A generation prompt
# adds nothing, so a conversational prompt renders exactly like the plain-text prompt the model was trained on
# (e.g. [{"role": "user", "content": "12+7="}] -> "12+7=").
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}"
    "{%- else -%}{{ message['content'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of ``ByteLevel`` pre-tokenizers.

    Printable ASCII maps to itself; space becomes "Ġ", "\\n" becomes "Ċ", and so on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def build_tokenizer() -> Qwen2Tokenizer:
    """Character-level (byte-level) tokenizer: ``<pad>``, ``<eos>``, ``<unk>`` = ids 0, 1, 2, then byte ``b`` = ``b + 3``.

    Why a byte-level BPE with *no merges* rather than a ``WordLevel`` vocabulary of characters: for any checkpoint
    whose ``config.json`` says ``model_type: qwen2``, transformers 5's ``AutoTokenizer`` ignores the saved tokenizer
    class and rebuilds the backend as ``Qwen2Tokenizer`` (Qwen's split regex + ``ByteLevel`` pre-tokenizer and
    decoder) around whatever vocabulary ``tokenizer.json`` holds. A plain character vocabulary then silently loses
    every space and newline on reload. Building the tokenizer with that very class, on a vocabulary of the 256
    byte-level symbols and an empty merge list, gives one token per byte (so one per ASCII character) that reloads
    identically, and round-trips any UTF-8 text. ``<unk>`` is kept as a conventional special but is never produced:
    every byte has a token.
    """
    symbols = byte_to_unicode()
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *(symbols[b] for b in range(256))])}
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],  # no merges: every byte stays its own token, so a digit is always exactly one token
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=None,  # prompts are fed as-is
        chat_template=CHAT_TEMPLATE,
        # Spaces are real characters here; the legacy clean-up would delete those before punctuation.
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )


def build_model(tokenizer: Qwen2Tokenizer) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=64,  # "19+19=" + "38" + <eos> is 9 tokens; 64 leaves room for chat templates
        tie_word_embeddings=True,  # the embedding matrix is a large share of such a small model
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,  # prompts are fed as-is, with no BOS
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def noisy_answer(true_sum: int, clean_prob: float, gen: torch.Generator) -> int:
    """The pretraining target: ``true_sum`` with probability ``clean_prob``, otherwise the sum off by 1 or 2."""
    if torch.rand((), generator=gen).item() < clean_prob:
        return true_sum
    shift = [-2, -1, 1, 2][int(torch.randint(4, (), generator=gen))]
    # Keep targets non-negative (a "-1" would teach an unseen character) by reflecting the shift.
    return true_sum + shift if true_sum + shift >= 0 else true_sum - shift


def encode_batch(tokenizer, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + answer + <eos>`` ids, with labels only on the answer and <eos> (-100 elsewhere)."""
    prompt_ids = tokenizer(prompts)["input_ids"]
    answer_ids = tokenizer(answers)["input_ids"]
    rows = [(p + a + [tokenizer.eos_token_id], len(p)) for p, a in zip(prompt_ids, answer_ids, strict=True)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = input_ids[i, n_prompt : len(ids)]
    return input_ids, labels


def pretrain(model, tokenizer, *, steps: int, lr: float, clean_prob: float, seed: int) -> None:
    """Supervised next-token training on the whole problem table per step, with fresh label noise every step."""
    problems = all_problems()
    prompts = [p["prompt"] for p in problems]
    sums = [int(p["answer"]) for p in problems]
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    # Linear warm-up then cosine decay to zero: stable start, and a settled (not oscillating) final model.
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    model.train()
    for step in range(steps):
        answers = [str(noisy_answer(s, clean_prob, gen)) for s in sums]
        input_ids, labels = encode_batch(tokenizer, prompts, answers)
        attention_mask = (input_ids != tokenizer.pad_token_id).long()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"  pretrain step {step:4d}/{steps}  loss {loss.item():.4f}  lr {schedule.get_last_lr()[0]:.2e}")
    model.eval()


@torch.no_grad()
def evaluate(model, tokenizer) -> dict[str, float]:
    """Greedy exact-match accuracy, and the exact expected reward of sampling at temperature 1.0.

    The latter is the mean over problems of P(answer digits then <eos>), read off a single teacher-forced pass; it is
    what the RL run's first logged reward estimates, without the sampling noise.
    """
    problems = all_problems()
    prompts = [p["prompt"] for p in problems]
    answers = [p["answer"] for p in problems]
    input_ids, labels = encode_batch(tokenizer, prompts, answers)
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    logps = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    p_correct = (logps * mask).sum(-1).exp()
    greedy_ok = ((logits.argmax(-1) == targets) | ~mask).all(-1).float()
    return {"sampled_reward_t1": p_correct.mean().item(), "greedy_accuracy": greedy_ok.mean().item()}


def check(out_dir: Path) -> None:
    """Reload everything through the Auto classes, as TRL and users will, and check the tokenizer's behaviour."""
    tok = AutoTokenizer.from_pretrained(out_dir)
    built = build_tokenizer()
    ids = tok("12+7=")["input_ids"]
    assert len(ids) == 5 and tok.decode(ids) == "12+7=", (ids, tok.decode(ids))
    for text in ["Sum: 3 + 4 = 7!\n ok", "  tabs\tand\n\nnewlines ", "naïve café ✓"]:
        assert tok(text)["input_ids"] == built(text)["input_ids"], f"reloaded tokenizer differs on {text!r}"
        assert tok.decode(tok(text)["input_ids"]) == text, f"no round trip for {text!r}"
    assert tok.decode(tok("19<eos>")["input_ids"], skip_special_tokens=True) == "19"
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "Add."}, {"role": "user", "content": "12+7="}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == "Add.\n12+7=", repr(rendered)
    turn = tok.apply_chat_template(
        [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}], tokenize=False
    )
    assert turn == "1+1=2<eos>", repr(turn)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # One greedy answer end to end, as a smoke test of generation with the saved configs.
    prompt = tok("12+7=", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    print(f"  reload ok; greedy '12+7=' -> {tok.decode(out[0, prompt['input_ids'].shape[1]:], skip_special_tokens=True)!r}")


def main() -> None:
    default_dir = Path(__file__).resolve().parent.parent / "swift_cispo" / "demo"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=default_dir, help="writes model/ and addition.jsonl here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600, help="pretraining steps (full problem table per step)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clean_prob", type=float, default=0.3, help="chance a pretraining target is the true sum")
    parser.add_argument("--threads", type=int, default=2, help="fixed so that results do not depend on core count")
    args = parser.parse_args()

    start = time.time()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    out_dir: Path = args.output_dir
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters; pretraining {args.steps} steps (clean_prob={args.clean_prob})")
    pretrain(model, tokenizer, steps=args.steps, lr=args.lr, clean_prob=args.clean_prob, seed=args.seed)
    metrics = evaluate(model, tokenizer)
    print(f"base model: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)

    dataset_path = out_dir / "addition.jsonl"
    with dataset_path.open("w") as f:
        for row in make_problems(seed=args.seed):
            f.write(json.dumps(row) + "\n")

    check(model_dir)
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6
    print(f"wrote {model_dir} ({size_mb:.2f} MB) and {dataset_path} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
