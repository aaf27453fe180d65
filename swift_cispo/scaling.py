"""ScaleRL's saturating compute-performance curve: fit it to a run's pass rate, and compare runs on it.

ScaleRL (Khatri et al., arXiv 2510.13786, Eq. 1) models the expected reward after compute ``C`` as

    R(C) = R0 + (A - R0) / (1 + (C_mid / C) ** B)

- ``A``: the asymptote, the pass rate the recipe saturates at (its ceiling);
- ``B``: the scaling exponent, how steeply it gets there (its efficiency);
- ``C_mid``: the compute at which half of the gain ``A - R0`` is made;
- ``R0``: the pass rate before training. It is not fitted: ScaleRL fixes it to the starting value, and here it
  is the run's first logged value of the metric, with compute counted from that point (exact with
  ``--eval_on_start true`` or ``--logging_steps 1``; with a larger logging interval the first value averages
  the first few steps).

A recipe with the higher ``A`` wins in the end, whatever its ``B``; one with the same ``A`` and a higher ``B``
gets there sooner. The standard errors come from the fit's covariance (least squares on the logged points), so
they measure how well the points pin the curve down, not the spread between seeds.

The compute axis is what a run's ``logging.jsonl`` records: ``tokens`` (TRL's cumulative ``num_tokens``, prompt
and completion tokens of the rollouts: proportional to FLOPs for one model) or ``steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Fewer fitted points than this cannot pin down three parameters with any error bar.
MIN_POINTS = 6
#: Compute axes a run's records provide.
COMPUTE_AXES = {"tokens": "num_tokens", "steps": "step"}


def saturating_curve(compute, r0: float, a: float, b: float, c_mid: float):
    """ScaleRL's R(C) at ``compute`` (a number or an array; compute > 0)."""
    compute = np.asarray(compute, dtype=float)
    with np.errstate(over="ignore"):  # (C_mid / C)^B overflows to inf far below C_mid: R is then R0, as it should be
        return r0 + (a - r0) / (1.0 + (c_mid / compute) ** b)


@dataclass(frozen=True)
class CurveFit:
    r0: float
    a: float
    b: float
    c_mid: float
    a_err: float
    b_err: float
    c_mid_err: float
    points: int
    rmse: float  # root-mean-square residual of the fitted points
    c0: float = 0.0  # the compute the curve starts from (the first point's, when R0 was taken from it)

    @property
    def pinned_down(self) -> bool:
        """Whether the points determine the curve: A's error below the gain A - R0, and B off its bounds."""
        return math.isfinite(self.a_err) and self.a_err < abs(self.a - self.r0) and 1e-3 < self.b < 20.0 and self.b_err < self.b

    def predict(self, compute):
        """R at ``compute`` on the data's own axis (the curve starts at ``c0``)."""
        shifted = np.maximum(np.asarray(compute, dtype=float) - self.c0, 1e-12)
        return saturating_curve(shifted, self.r0, self.a, self.b, self.c_mid)

    def as_dict(self) -> dict:
        keys = ("r0", "a", "a_err", "b", "b_err", "c_mid", "c_mid_err", "c0", "points", "rmse")
        return {k: getattr(self, k) for k in keys}


class FitError(ValueError):
    """The points cannot be fitted; the message says why."""


def fit_saturating_curve(compute, reward, r0: float | None = None) -> CurveFit:
    """Least-squares fit of ``A``, ``B`` and ``C_mid`` to ``reward`` at ``compute``.

    With ``r0`` given, ``compute`` is counted from the start of training. Without it, the first point is the
    start: R0 is its reward, and compute is counted from its compute. (A run's first logged reward is that of
    rollouts the initial weights generated, logged after they cost their tokens.)

    Bounds: ``A`` between R0 and R0 + 10 x the largest observed gain (a ceiling far above the data is not
    supported by it), ``B`` in (0, 20], ``C_mid`` in (0, 1000 x the largest compute].
    """
    from scipy.optimize import curve_fit

    compute = np.asarray(compute, dtype=float)
    reward = np.asarray(reward, dtype=float)
    if compute.shape != reward.shape or compute.ndim != 1:
        raise FitError("compute and reward must be two lists of the same length")
    keep = np.isfinite(compute) & np.isfinite(reward)
    compute, reward = compute[keep], reward[keep]
    c0 = 0.0
    if r0 is None:  # the first point is the start: compute is counted from it
        if len(reward) == 0:
            raise FitError("there are no points to fit")
        r0, c0 = float(reward[0]), float(compute[0])
        compute, reward = compute[1:] - c0, reward[1:]
    keep = compute > 0
    compute, reward = compute[keep], reward[keep]
    if len(compute) < MIN_POINTS:
        raise FitError(f"{len(compute)} points with compute > 0 to fit; the curve needs at least {MIN_POINTS}")
    gain = float(np.max(reward) - r0)
    if gain <= 0:
        raise FitError(f"the metric never rose above its starting value {r0:.4g}: there is no gain to fit a curve to")

    def model(c, a, b, c_mid):
        return saturating_curve(c, r0, a, b, c_mid)

    lower = [r0, 1e-3, float(np.min(compute)) * 1e-3]
    upper = [r0 + 10 * gain, 20.0, float(np.max(compute)) * 1e3]
    start = [r0 + 1.05 * gain, 1.0, float(np.median(compute))]
    try:
        params, covariance = curve_fit(model, compute, reward, p0=start, bounds=(lower, upper), maxfev=20000)
    except (RuntimeError, ValueError) as err:
        raise FitError(f"the least-squares fit did not converge ({err})") from None
    errors = np.sqrt(np.clip(np.diag(covariance), 0, None)) if np.all(np.isfinite(covariance)) else np.full(3, math.inf)
    residual = reward - model(compute, *params)
    a, b, c_mid = (float(p) for p in params)
    return CurveFit(
        r0=float(r0), a=a, b=b, c_mid=c_mid, a_err=float(errors[0]), b_err=float(errors[1]), c_mid_err=float(errors[2]),
        points=len(compute), rmse=float(np.sqrt(np.mean(residual**2))), c0=c0,
    )  # fmt: skip


def run_points(records: list[dict], metric: str | None = None, compute: str = "tokens") -> tuple[str, list[float], list[float]]:
    """(metric name, compute, value) from a run's ``logging.jsonl`` records. The default metric is the evaluation
    reward when the run evaluated, else the training reward. An evaluation record carries no token count: its
    compute is the training's cumulative count at its step (interpolated between logs; 0 at step 0)."""
    if compute not in COMPUTE_AXES:
        raise FitError(f"unknown compute axis '{compute}'; choose one of: {', '.join(COMPUTE_AXES)}")
    if metric is None:
        metric = "eval_reward" if any("eval_reward" in r for r in records) else "reward"
    chosen = [r for r in records if isinstance(r.get(metric), (int, float)) and "step" in r]
    if not chosen:
        available = sorted({k for r in records for k in r if "reward" in k})
        raise FitError(f"no record holds '{metric}' (reward metrics logged: {', '.join(available) or 'none'})")
    steps = [float(r["step"]) for r in chosen]
    if compute == "steps":
        xs = steps
    else:
        counted = sorted({float(r["step"]): float(r["num_tokens"]) for r in records if "num_tokens" in r and "step" in r}.items())
        if not counted:
            raise FitError("the records hold no num_tokens (TRL's token count); use --compute steps")
        known_steps, known_tokens = zip(*([(0.0, 0.0)] + counted))
        xs = [float(r["num_tokens"]) if "num_tokens" in r else float(np.interp(s, known_steps, known_tokens)) for r, s in zip(chosen, steps)]
    return metric, xs, [float(r[metric]) for r in chosen]
