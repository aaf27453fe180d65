"""Loading training prompts: local files, saved datasets, hub ids; ``path#N`` sampling; prompt formats."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import UserError, first_line

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SAMPLE_SUFFIX = re.compile(r"^(?P<source>.+)#(?P<rows>\d+)$")
#: ms-swift's automatic column mapping (on unless --disable_auto_column_mapping): a dataset without a
#: 'prompt' or 'messages' column takes the first of these as its prompt (NuminaMath's 'problem', GSM8K's 'question').
AUTO_PROMPT_COLUMNS = ("query", "question", "problem", "instruction", "input")


def parse_dataset_spec(spec: str) -> tuple[str, int | None]:
    """``"data.jsonl#200"`` -> ``("data.jsonl", 200)``; without ``#N`` the row count is ``None``."""
    match = _SAMPLE_SUFFIX.match(spec)
    if match:
        return match["source"], int(match["rows"])
    return spec, None


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no file extension a local dataset would have: a hub id, not a path."""
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


def _prepare(dataset, source: str, rows: int | None, seed: int, system: str | None, columns: dict[str, str], map_options=None,
             agent_template: str | None = None):
    # Formatting comes before sampling so that an error names the row's position in the file.
    dataset = rename_columns(dataset, source, columns)
    if (map_options or {}).get("auto_columns", True):
        dataset = auto_prompt_column(dataset, source)
    map_options = {k: v for k, v in (map_options or {}).items() if k != "auto_columns"}
    dataset = to_prompt_format(dataset, source, system, map_options, agent_template)
    return dataset if rows is None else sample_rows(dataset, rows, seed)


def read_source(source: str):
    """The rows of a local file, a saved datasets folder or a hub dataset (its train split), as they are."""
    import datasets

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
            if not path.read_bytes()[:4096].strip():  # datasets' JSON/CSV readers fail on it with a bare StopIteration
                raise UserError(f"dataset {source} is empty; it needs rows with a 'prompt' (or 'messages') column")
            if path.suffix.lower() == ".jsonl":
                _check_jsonl(path)
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif looks_like_hub_id(source):
            dataset = datasets.load_dataset(source, split="train")
        else:
            raise UserError(f"dataset {source} does not exist (give a local file, a saved datasets folder or a hub id)")
    except UserError:
        raise
    except Exception as err:  # the datasets library raises many types; the user needs the file and the reason
        reason = first_line(err)
        raise UserError(f"could not read dataset {source}: {reason}") from None
    if len(dataset) == 0:
        raise UserError(f"dataset {source} has no rows")
    return dataset


def parse_columns(text: str | None) -> dict[str, str]:
    """``--columns '{"question": "prompt"}'`` -> ``{"question": "prompt"}``."""
    if text is None:
        return {}
    example = '\'{"question": "prompt", "solution": "answer"}\''
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--columns must be a JSON object of old -> new column names, e.g. {example} ({err.msg})") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in mapping.items()):
        raise UserError(f"--columns must map column names to column names, e.g. {example}; got {text!r:.80}")
    return mapping


def rename_columns(dataset, source: str, mapping: dict[str, str]):
    """Apply the ``--columns`` renames whose old name this dataset has."""
    present = {old: new for old, new in mapping.items() if old in dataset.column_names}
    for old, new in present.items():
        if new in dataset.column_names and new not in present:
            raise UserError(
                f"--columns renames '{old}' to '{new}', but dataset {source} already has a '{new}' column; "
                f"rename that one too (e.g. \"{new}\": \"original_{new}\")"
            )
    return dataset.rename_columns(present) if present else dataset


def sample_rows(dataset, rows: int, seed: int):
    """``rows`` rows in a seeded random order; the dataset is repeated when it has fewer."""
    import numpy as np

    if rows <= 0:
        raise UserError(f"'#{rows}' asks for no rows; use a positive row count after '#'")
    order = np.random.default_rng(seed).permutation(len(dataset))
    repeats = -(-rows // len(dataset))
    indices = np.concatenate([order] * repeats)[:rows]
    return dataset.select(indices.tolist())


def auto_prompt_column(dataset, source: str):
    """ms-swift's automatic mapping: no 'prompt'/'messages' column, so the first of AUTO_PROMPT_COLUMNS is the prompt."""
    import logging

    names = dataset.column_names
    if "prompt" in names or "messages" in names:
        return dataset
    found = next((name for name in AUTO_PROMPT_COLUMNS if name in names), None)
    if found is None:
        return dataset
    logging.getLogger("swift_cispo").info("dataset %s: column '%s' is the prompt (ms-swift's automatic column mapping)", source, found)
    return dataset.rename_column(found, "prompt")


def to_prompt_format(dataset, source: str, system: str | None = None, map_options: dict | None = None,
                     agent_template: str | None = None):
    """Give every row a ``prompt`` TRL can generate from.

    - ``prompt`` (string): kept as plain text; with ``system``, turned into a chat conversation.
    - ``prompt`` (messages) or ``messages``: a conversation; a final assistant turn in ``messages``
      (the reference answer of an SFT-style row) is dropped, since the policy writes that turn.
    - ``tools`` (a row's tool list): written into the system message by ``agent_template`` (ms-swift's
      ``--agent_template``; see :func:`with_tools`). The column itself stays, for the rewards.

    ``map_options``: datasets' ``map`` options (``num_proc``, ``load_from_cache_file``) from the CLI.
    """
    from .agent_templates import get_agent_template

    template = get_agent_template(agent_template) if agent_template is not None else None
    columns = dataset.column_names
    if "prompt" not in columns and "messages" not in columns:
        raise UserError(
            f"dataset {source} has neither a 'prompt' nor a 'messages' column (its columns: {', '.join(columns)}); "
            f"name one with --columns (automatic: {', '.join(AUTO_PROMPT_COLUMNS)})"
        )

    def convert(row, index):
        where = f"dataset {source} row {index + 1}"  # rows counted from 1, a CSV header not counted
        column = "prompt" if row.get("prompt") is not None else "messages"
        prompt = row.get(column)
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()) or (isinstance(prompt, list) and not prompt):
            raise UserError(f"{where} has an empty prompt")
        if column == "messages" and not isinstance(prompt, list):
            raise UserError(f"{where}: 'messages' must be a list of {{role, content}} messages, got {type(prompt).__name__}")
        if isinstance(prompt, str):
            if system is not None:
                prompt = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            prompt = [dict(role=m["role"], content=m["content"]) for m in prompt]
            if prompt and prompt[-1]["role"] == "assistant":
                prompt = prompt[:-1]
            if not prompt:
                raise UserError(f"{where} has no user turn to prompt with")
            if system is not None and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}, *prompt]
        else:
            raise UserError(
                f"{where}: the prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}"
            )
        if "tools" not in columns:
            return {"prompt": prompt}
        prompt, replaced = with_tools(prompt, row["tools"], template, where)
        return {"prompt": prompt, _SYSTEM_REPLACED: replaced}

    if template is not None and "tools" not in columns:
        import logging

        logging.getLogger("swift_cispo").warning(
            "dataset %s has no 'tools' column, so --agent_template %s changes none of its prompts", source, agent_template
        )
    drop = [c for c in ("messages",) if c in columns]
    dataset = dataset.map(convert, with_indices=True, remove_columns=drop, desc="formatting prompts", **(map_options or {}))
    if _SYSTEM_REPLACED in dataset.column_names:
        replaced = sum(dataset[_SYSTEM_REPLACED])
        dataset = dataset.remove_columns(_SYSTEM_REPLACED)
        if replaced:  # ms-swift's behaviour, but a prompt the user wrote is not dropped without a word
            import logging

            logging.getLogger("swift_cispo").warning(
                "dataset %s: --agent_template %s writes the tools in place of the system prompt (as in ms-swift), so the "
                "system prompt of %d rows (theirs or --system) is not used; hermes and qwen_* keep it before the tools",
                source, agent_template, replaced,
            )
    return dataset


#: A temporary column: whether the agent template replaced the row's system prompt (counted, then removed).
_SYSTEM_REPLACED = "__swift_cispo_system_replaced"
#: Roles of an agent history that ms-swift's templates rewrite into assistant/user text; not built in prompts here.
_TOOL_ROLES = ("tool_call", "tool_response", "tool")


def with_tools(prompt, cell, template, where: str) -> tuple:
    """``(prompt, replaced)``: the prompt with the row's ``tools`` cell written into its system message by the
    agent template, and whether a system prompt of the row's (or ``--system``) was replaced by the tools text.

    With a template every prompt becomes a conversation (a plain-text prompt its user turn, as ms-swift reads a
    query), rows without tools too: one column holds one kind of prompt. A row with tools and no template is
    refused: its tools would otherwise never reach the model (ms-swift picks the model's default template;
    here the choice is the user's, in one flag).
    """
    from .agent_templates import allowed_names, read_tools

    try:
        tools = read_tools(cell)
    except ValueError as err:
        raise UserError(
            f"{where}: the 'tools' cell {err}; give a JSON list of tools, each {{\"name\", \"description\", \"parameters\"}} "
            f"or {{\"type\": \"function\", \"function\": {{...}}}}"
        ) from None
    if template is None:
        if tools:
            raise UserError(
                f"{where} has a 'tools' list but no --agent_template says how to write it into the prompt; give "
                f"--agent_template (one of {allowed_names()}; ms-swift's default for Qwen models is hermes)"
            )
        return prompt, False
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not tools:
        return messages, False
    roles = [m["role"] for m in messages]
    if any(role in _TOOL_ROLES for role in roles):
        raise UserError(
            f"{where} has tool messages ({', '.join(sorted(set(roles) & set(_TOOL_ROLES)))}) in its prompt; agent "
            "histories (tool calls and results in the prompt) are not built yet: give the prompt as system, user and "
            "assistant messages"
        )
    system = messages[0]["content"] if roles[0] == "system" else None
    rest = messages[1:] if roles[0] == "system" else messages
    try:
        text = template.render(tools, system)
    except ValueError as err:
        raise UserError(
            f"{where}: in the 'tools' cell, {err} (--agent_template {template.name} writes each tool's name and description)"
        ) from None
    return [{"role": "system", "content": text}, *rest], system is not None and template.replaces_system


def load_datasets(
    specs: list[str], seed: int = 42, system: str | None = None, columns: dict[str, str] | None = None, map_options: dict | None = None,
    agent_template: str | None = None,
):
    """Load, rename (``--columns``), format, sample and concatenate the ``--dataset`` arguments; a ``tools``
    column is written into the prompts by ``agent_template`` (``--agent_template``)."""
    import datasets

    columns = columns or {}
    parsed = [parse_dataset_spec(spec) for spec in specs]
    raw = [read_source(source) for source, _ in parsed]
    known = {name for dataset in raw for name in dataset.column_names}
    missing = [old for old in columns if old not in known]
    if missing:
        raise UserError(f"--columns renames '{missing[0]}', which no dataset has (their columns: {', '.join(sorted(known))})")
    parts = [_prepare(dataset, source, rows, seed, system, columns, map_options, agent_template)
             for dataset, (source, rows) in zip(raw, parsed)]
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise UserError(f"the datasets cannot be combined because their columns differ: {err}") from None


def split_for_evaluation(dataset, ratio: float, seed: int):
    """``(train, eval)``: a seeded ``ratio`` of the rows held out for evaluation (``eval`` is None for ratio 0)."""
    if ratio == 0:
        return dataset, None
    if not 0 < ratio < 1:
        raise UserError(f"--split_dataset_ratio must be at least 0 and below 1, got {ratio}")
    held_out = math.ceil(len(dataset) * ratio)
    if held_out >= len(dataset):
        raise UserError(
            f"--split_dataset_ratio {ratio} of {len(dataset)} rows leaves no rows to train on; give a smaller ratio or more rows"
        )
    parts = dataset.train_test_split(test_size=held_out, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
