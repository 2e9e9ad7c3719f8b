"""Confidence intervals and paired comparisons between methods, on `scipy.stats`.

Per-method intervals are BCa bootstrap intervals of the mean (Efron 1987, `scipy.stats.bootstrap(method="BCa")`):
better coverage than the percentile bootstrap at small N and for skewed or binary values (CLIP accuracy). BCa
is undefined when every resample gives the same mean (all values equal: the jackknife acceleration is 0/0); such
groups fall back to the percentile interval and say so in their `ci_method`.

Paired comparisons: two methods ran on the same samples of a task, so their per-image values pair by sample id.
For every task, metric and pair of methods the table holds the mean paired difference (A - B) with its BCa CI
(the one-sample bootstrap of the differences, which is `bootstrap(..., paired=True)` for a mean), and a two-sided
p-value: the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`), or for binary metrics (values in {0, 1}, e.g.
CLIP accuracy, where the signed ranks are all ties) and for a Wilcoxon that is undefined, the paired permutation
test of the mean difference (`scipy.stats.permutation_test(permutation_type="samples")`, i.e. random sign flips).
p-values are Holm-adjusted (Holm 1979; controls the family-wise error rate) within each (task, metric): the family
is the set of pairwise comparisons one table column supports. scipy has only Benjamini-Hochberg
(`false_discovery_control`, a false-discovery rate), so Holm's step-down is written out here (six lines).
Every resampling is seeded from (seed, task, metric, pair): the same run gives the same table.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ALPHA",
    "PAIRED_COLUMNS",
    "bca_ci",
    "group_rng",
    "holm",
    "paired_comparisons",
    "paired_test",
    "significantly_better",
    "wins_matrix",
]

ALPHA = 0.05
PAIRED_COLUMNS = [
    "task", "metric", "direction", "method_a", "method_b", "n", "mean_a", "mean_b", "diff", "diff_lo", "diff_hi",
    "ci_method", "test", "statistic", "p", "p_holm", "better",
]


def group_rng(seed: int, *parts: Any) -> np.random.Generator:
    """A generator seeded by (seed, parts): each group's resampling is reproducible and independent of group order."""
    tag = zlib.crc32("|".join(map(str, parts)).encode("utf-8"))
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, tag])


def bca_ci(
    values: Iterable[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, str]:
    """(lo, hi, method) of a bootstrap CI of the mean of `values` (NaNs dropped first): BCa, or "percentile" where
    BCa is degenerate (all values equal, or an infinite acceleration). Fewer than two finite values give
    (nan, nan, "none"): one value says nothing about its spread."""
    from scipy import stats

    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2 or n_boot < 1:
        return (math.nan, math.nan, "none")
    if np.all(x == x[0]):  # every resample has the same mean: the interval is that point
        return (float(x[0]), float(x[0]), "percentile")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    state = rng.bit_generator.state
    for method in ("BCa", "percentile"):
        rng.bit_generator.state = state  # both tries draw the same resamples
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning / RuntimeWarning: handled by the fallback
            res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=confidence, method=method,
                                  vectorized=True, rng=rng, batch=max(1, 4_000_000 // x.size))  # bounded memory
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return (lo, hi, method)
    return (math.nan, math.nan, "none")


def _is_binary(*arrays: np.ndarray) -> bool:
    return all(np.isin(a, (0.0, 1.0)).all() for a in arrays)


def paired_test(a: np.ndarray, b: np.ndarray, *, n_perm: int = 9999,
                seed: int | np.random.Generator = 0) -> tuple[str, float, float]:
    """(test name, statistic, two-sided p) for paired samples `a`, `b` (same length, finite).

    Wilcoxon signed-rank (zero differences dropped, Wilcoxon's convention) for continuous metrics; the paired
    permutation test of the mean difference for binary metrics or where Wilcoxon is undefined. All differences
    zero: ("none", 0, 1): no evidence of any difference."""
    from scipy import stats

    d = a - b
    if not np.any(d != 0):
        return ("none", 0.0, 1.0)
    if not _is_binary(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = stats.wilcoxon(a, b)
                if np.isfinite(res.pvalue):
                    return ("wilcoxon", float(res.statistic), float(res.pvalue))
            except ValueError:
                pass
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    res = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                 vectorized=True, n_resamples=n_perm, alternative="two-sided", rng=rng)
    return ("permutation", float(res.statistic), float(min(1.0, res.pvalue)))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs stay NaN and do not count towards the family size)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate([(m - i) * p[j] for i, j in enumerate(order)]) if m else []
    out[order] = np.minimum(1.0, adjusted)
    return out


def paired_comparisons(
    per_image: pd.DataFrame,
    *,
    directions: dict[str, str | None] | None = None,
    methods: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Every pair of methods on every (task, metric) of `per_image` (columns method, task, sample, metric, value),
    paired by sample id; pairs with fewer than two common finite samples are left out. Columns `PAIRED_COLUMNS`:
    diff = mean(A - B) with its BCa CI, the test and its raw and Holm-adjusted p, and `better` (A, B or "" when
    p_holm >= alpha or the metric has no direction). `methods` fixes the order of A and B (A comes first)."""
    if per_image is None or per_image.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    df = per_image.drop_duplicates(["method", "task", "sample", "metric"], keep="last")
    order = list(methods or []) + sorted(set(df["method"]) - set(methods or []))
    rank = {m: i for i, m in enumerate(order)}
    rows: list[dict[str, Any]] = []
    for (task, metric), g in df.groupby(["task", "metric"], sort=True):
        wide = g.pivot(index="sample", columns="method", values="value").apply(pd.to_numeric, errors="coerce")
        present = sorted(wide.columns, key=lambda m: rank.get(m, len(rank)))
        direction = (directions or {}).get(metric)
        family: list[dict[str, Any]] = []
        for ma, mb in itertools.combinations(present, 2):
            both = wide[[ma, mb]].dropna()
            if len(both) < 2:
                continue
            a, b = both[ma].to_numpy(np.float64), both[mb].to_numpy(np.float64)
            rng = group_rng(seed, task, metric, ma, mb)
            lo, hi, ci_method = bca_ci(a - b, n_boot=n_boot, confidence=confidence, seed=rng)
            test, stat, p = paired_test(a, b, seed=rng)
            family.append({"task": task, "metric": metric, "direction": direction, "method_a": ma, "method_b": mb,
                           "n": len(both), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                           "diff": float((a - b).mean()), "diff_lo": lo, "diff_hi": hi, "ci_method": ci_method,
                           "test": test, "statistic": stat, "p": p})
        for rec, ph in zip(family, holm([r["p"] for r in family])):
            rec["p_holm"] = float(ph)
            better = ""
            if direction in ("lower", "higher") and ph < alpha and rec["diff"] != 0:
                a_better = (rec["diff"] < 0) == (direction == "lower")
                better = rec["method_a"] if a_better else rec["method_b"]
            rec["better"] = better
        rows += family
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def significantly_better(paired: pd.DataFrame | None, task: str, metric: str, winner: str, other: str) -> bool:
    """Whether the paired table says `winner` beats `other` on (task, metric) after Holm's correction."""
    if paired is None or paired.empty:
        return False
    sel = paired[(paired["task"] == task) & (paired["metric"] == metric)
                 & (((paired["method_a"] == winner) & (paired["method_b"] == other))
                    | ((paired["method_a"] == other) & (paired["method_b"] == winner)))]
    return bool(len(sel)) and bool((sel["better"] == winner).any())


def wins_matrix(paired: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """A methods x methods frame of "wins/ties/losses" strings of the row method against the column method, counted
    over the (task, metric) comparisons both ran (win: significantly better after Holm; tie: not significant);
    "·" where the two share no comparison."""
    if paired is None or paired.empty:
        return pd.DataFrame()
    names = list(methods or []) + sorted((set(paired["method_a"]) | set(paired["method_b"])) - set(methods or []))
    names = [m for m in names if ((paired["method_a"] == m) | (paired["method_b"] == m)).any()]
    counts = {(a, b): [0, 0, 0] for a in names for b in names if a != b}
    for r in paired[paired["direction"].isin(["lower", "higher"])].to_dict("records"):
        a, b = r["method_a"], r["method_b"]
        k = 0 if r["better"] == a else 2 if r["better"] == b else 1
        counts[(a, b)][k] += 1
        counts[(b, a)][2 - k] += 1
    def cell(a: str, b: str) -> str:
        return "—" if a == b else "/".join(map(str, counts[(a, b)])) if any(counts[(a, b)]) else "·"

    return pd.DataFrame([[cell(a, b) for b in names] for a in names],
                        index=pd.Index(names, name="method"), columns=names)
