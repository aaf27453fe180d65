"""Checkpoints refused before compute: weights of another shape, files this tool does not write, pickled code.

The checkpoint folders are made by hand (safetensors from the safetensors library, state files with
torch.save as transformers writes them), so each case changes exactly one thing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from helpers import assert_clean_error, swift

from swift_cispo.checkpoints import check_resume_fits, resolve_resume
from swift_cispo.pickles import pickle_problem
from swift_cispo.errors import UserError


def _checkpoint(root: Path, model_dir: Path, step: int = 3) -> Path:
    """A complete checkpoint of ``model_dir``'s model, as a run of this tool leaves it."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    shutil.copy(model_dir / "model.safetensors", folder / "model.safetensors")
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones(3)
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict(), folder / "scheduler.pt")
    # transformers' Trainer._save_rng_state, on a CPU machine
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    (folder / "config.json").write_text((model_dir / "config.json").read_text())
    return folder


class RunsCode:
    """A pickle payload: unpickling it would create the folder ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_checkpoint_this_tool_writes_fits_its_model(tmp_path, tiny_model_dir):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    assert resolve_resume(str(folder), None) == (folder, [])
    check_resume_fits(folder, str(tiny_model_dir))  # no error
    # the same files pass torch's restricted loader the way transformers calls it on resume
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():
        for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt"):
            torch.load(folder / name, weights_only=True)


def test_weights_of_another_shape_are_named_with_both_shapes(tmp_path, tiny_model_dir):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    weights = load_file(str(folder / "model.safetensors"))
    name = "model.embed_tokens.weight"
    vocab, hidden = weights[name].shape
    weights[name] = torch.zeros(vocab + 5, hidden)
    weights["model.norm.weight"] = torch.zeros(hidden * 2)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(UserError) as err:
        check_resume_fits(folder, str(tiny_model_dir))
    assert str(err.value) == (
        f"cannot resume from {folder}: its model.safetensors has {name} of shape [{vocab + 5}, {hidden}], but --model "
        f"{tiny_model_dir} has [{vocab}, {hidden}] (1 more weights differ), so it was saved from another model; resume "
        "with the --model that run trained, or start a new run"
    )


def test_sharded_weights_are_read_through_their_index(tmp_path, tiny_model_dir):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weights[names[-1]] = torch.zeros(7, 7)  # in the second shard
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match=rf"its model\.safetensors\.index\.json has {names[-1]} of shape \[7, 7\]"):
        check_resume_fits(folder, str(tiny_model_dir))


@pytest.mark.parametrize("name", ["extra.pkl", "custom_loader.py", "pytorch_model.pt", "weights.npy", "global_step3/hook.py"])
def test_loadable_files_this_tool_does_not_write_are_refused(tmp_path, tiny_model_dir, name):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"\x80\x02N.")
    with pytest.raises(UserError) as err:
        check_resume_fits(folder, str(tiny_model_dir))
    assert str(err.value) == (
        f"cannot resume from {folder}: {name} is not a file swift-cispo writes in a checkpoint (a {Path(name).suffix} "
        "file can run code when loaded); resume from a checkpoint this tool saved, or remove that file"
    )


def _deepspeed_states(folder: Path) -> Path:
    """DeepSpeed's per-process files, holding what its ZeRO optimizer states hold besides tensors."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    states = folder / "global_step3"
    states.mkdir()
    torch.save({"module": {"w": torch.ones(2)}, "param_shapes": [torch.Size([2])]}, states / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    optim = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "param_slice_mappings": [fragment_address(2, 0)]}
    torch.save({"optimizer_state_dict": optim, "ds_version": "0.18"}, states / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text("global_step3")
    for script in ("zero_to_fp32.py", "zero_to_torch.py"):
        (folder / script).write_text("# DeepSpeed's conversion script\n")
    return states


def test_files_that_cannot_run_code_and_deepspeed_states_are_accepted(tmp_path, tiny_model_dir):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    (folder / "notes.txt").write_text("my run")
    (folder / "tokenizer.json").write_text("{}")
    _deepspeed_states(folder)
    check_resume_fits(folder, str(tiny_model_dir))


def _raw_torch_file(path: Path, pickle_bytes: bytes) -> None:
    """A torch.save-shaped archive around a hand-written pickle."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{path.stem}/data.pkl", pickle_bytes)


@pytest.mark.parametrize(
    "pickle_bytes, what",
    [
        (None, "a reference to os.makedirs"),  # a payload DeepSpeed's unrestricted loader would run
        (b"\x80\x02cdeepspeed.launcher.runner\nsubprocess\n.", "a reference to deepspeed.launcher.runner.subprocess"),  # imported, not defined there
        (b"\x80\x02cdeepspeed.runtime.engine\nDeepSpeedEngine\n.", "a reference to deepspeed.runtime.engine.DeepSpeedEngine"),  # not a state class
    ],
)
def test_deepspeed_states_holding_more_than_deepspeed_state_are_refused(tmp_path, tiny_model_dir, pickle_bytes, what):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    states = _deepspeed_states(folder)
    target = states / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if pickle_bytes is None:
        torch.save({"optimizer_state_dict": RunsCode(tmp_path / "code_ran")}, target)
    else:
        _raw_torch_file(target, pickle_bytes)
    with pytest.raises(UserError) as err:
        check_resume_fits(folder, str(tiny_model_dir))
    assert str(err.value).startswith(f"cannot resume from {folder}: global_step3/{target.name} holds {what}, which"), str(err.value)
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_a_pickle_payload_is_refused_without_running_it(tmp_path, tiny_model_dir, name, protocol):
    folder = _checkpoint(tmp_path, tiny_model_dir)
    marker = tmp_path / "code_ran"
    torch.save({"cpu": torch.zeros(2), "payload": RunsCode(marker)}, folder / name, pickle_protocol=protocol)
    with pytest.raises(UserError) as err:
        check_resume_fits(folder, str(tiny_model_dir))
    what = "a reference to os.makedirs" if protocol == 2 else "the opcode STACK_GLOBAL"
    assert str(err.value).startswith(
        f"cannot resume from {folder}: {name} holds {what}, which the files swift-cispo saves never hold (a pickle "
        "that could run code, so it was not loaded); resume from a checkpoint this tool saved"
    ), str(err.value)
    assert not marker.exists()
    # what resume would have met instead: torch's refusal, whose text suggests weights_only=False
    with pytest.raises(Exception, match="weights_only"):
        torch.load(folder / name, weights_only=True)
    assert not marker.exists()


def test_a_file_that_is_not_a_torch_archive_is_named(tmp_path):
    path = tmp_path / "rng_state.pth"
    path.write_bytes(b"\x80\x02cos\nsystem\n.")  # a bare pickle, not torch.save's zip
    assert pickle_problem(path) == "rng_state.pth is not a file torch.save writes; resume from a checkpoint this tool saved"


def _adapter_checkpoint(tmp_path: Path, model_dir: Path, rank: int, in_features_delta: int = 0) -> Path:
    folder = _checkpoint(tmp_path, model_dir)
    (folder / "model.safetensors").unlink()
    weights = load_file(str(model_dir / "model.safetensors"))
    out_features, in_features = weights["model.layers.0.self_attn.q_proj.weight"].shape
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    adapter = {
        f"{prefix}.lora_A.weight": torch.zeros(rank, in_features + in_features_delta),
        f"{prefix}.lora_B.weight": torch.zeros(out_features, rank),
    }
    save_file(adapter, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return folder


def test_lora_checkpoints_check_kind_rank_and_features(tmp_path, tiny_model_dir):
    model = str(tiny_model_dir)
    folder = _adapter_checkpoint(tmp_path / "a", tiny_model_dir, rank=4)
    check_resume_fits(folder, model, train_type="lora", lora_rank=4)
    with pytest.raises(UserError, match=r"it holds a LoRA adapter \(adapter_model\.safetensors\), not full weights; resume it with --train_type lora$"):
        check_resume_fits(folder, model)
    with pytest.raises(UserError, match=r"has LoRA rank 4, but --lora_rank is 8; resume with --lora_rank 4$"):
        check_resume_fits(folder, model, train_type="lora", lora_rank=8)
    wider = _adapter_checkpoint(tmp_path / "b", tiny_model_dir, rank=4, in_features_delta=3)
    with pytest.raises(UserError, match=r"has base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight of shape \[4, \d+\]"):
        check_resume_fits(wider, model, train_type="lora", lora_rank=4)
    full = _checkpoint(tmp_path / "c", tiny_model_dir)
    with pytest.raises(UserError, match=r"it holds full model weights \(model\.safetensors\), not a LoRA adapter; resume it with --train_type full$"):
        check_resume_fits(full, model, train_type="lora", lora_rank=8)


@pytest.mark.slow
def test_cli_refuses_a_checkpoint_of_another_shape_before_loading_anything(tmp_path, tiny_model_dir, data_file):
    folder = _checkpoint(tmp_path / "old_run", tiny_model_dir)
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.norm.weight"] = torch.zeros(weights["model.norm.weight"].shape[0] + 1)
    save_file(weights, str(folder / "model.safetensors"))
    out = tmp_path / "resumed"
    result = swift(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--reward_funcs", "exact_match",
        "--resume_from_checkpoint", folder, "--output_dir", out, "--max_steps", "2", cwd=tmp_path,
    )  # fmt: skip
    assert_clean_error(result, f"cannot resume from {folder}: its model.safetensors has model.norm.weight of shape")
    assert not out.exists()  # refused before the output folder, the dataset or the model
    assert os.listdir(folder.parent) == ["checkpoint-3"]
