"""How long the CLI takes to answer without training: a wrong flag, ``--help``, an unknown subcommand.

Each is timed as a fresh ``python -m swift_cispo ...`` process next to ``python -c "import torch"``
(the floor: the package imports torch), interleaved, median of ``--reps`` runs; the ratio is the
median of each against the median of ``import torch``.

    python bench/cli_latency.py            # 3 interleaved repetitions
    python bench/cli_latency.py --reps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    'python -c "import torch"': ["-c", "import torch"],
    "swift rlhf --no_such_flag 1": ["-m", "swift_cispo", "rlhf", "--no_such_flag", "1"],
    "swift rlhf --help": ["-m", "swift_cispo", "rlhf", "--help"],
    "swift no_such_subcommand": ["-m", "swift_cispo", "no_such_subcommand"],
}


def wall_time(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    reps = parser.parse_args().reps
    for args in COMMANDS.values():  # warm the file cache once, untimed
        wall_time(args)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(reps):
        for name, args in COMMANDS.items():
            times[name].append(wall_time(args))
    floor = statistics.median(times['python -c "import torch"'])
    print(f"| command | median s ({reps} runs) | min-max s | ratio to import torch |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {median / floor:.2f} |")
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
