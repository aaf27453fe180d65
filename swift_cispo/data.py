"""Loading training prompts: local files, saved datasets, hub ids; ``path#N`` sampling; prompt formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UserError

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SAMPLE_SUFFIX = re.compile(r"^(?P<source>.+)#(?P<rows>\d+)$")


def parse_dataset_spec(spec: str) -> tuple[str, int | None]:
    """``"data.jsonl#200"`` -> ``("data.jsonl", 200)``; without ``#N`` the row count is ``None``."""
    match = _SAMPLE_SUFFIX.match(spec)
    if match:
        return match["source"], int(match["rows"])
    return spec, None


def _looks_like_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and Path(source).suffix.lower() not in _FILE_BUILDERS


def _check_jsonl(path: Path) -> None:
    """Name the first line that is not a JSON object (datasets' own error does not)."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"dataset {path} line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"dataset {path} line {number} is a JSON {type(row).__name__}, not an object with columns")


def load_one(spec: str, seed: int = 42):
    """Load one dataset given as a path or hub id, optionally ``#N`` rows."""
    import datasets

    source, rows = parse_dataset_spec(spec)
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
        elif path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise UserError(
                    f"dataset {path} has an unsupported extension {path.suffix!r}; allowed: "
                    f"{', '.join(sorted(_FILE_BUILDERS))}, a saved datasets folder, or a hub dataset id"
                )
            if path.suffix.lower() == ".jsonl":
                _check_jsonl(path)
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif _looks_like_hub_id(source):
            dataset = datasets.load_dataset(source, split="train")
        else:
            raise UserError(f"dataset {source} does not exist (give a local file, a saved datasets folder or a hub id)")
    except UserError:
        raise
    except Exception as err:  # the datasets library raises many types; the user needs the file and the reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not read dataset {source}: {reason}") from None
    if len(dataset) == 0:
        raise UserError(f"dataset {source} has no rows")
    if rows is not None:
        dataset = sample_rows(dataset, rows, seed)
    return dataset


def sample_rows(dataset, rows: int, seed: int):
    """``rows`` rows in a seeded random order; the dataset is repeated when it has fewer."""
    import numpy as np

    if rows <= 0:
        raise UserError(f"'#{rows}' asks for no rows; use a positive row count after '#'")
    order = np.random.default_rng(seed).permutation(len(dataset))
    repeats = -(-rows // len(dataset))
    indices = np.concatenate([order] * repeats)[:rows]
    return dataset.select(indices.tolist())


def to_prompt_format(dataset, source: str, system: str | None = None):
    """Give every row a ``prompt`` TRL can generate from.

    - ``prompt`` (string): kept as plain text; with ``system``, turned into a chat conversation.
    - ``prompt`` (messages) or ``messages``: a conversation; a final assistant turn in ``messages``
      (the reference answer of an SFT-style row) is dropped, since the policy writes that turn.
    """
    columns = dataset.column_names
    if "prompt" not in columns and "messages" not in columns:
        raise UserError(
            f"dataset {source} has neither a 'prompt' nor a 'messages' column (its columns: {', '.join(columns)})"
        )

    def convert(row, index):
        if "prompt" in row and row["prompt"] is not None:
            prompt = row["prompt"]
        else:
            prompt = row["messages"]
        if isinstance(prompt, str):
            if system is not None:
                prompt = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            prompt = [dict(role=m["role"], content=m["content"]) for m in prompt]
            if prompt and prompt[-1]["role"] == "assistant":
                prompt = prompt[:-1]
            if not prompt:
                raise UserError(f"dataset {source} row {index} has no user turn to prompt with")
            if system is not None and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}, *prompt]
        else:
            raise UserError(
                f"dataset {source} row {index}: the prompt must be a string or a list of {{role, content}} messages, "
                f"got {type(prompt).__name__}"
            )
        return {"prompt": prompt}

    drop = [c for c in ("messages",) if c in columns]
    return dataset.map(convert, with_indices=True, remove_columns=drop, desc="formatting prompts")


def load_datasets(specs: list[str], seed: int = 42, system: str | None = None):
    """Load, format and concatenate the ``--dataset`` arguments."""
    import datasets

    parts = [to_prompt_format(load_one(spec, seed), spec, system) for spec in specs]
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise UserError(f"the datasets cannot be combined because their columns differ: {err}") from None
