"""Run ms-swift's GRPO example command lines (tests/fixtures/ms_swift_examples/) through this `swift rlhf`.

Each `swift rlhf` command of each vendored script runs as written, except that:
- --model and --dataset are replaced by local stand-ins (the hub is unreachable): the given model with a
  32768-position context (the scripts' Qwen models have it), and a small dataset with the columns of the
  one the script names (NuminaMath: problem/solution, GSM8K: question/answer, xLAM function calling's grpo
  subset: messages/solution/tools, else prompt/solution);
- small-run flags replace the script's own: --max_steps 2 --max_completion_length 8 --save_strategy no --report_to none
  and a fresh --output_dir, so that a CPU can run it;
- its environment prefix (CUDA_VISIBLE_DEVICES, NPROC_PER_NODE, NNODES...) is dropped; with --nproc N (default
  1) the command runs in N processes and --per_device_train_batch_size is scaled by NPROC_PER_NODE / N, so the
  rollout batch (and its divisibility by --num_generations) is the script's; --nproc script runs as written.
The scripts' ms-swift plugin files are copied from tests/fixtures/ms_swift_plugins/ where vendored. Before a
server-mode script, the `swift rollout` command it gives (often in a comment: "run this first") is started as
written, with the stand-in model (and the port its trainer names); a script that gives none gets a plain one. A
server that refuses to start makes the script's outcome its refusal.
Prints one row per command line: trained / refused (the one-sentence reason) / failed / placeholder (the
script leaves a value such as <node1_ip> or xxx to fill in, so it is not run), and the counts.

    PYTHONPATH=$PWD nice -n 10 python scripts/msswift_examples.py --model MODEL_DIR [--only NAME ...] [--logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from flag_lists import override_flags, without_flags

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "ms_swift_examples"
#: ms-swift's example plugin files (examples/train/grpo/plugin/ there), where they are vendored.
PLUGINS = REPO / "tests" / "fixtures" / "ms_swift_plugins"
#: Appended to every command line: two optimizer steps of short completions, no checkpoints, and no
#: loggers (wandb/swanlab need accounts and a network this machine lacks).
SMALL_RUN = ["--max_steps", "2", "--max_completion_length", "8", "--save_strategy", "no", "--report_to", "none"]


def command_lines(script: Path) -> list[list[str]]:
    """The argument lists of the `swift rlhf` commands in a shell script (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", script.read_text(encoding="utf-8"))
    commands = []
    for line in text.splitlines():
        match = re.match(r"^\s*(?:[A-Z_0-9]+=\S*\s+)*swift rlhf\s+(.*)$", line)
        if match:
            tokens = shlex.split(match.group(1))
            # a shell comment starts a word with '#'; a '#' inside a word ('data.jsonl#1000') is not one
            end = next((i for i, token in enumerate(tokens) if token.startswith("#")), len(tokens))
            commands.append(tokens[:end])
    return commands


def rollout_command(script: Path) -> list[str] | None:
    """The arguments of the `swift rollout` command a script gives, commented out or not (the first one), or None."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in script.read_text(encoding="utf-8").splitlines()]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    for line in text.splitlines():
        match = re.match(r"^\s*(?:[A-Z_0-9]+=\S*\s+)*swift rollout\s+(.*)$", line)
        if match:
            tokens = shlex.split(match.group(1))
            end = next((i for i, token in enumerate(tokens) if token.startswith("#")), len(tokens))
            return tokens[:end]
    return None


def swap_model_and_dataset(argv: list[str], model: str, dataset: str) -> list[str]:
    """Replace the values of --model and --dataset (a list flag: every value up to the next --flag)."""
    out, index = [], 0
    while index < len(argv):
        token = argv[index]
        if token in ("--model", "--dataset"):
            out += [token, model if token == "--model" else dataset]
            index += 1
            while index < len(argv) and not argv[index].startswith("--"):
                index += 1
            continue
        out.append(token)
        index += 1
    return out


#: The columns of the hub datasets the scripts name (as ms-swift's preprocessor leaves them), so that their
#: --columns and rewards find what they expect.
DATASET_SHAPES = {
    "gsm8k": ("question", "answer"),
    "NuminaMath": ("problem", "solution"),
    "xlam-function-calling": ("messages", "solution", "tools"),
}


def xlam_rows() -> list[dict]:
    """Rows shaped like ms-swift's LLM-Research/xlam-function-calling-60k:grpo (its XlamFunctionCallingGRPOPreprocessor):
    the user's query and the reference reply as 'messages', that reply again as 'solution'
    ('Action: NAME\\nAction Input: {JSON arguments}', for the toolbench reward), and xLAM's 'tools' cell, a JSON
    string of functions with 'name', 'description' and 'parameters'."""
    tools = [
        {"name": "add", "description": "Add two integers.",
         "parameters": {"a": {"description": "The first integer.", "type": "int"}, "b": {"description": "The second integer.", "type": "int"}}},
        {"name": "get_weather", "description": "Fetch the current weather of a city.",
         "parameters": {"city": {"description": "The city's name.", "type": "str", "default": "Paris"}}},
    ]  # fmt: skip
    cities = ["Paris", "Oslo", "Lima", "Pune"]
    calls = [(f"What is {a} plus {a + 1}?", "add", {"a": a, "b": a + 1}) for a in range(4)]
    calls += [(f"Is it raining in {city}?", "get_weather", {"city": city}) for city in cities]
    rows = []
    for query, name, arguments in calls:
        reply = f"Action: {name}\nAction Input: {json.dumps(arguments)}"
        rows.append({"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": reply}],
                     "solution": reply, "tools": json.dumps(tools)})
    return rows  # 8 prompts: agent.sh takes 1 per generation batch (49 completions of one prompt)


def write_datasets(folder: Path) -> dict[str, Path]:
    """Small local stand-ins: one per dataset shape (NuminaMath: problem/solution, GSM8K: question/answer, xLAM:
    messages/solution/tools), and prompt/solution."""
    paths = {}
    for shape, columns in {**DATASET_SHAPES, "default": ("prompt", "solution")}.items():
        path = folder / f"data-{shape}.jsonl"
        if shape == "xlam-function-calling":
            rows = xlam_rows()
        else:
            prompt, answer = columns
            rows = [{prompt: f"{a}+{b}=", answer: str(a + b) if answer == "solution" else f"{a}+{b}={a + b}\n#### {a + b}"}
                    for a in range(8) for b in range(8)]  # 64 prompts: gspo.sh takes 32 per generation batch
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        paths[shape] = path
    return paths


def dataset_for(argv: list[str], datasets: dict[str, Path]) -> Path:
    named = flag_value(argv, "dataset") or ""
    return next((datasets[shape] for shape in DATASET_SHAPES if shape in named), datasets["default"])


def stand_in_model(model: Path, folder: Path) -> Path:
    """The given model with a context of 32768 positions (the scripts' Qwen models have it; their vLLM lengths need it)."""
    copy = folder / "model"
    shutil.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    if config.get("max_position_embeddings", 0) < 32768:
        config["max_position_embeddings"] = 32768
        (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


def flag_value(argv: list[str], name: str) -> str | None:
    """The first value of ``--name`` in a command line, or None."""
    if f"--{name}" not in argv:
        return None
    index = argv.index(f"--{name}") + 1
    return argv[index] if index < len(argv) else None


def server_port(commands: list[list[str]]) -> int | None:
    """The local port of the rollout server a script's server-mode command lines expect, or None."""
    for argv in commands:
        if flag_value(argv, "vllm_mode") == "server":
            port = flag_value(argv, "vllm_server_port") or "8000"
            return int(port) if port.isdigit() else None
    return None


def start_server(script: Path, port: int, model: str, workdir: Path, log: Path) -> tuple[subprocess.Popen | None, str]:
    """The script's own `swift rollout` (or a plain one), waited for; (process, "") or (None, the server's refusal)."""
    import time
    import urllib.request

    argv = override_flags(swap_model_and_dataset(rollout_command(script) or ["--model", model], model, ""), ["--port", str(port)])
    # vLLM on a CPU reserves --vllm_gpu_memory_utilization of the machine's RAM (the scripts say 0.8 of a GPU's);
    # a stand-in model's KV cache needs MiBs, so 1 GiB unless the caller sets otherwise.
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "swift_cispo", "rollout", *argv], cwd=workdir, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server, ""
        except OSError:
            time.sleep(2)
    if server.poll() is None:
        server.kill()
        return None, "its rollout server did not answer within 600 s"
    errors = [line for line in log.read_text().splitlines() if ": error: " in line]
    return None, "swift rollout: " + (errors[-1].split(": error: ", 1)[1] if errors else f"exited with status {server.returncode}")


def placeholder(argv: list[str]) -> str | None:
    """A value the script leaves for the reader to fill in (``<node1_ip>``, ``xxx``): not runnable as written."""
    return next((token for token in argv if re.fullmatch(r"<[^>]+>|x{3,}(\.x{3,})*", token)), None)


def script_nproc(script: Path) -> int:
    match = re.search(r"NPROC_PER_NODE=(\d+)", script.read_text(encoding="utf-8"))
    return int(match.group(1)) if match else 1


def with_processes(argv: list[str], script_processes: int, processes: int) -> list[str]:
    """Scale --per_device_train_batch_size so that ``processes`` generate the rollout batch ``script_processes`` would."""
    if processes == script_processes or script_processes % processes:
        return argv
    factor = script_processes // processes
    out = list(argv)
    if "--per_device_train_batch_size" in out:
        index = out.index("--per_device_train_batch_size") + 1
        out[index] = str(int(out[index]) * factor)
    else:
        out += ["--per_device_train_batch_size", str(factor)]
    return out


def run_one(argv: list[str], workdir: Path, timeout: int, processes: int = 1, log: Path | None = None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    if processes > 1:
        env["NPROC_PER_NODE"] = str(processes)
    try:
        proc = subprocess.run([sys.executable, "-m", "swift_cispo", "rlhf", *argv], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "failed", f"timed out after {timeout} s"
    if log is not None:
        log.write_text(proc.stderr, encoding="utf-8")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("swift rlhf: error")]
    if proc.returncode == 0:
        return "trained", ""
    if proc.returncode == 2 and errors and "Traceback" not in proc.stderr:
        return "refused", errors[0].split("error: ", 1)[-1]  # a worker's own sentence comes before its launcher's
    tail = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1]
    return "failed", f"exit {proc.returncode}: {tail[:300]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model folder standing in for every --model")
    parser.add_argument("--only", nargs="*", help="run only scripts whose file name contains one of these")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--nproc", default="1",
                        help="processes per command: 'script' (the script's NPROC_PER_NODE, as written) or a number N; with N, "
                        "--per_device_train_batch_size is scaled by NPROC_PER_NODE / N so the rollout batch is the script's "
                        "(default 1, for a small machine)")
    parser.add_argument("--logs", type=Path, help="write each command's stderr to this folder")
    parser.add_argument("--without", nargs="*", default=[], metavar="FLAG",
                        help="also drop these flags (e.g. attn_impl on a machine without flash-attn); say so when reporting")
    args = parser.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    print(f"processes per command: {args.nproc}" + ("" if args.nproc == "script" else
          " (--per_device_train_batch_size scaled by the script's NPROC_PER_NODE / that, so the rollout batch is the script's)"), flush=True)
    scripts = sorted(p for p in FIXTURES.glob("*.sh") if not args.only or any(o in p.name for o in args.only))
    counts = {"trained": 0, "refused": 0, "failed": 0, "placeholder": 0}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # ms-swift's scripts run from its repository root and name files under examples/train/grpo/
        grpo = work / "examples" / "train" / "grpo"
        grpo.mkdir(parents=True)
        shutil.copy(FIXTURES / "prompt.txt", grpo / "prompt.txt")
        if PLUGINS.is_dir():
            shutil.copytree(PLUGINS, grpo / "plugin")
        datasets = write_datasets(work)
        model = str(stand_in_model(Path(args.model).resolve(), work))
        for script in scripts:
            counts = run_script(script, args, work, model, datasets, counts)
    total = sum(counts.values())
    print(f"\n{counts['trained']} of {total} trained, {counts['refused']} refused with a sentence, {counts['failed']} failed, "
          f"{counts['placeholder']} not runnable as written (placeholders)")
    return 0


def run_script(script: Path, args, work: Path, model: str, datasets: dict[str, Path], counts: dict) -> dict:
    """Every command line of one script, after starting the rollout server it asks for (stopped afterwards)."""
    commands = command_lines(script)
    port = server_port(commands)
    server, refusal = None, ""
    if port is not None and not any(placeholder(argv) for argv in commands):
        log = (args.logs or work) / f"{script.stem}-rollout.log"
        server, refusal = start_server(script, port, model, work, log)
    try:
        for number, argv in enumerate(commands):
            argv = without_flags(swap_model_and_dataset(argv, model, str(dataset_for(argv, datasets))), args.without)
            out = work / f"out-{script.stem}-{number}"
            blank = placeholder(argv)
            written = script_nproc(script)
            processes = written if args.nproc == "script" else int(args.nproc)
            argv = with_processes(argv, written, processes)
            log = args.logs / f"{script.stem}-{number + 1}.log" if args.logs else None
            if blank:
                outcome, detail = "placeholder", f"the script leaves {blank} to fill in (ms-swift cannot run it as written either)"
            elif refusal:
                outcome, detail = "refused", refusal
            else:
                # the small-run flags replace the script's own (a flag given twice is an error)
                small = override_flags(argv, [*SMALL_RUN, "--output_dir", str(out)])
                outcome, detail = run_one(small, work, args.timeout, processes, log)
            counts[outcome] += 1
            print(f"{outcome:8} {script.name}#{number + 1}  {detail}", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    return counts


if __name__ == "__main__":
    sys.exit(main())
