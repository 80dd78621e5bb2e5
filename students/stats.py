"""The significance test of the sweep report: a paired t-test over seeds.

Two configurations trained with the same seeds give pairs (a_s, b_s); the test asks whether
the mean of d_s = a_s - b_s differs from 0: t = mean(d) / (sd(d) / sqrt(n)) with n - 1
degrees of freedom, two-sided p = I_{df / (df + t^2)}(df / 2, 1 / 2) (the regularized
incomplete beta function, from mpmath, which torch already installs through sympy). It
needs at least 2 seeds; it ignores the variation over test examples (the per-example
predictions are not stored), so with few seeds it is a weak test, and the report says so.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.05  # the significance level the report's verdicts use


def t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` >= 1 degrees of freedom."""
    import mpmath

    if math.isinf(t):
        return 0.0
    return float(mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test over seeds of a - b: ``n`` pairs, mean difference, t and p (None
    when there is no test: one pair, or every pair differs by the same amount)."""

    n: int
    mean_diff: float
    t: float | None
    p: float | None

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < LEVEL

    def verdict(self) -> str:
        """The result in words, e.g. "not significant (paired t-test over 3 seeds, p = 0.42)"."""
        if self.n < 2:
            return "one seed: no test possible"
        if self.p is None:
            return ("no difference at any seed" if self.mean_diff == 0 else
                    f"t-test undefined: the same difference at each of {self.n} seeds")
        word = "significant" if self.significant else "not significant"
        return f"{word} (paired t-test over {self.n} seeds, p = {self.p:.2g})"

    def short(self) -> str:
        """The verdict in a few words, for plot labels: "p = 0.42", "1 seed: no test"."""
        if self.n < 2:
            return "1 seed: no test"
        if self.p is None:
            return "no difference" if self.mean_diff == 0 else "same difference every seed"
        return f"p = {self.p:.2g}"


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Test a - b over pairs (a[i], b[i]) (the same seed). Raises ValueError for unequal lengths
    or no pairs."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired test needs two equal, non-empty lists. Got {len(a)} and {len(b)} values instead")
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return PairedTest(len(d), mean, None, None)
    sd = statistics.stdev(d)
    if sd <= 1e-12 * max(1.0, abs(mean)):  # equal differences, up to float rounding
        return PairedTest(len(d), mean, None, None)
    t = mean / (sd / math.sqrt(len(d)))
    return PairedTest(len(d), mean, t, t_pvalue(t, len(d) - 1))
