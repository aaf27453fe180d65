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
  only with probability ``--clean_prob`` (0.3) and otherwise the sum off by 1 to ``--max_shift`` (2) either way. The
  network learns the format (answer digits, then ``<eos>``) and a distribution over answers whose mode is right (greedy
  accuracy ~0.93), yet sampling at temperature 1.0 is right only ~29% of the time. That is where a reward for exact
  matches can visibly climb, which is the whole point of the demo. The noise is kept *near* the true sum on purpose:
  wider noise (off by up to 6 or 10) left the 800-step model unsure of the sums themselves (greedy accuracy 0.4-0.6),
  which RL cannot fix quickly.
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
)

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from swift_cispo.demo.task import all_problems, make_problems  # noqa: E402
from swift_cispo.demo.tiny import build_model, build_tokenizer  # noqa: E402

def noisy_answer(true_sum: int, clean_prob: float, max_shift: int, gen: torch.Generator) -> int:
    """The pretraining target: ``true_sum`` with probability ``clean_prob``, otherwise off by 1..``max_shift``."""
    if torch.rand((), generator=gen).item() < clean_prob:
        return true_sum
    shift = int(torch.randint(1, max_shift + 1, (), generator=gen))
    sign = 1 if torch.rand((), generator=gen).item() < 0.5 else -1
    # Keep targets non-negative (a "-" would teach an unseen character) by reflecting the shift.
    return true_sum + sign * shift if true_sum + sign * shift >= 0 else true_sum + shift


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


def pretrain(model, tokenizer, *, steps: int, lr: float, clean_prob: float, max_shift: int, seed: int) -> None:
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
        answers = [str(noisy_answer(s, clean_prob, max_shift, gen)) for s in sums]
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
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"  reload ok; greedy '12+7=' -> {answer!r}")


def main() -> None:
    default_dir = Path(__file__).resolve().parent.parent / "swift_cispo" / "demo"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=default_dir, help="writes model/ and addition.jsonl here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800, help="pretraining steps (full problem table per step)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clean_prob", type=float, default=0.3, help="chance a pretraining target is the true sum")
    parser.add_argument("--max_shift", type=int, default=2, help="noisy targets are off by 1..max_shift")
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
    print(
        f"model: {n_params:,} parameters; pretraining {args.steps} steps "
        f"(clean_prob={args.clean_prob}, max_shift={args.max_shift})"
    )
    pretrain(
        model,
        tokenizer,
        steps=args.steps,
        lr=args.lr,
        clean_prob=args.clean_prob,
        max_shift=args.max_shift,
        seed=args.seed,
    )
    metrics = evaluate(model, tokenizer)
    print(f"base model: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    for path in model_dir.iterdir():
        path.chmod(0o644)  # safetensors are written 0600; installed package data must be readable by every user

    dataset_path = out_dir / "addition.jsonl"
    with dataset_path.open("w") as f:
        for row in make_problems(seed=args.seed):
            f.write(json.dumps(row) + "\n")

    check(model_dir)
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6
    print(f"wrote {model_dir} ({size_mb:.2f} MB) and {dataset_path} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
