"""The micro-batch memory estimate (swift_cispo.memory): against a measured peak, and the warning it gives."""

from __future__ import annotations

import pytest
import torch

from helpers import FAST, swift_in_process
from swift_cispo import memory
from swift_cispo.memory import ModelShape, estimate_peak_memory, memory_warning, model_shape

# The estimate may be off by at most this factor either way from the peak tensor memory measured on a tiny Llama.
FACTOR = 1.3


SMOLLM2 = ModelShape(  # SmolLM2-135M-Instruct in float32 (scripts/get_real_model.py)
    parameters=134_515_008, trainable_parameters=134_515_008, hidden_size=576, intermediate_size=1536,
    num_layers=30, kv_width=192, vocab_size=49152, bytes_per_value=4,
)  # fmt: skip


def measured_peak(config, batch: int, sequence: int, checkpointing: bool, plain: bool = False) -> int:
    """Peak bytes of tensors (weights, gradients, AdamW states, activations, temporaries) over a second training step
    (forward, backward, optimizer) through TRL's fused LM head, half the tokens scored, as in a GRPO micro-batch;
    with ``plain``, through the trainer's plain head on the CPU (the completion positions' logits held whole)."""
    import contextlib

    from swift_cispo.trainers.log_probs import completion_log_probs

    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, sequence))
    labels = ids.clone()
    labels[:, : sequence // 2] = -100

    def step():
        if plain:
            log_probs, _ = completion_log_probs(model, ids, torch.ones_like(ids), sequence // 2, 1.0, True, contextlib.nullcontext())
        else:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
            log_probs = out.log_probs + 0 * out.entropy
        (-log_probs.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # untracked (tracking is slow): it creates AdamW's states, which the tracked step then holds
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
    )  # fmt: skip


def test_estimate_is_within_a_factor_of_the_measured_peak(tiny_llama):
    batch, sequence = 4, 128
    shape = model_shape(tiny_llama, torch.float32)
    for checkpointing in (False, True):
        estimate = estimate_peak_memory(shape, batch_size=batch, sequence_length=sequence, gradient_checkpointing=checkpointing)
        training = estimate.static + estimate.activations + estimate.logits  # the measured steps generate nothing
        measured = measured_peak(tiny_llama, batch, sequence, checkpointing)
        print(f"checkpointing={checkpointing}: estimated {training / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
        assert measured / FACTOR <= training <= measured * FACTOR, (checkpointing, training, measured)


def test_plain_head_estimate_is_within_a_factor_of_the_measured_peak():
    """A vocabulary large against the model, so that the completion logits are most of the peak."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
    )  # fmt: skip
    batch, sequence = 8, 96
    estimate = estimate_peak_memory(model_shape(config, torch.float32), batch_size=batch, sequence_length=sequence,
                                    gradient_checkpointing=False, completion_length=sequence // 2)  # fmt: skip
    assert estimate.logits == 4 * batch * (sequence // 2 + 1) * 32000 * 4  # not the fused head's tiles
    training = estimate.static + estimate.activations + estimate.logits
    measured = measured_peak(config, batch, sequence, False, plain=True)
    assert measured / FACTOR <= training <= measured * FACTOR, (training, measured)
    # too large for the plain head's budget: the estimate is the fused head's again
    fused = estimate_peak_memory(model_shape(config, torch.float32), batch_size=batch, sequence_length=sequence, gradient_checkpointing=False)
    assert estimate_peak_memory(model_shape(config, torch.float32), batch_size=1024, sequence_length=sequence, gradient_checkpointing=False,
                                completion_length=sequence // 2).logits != 4 * 1024 * 49 * 32000 * 4  # fmt: skip
    assert fused.logits != estimate.logits


def test_activations_grow_with_batch_and_shrink_with_checkpointing():
    shape = SMOLLM2
    small = estimate_peak_memory(shape, batch_size=4, sequence_length=128, gradient_checkpointing=False)
    large = estimate_peak_memory(shape, batch_size=8, sequence_length=128, gradient_checkpointing=False)
    checkpointed = estimate_peak_memory(shape, batch_size=8, sequence_length=128, gradient_checkpointing=True)
    assert large.activations == 2 * small.activations
    assert checkpointed.activations < large.activations / 10  # 30 layers: one kept whole, 29 as their inputs
    assert large.static == small.static == shape.parameters * 4 * 4  # weights, gradients, AdamW's two states


def test_lora_trains_only_the_adapters(tiny_llama):
    full = model_shape(tiny_llama, torch.float32)
    lora = model_shape(tiny_llama, torch.float32, ["q_proj", "v_proj"], 8)
    q_and_v = 8 * ((256 + 256) + (256 + 128))  # rank x (in + out) of q_proj and v_proj
    assert lora.parameters == full.parameters and lora.trainable_parameters == tiny_llama.num_hidden_layers * q_and_v




class _Config:
    gradient_checkpointing = False
    gradient_accumulation_steps = 1

    def __init__(self, batch):
        self.per_device_train_batch_size = batch


def _smollm2(batch, checkpointing):
    return estimate_peak_memory(SMOLLM2, batch_size=batch, sequence_length=48 + 64, gradient_checkpointing=checkpointing)


def test_warning_names_the_estimate_what_is_available_and_the_fixes():
    # the run the kernel killed on a 24 GB machine: 128 completions of 64 tokens after 48-token chat prompts, one micro-batch
    warning = memory_warning(_smollm2, 21 * 2**30, 1, _Config(128), "memory")
    assert warning is not None and warning.count(". ") == 0, warning
    assert "estimated to need 25.9 GiB" in warning and "21.0 GiB of memory is available" in warning, warning
    assert "--gradient_checkpointing true" in warning, warning
    assert "--per_device_train_batch_size 64 --gradient_accumulation_steps 2" in warning, warning


def test_no_warning_when_it_fits():
    assert memory_warning(_smollm2, 21 * 2**30, 1, _Config(32), "memory") is None


def test_processes_on_one_machine_share_its_memory():
    assert memory_warning(_smollm2, 21 * 2**30, 4, _Config(32), "memory") is not None


def test_swift_rlhf_warns_before_the_weights_load(tiny_model_dir, data_file, tmp_path, capsys, monkeypatch):
    from swift_cispo.cli import rlhf
    from swift_cispo.errors import UserError

    def stop(model_args):
        raise UserError("stopped where the weights would load")

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**20)  # 1 MiB: nothing fits
    monkeypatch.setattr(rlhf, "load_model_and_tokenizer", stop)
    result = swift_in_process(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--reward_funcs", "exact_match",
        "--output_dir", tmp_path / "out", *FAST, "--report_to", "none", capsys=capsys,
    )  # fmt: skip
    assert result.returncode == 2 and "stopped where the weights would load" in result.stderr, result.stderr[-3000:]
    assert "one micro-batch is estimated to need" in result.stderr, result.stderr[-3000:]
    assert "but 1 MiB of memory is available" in result.stderr, result.stderr[-3000:]


def test_the_python_api_warns_before_training_too(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """A GRPOTrainer built in Python (no swift rlhf in front) estimates its micro-batch when it is constructed."""
    from datasets import Dataset

    from helpers import grpo_config
    from swift_cispo import GRPOTrainer

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**20)  # 1 MiB: nothing fits
    dataset = Dataset.from_dict({"prompt": ["1+2=", "13+4="] * 4})
    with caplog.at_level("WARNING", logger="swift_cispo"):
        GRPOTrainer(model=str(tiny_model_dir), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                    args=grpo_config(tmp_path), train_dataset=dataset)  # fmt: skip
    assert "one micro-batch is estimated to need" in caplog.text and "but 1 MiB of memory is available" in caplog.text
    caplog.clear()
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**40)  # 1 TiB: it fits, no word
    with caplog.at_level("WARNING", logger="swift_cispo"):
        GRPOTrainer(model=str(tiny_model_dir), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                    args=grpo_config(tmp_path), train_dataset=dataset)  # fmt: skip
    assert "estimated to need" not in caplog.text
