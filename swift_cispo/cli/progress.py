"""A progress bar whose log lines are one compact line per logging step, not a dict dump."""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

_SHOWN = (
    ("reward", "reward"),
    ("loss", "loss"),
    ("entropy", "entropy"),
    ("cispo_clip_ratio", "capped"),
    ("clip_ratio/region_mean", "clipped"),
    ("completions/mean_length", "len"),
)


class CompactProgressCallback(ProgressCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        parts = [f"{label} {logs[key]:.4g}" for key, label in _SHOWN if isinstance(logs.get(key), (int, float))]
        if parts:
            self.training_bar.write(f"step {state.global_step}/{state.max_steps} | " + " | ".join(parts))
