"""A progress bar with the time left, whose log lines are one compact line per logging step, not a dict dump."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers.trainer_callback import ProgressCallback

_SHOWN = (
    ("reward", "reward"),
    ("loss", "loss"),
    ("entropy", "entropy"),
    ("cispo_clip_ratio", "capped"),
    ("clip_ratio/region_mean", "clipped"),
    ("completions/mean_length", "len"),
)


def compact_line(step: int, max_steps: int, logs: dict) -> str | None:
    """``step 4/6 | reward 0.5 | loss 0.01 | ...`` from a logged dict; None when it holds none of those metrics."""
    parts = [f"{label} {logs[key]:.4g}" for key, label in _SHOWN if isinstance(logs.get(key), (int, float))]
    return f"step {step}/{max_steps} | " + " | ".join(parts) if parts else None


class CompactProgressCallback(ProgressCallback):
    """tqdm's bar (``3/350 [00:01<01:40, 3.4it/s]``: elapsed < remaining) plus one line per log.

    A resumed run's bar starts at the checkpoint's step, so the rate and the time left count only
    the steps this run does.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # as transformers' bar, but starting where a resumed run starts
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        line = compact_line(state.global_step, state.max_steps, logs)
        if line:
            self.training_bar.write(line)
