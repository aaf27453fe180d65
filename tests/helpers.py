"""Helpers shared by the test modules (imported as ``from helpers import ...``; fixtures are in conftest.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from swift_cispo.distributed.launch import free_port  # noqa: F401  (re-exported: one free-port helper)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # the tools in scripts/ that tests use too (flag_lists, msswift_examples)

from flag_lists import override_flags, without_flags  # noqa: E402,F401  (re-exported: one way to change a flag list)

FAST = [
    "--max_steps", "2",
    "--num_generations", "4",
    "--per_device_train_batch_size", "8",
    "--max_completion_length", "4",
    "--learning_rate", "1e-3",
    "--logging_steps", "1",
    "--gradient_checkpointing", "false",
]  # fmt: skip

LAUNCH_VARIABLES = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def swift(*args, cwd: Path, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m swift_cispo ARGS`` from this checkout; launch variables only where a test sets them."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env})
    return subprocess.run(
        [sys.executable, "-m", "swift_cispo", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def swift_in_process(*args, capsys) -> subprocess.CompletedProcess:
    """``swift ARGS`` through ``swift_cispo.cli.main.main`` in this process: its exit code and stderr.

    For input that is refused before training (seconds, not a new interpreter). ``main`` sets up the
    package logger for the command line; it is put back afterwards so that later tests' caplog sees it.
    """
    from swift_cispo.cli.main import main

    log = logging.getLogger("swift_cispo")
    saved = (log.handlers[:], log.level, log.propagate)
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # --help
        code = exit.code
    finally:
        log.handlers[:], log.level, log.propagate = saved
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["swift", *map(str, args)], code, captured.out, captured.err)


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logging.jsonl").read_text().splitlines()]


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one ``: error: `` line, holding every fragment; returns that line."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(error_lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    return error_lines[0]


# Resume checks: an uninterrupted 2-step run against a run resumed from a copy of its checkpoint-1.
SAME = 1e-6  # max |difference| between resumed and uninterrupted weights (float32 rounding)
MOVED = 1e-4  # a step moves some weight by more than this: the comparison can fail


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def step_losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(output_dir) if "loss" in m}


def assert_resumed_equal(full: Path, resumed: Path, weights_file: str) -> None:
    """Step 2 resumed from ``full``'s checkpoint-1 into ``resumed`` gives ``full``'s step-2 weights and loss."""
    import pytest
    from safetensors.torch import load_file

    final, again = load_file(full / weights_file), load_file(resumed / weights_file)
    step1 = load_file(full / "checkpoint-1" / weights_file)
    assert max_difference(final, step1) > MOVED, "step 2 did not change the weights: the check below could not fail"
    difference = max_difference(final, again)
    assert difference < SAME, f"resumed step 2 differs from the uninterrupted one by {difference:.3e}"
    assert step_losses(resumed)[2] == pytest.approx(step_losses(full)[2], rel=1e-5)
    assert 1 not in step_losses(resumed), "the resumed run trained step 1 again"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (a server's HTTP and weight-transfer ports must differ)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def grpo_config(tmp_path: Path, **overrides):
    """A ``swift_cispo.GRPOConfig`` for the tiny model on the CPU: 3 steps of 8 completions (4 per prompt), no saving."""
    from swift_cispo import GRPOConfig

    fields = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
        learning_rate=5e-3, max_steps=3, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
        gradient_checkpointing=False, seed=0, bf16=False,
    )  # fmt: skip
    fields.update(overrides)
    return GRPOConfig(**fields)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw))
    return found


class RolloutServer:
    """`swift rollout` on the demo model in a subprocess, waited for until it answers."""

    def __init__(self, tmp_path: Path, port: int, *extra):
        self.port = port
        self.group_port = free_port()  # each server its own weight-transfer port
        self.log = tmp_path / f"rollout-{port}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swift_cispo", "rollout", "--model", str(REPO / "swift_cispo" / "demo" / "model"),
             "--port", str(port), "--torch_dtype", "float32", *map(str, extra)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        from swift_cispo.generation import RolloutClient

        self.client = RolloutClient("127.0.0.1", port, timeout=180)
        try:
            self.client.wait_until_up()
        except Exception:
            self.stop()
            raise AssertionError(self.log.read_text()[-3000:]) from None

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:  # a graceful stop first (the server removes its generated key file)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
