"""Statistics for monitors: confidence intervals and distribution distances (numpy only)."""

from __future__ import annotations

import math

import numpy as np

# np.unique (drift references, calibration, histograms) imports numpy.ma on first use: ~7 ms
# holding the GIL, which stalled the event loop at the first drift window. Imported at start.
import numpy.ma
from numpy.typing import ArrayLike, NDArray

Z95 = 1.959963984540054
_GAMMA_EPS = 1e-15
_GAMMA_ITERATIONS = 10_000
_TINY = 1e-300
MAX_AUTO_N = 10_000  # scipy's ks_2samp 'auto' is exact up to this sample size

Floats = NDArray[np.float64]


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(
    a: tuple[int, int], b: tuple[int, int], z: float = Z95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p_a - p_b, from (successes, trials) pairs."""
    pa, pb = a[0] / max(a[1], 1), b[0] / max(b[1], 1)
    la, ua = wilson_interval(*a, z=z)
    lb, ub = wilson_interval(*b, z=z)
    low = pa - pb - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = pa - pb + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return (max(-1.0, low), min(1.0, high))


def ratio_interval(a: tuple[int, int], b: tuple[int, int], z: float = Z95) -> tuple[float, float]:
    """Katz's log interval for p_a / p_b (0.5 added to empty cells), from (successes, trials)."""
    xa, na = (a[0] + 0.5, a[1] + 0.5) if a[0] == 0 or b[0] == 0 else (a[0], a[1])
    xb, nb = (b[0] + 0.5, b[1] + 0.5) if a[0] == 0 or b[0] == 0 else (b[0], b[1])
    if na <= 0 or nb <= 0:
        return (0.0, math.inf)
    ratio = (xa / na) / (xb / nb)
    spread = z * math.sqrt(1 / xa - 1 / na + 1 / xb - 1 / nb)
    return (ratio * math.exp(-spread), ratio * math.exp(spread))


def _counts(values: ArrayLike, name: str) -> Floats:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of counts")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite, non-negative counts")
    if arr.sum() <= 0:
        raise ValueError(f"{name} must not be all zero")
    return arr


def _paired_counts(expected: ArrayLike, actual: ArrayLike) -> tuple[Floats, Floats]:
    e = _counts(expected, "expected counts")
    a = _counts(actual, "actual counts")
    if e.shape != a.shape:
        raise ValueError(f"count vectors differ in length: {e.size} != {a.size}")
    return e, a


def psi(expected_counts: ArrayLike, actual_counts: ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over bin proportions.

    Smoothing: each proportion p becomes (p + eps) / (1 + k * eps) for k bins, so an
    empty bin counts as a small but finite share and both vectors still sum to one.
    """
    e, a = _paired_counts(expected_counts, actual_counts)
    k = e.size
    pe = (e / e.sum() + eps) / (1 + k * eps)
    pa = (a / a.sum() + eps) / (1 + k * eps)
    if np.any(pe <= 0) or np.any(pa <= 0):
        raise ValueError("psi needs eps > 0 when a bin is empty")
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def _rel_entr(x: Floats, y: Floats) -> Floats:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos] / y[pos])
    return out


def js_distance(p: ArrayLike, q: ArrayLike, base: float | None = 2) -> float:
    """Jensen-Shannon distance, as scipy.spatial.distance.jensenshannon (base 2 by default)."""
    pp, qq = _paired_counts(p, q)
    pp, qq = pp / pp.sum(), qq / qq.sum()
    m = (pp + qq) / 2.0
    js = float(np.sum(_rel_entr(pp, m)) + np.sum(_rel_entr(qq, m)))
    if base is not None:
        js /= math.log(base)
    return math.sqrt(max(js, 0.0) / 2.0)


def gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x)."""
    if a <= 0 or x < 0:
        raise ValueError(f"gamma_q needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0:
        return 1.0
    if x < a + 1:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return _gamma_q_fraction(a, x)


def _gamma_prefactor(a: float, x: float) -> float:
    return math.exp(a * math.log(x) - x - math.lgamma(a))


def _gamma_p_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    ap = a
    for _ in range(_GAMMA_ITERATIONS):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _GAMMA_EPS:
            break
    return total * _gamma_prefactor(a, x)


def _gamma_q_fraction(a: float, x: float) -> float:
    # Modified Lentz evaluation of the continued fraction for Q(a, x).
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _GAMMA_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _GAMMA_EPS:
            break
    return h * _gamma_prefactor(a, x)


def chi2_sf(statistic: float, dof: int) -> float:
    """Survival function of the chi-square distribution."""
    if dof <= 0:
        raise ValueError(f"chi-square needs dof >= 1, got {dof}")
    return gamma_q(dof / 2.0, max(statistic, 0.0) / 2.0)


def chi2_test(ref_counts: ArrayLike, cur_counts: ArrayLike) -> tuple[float, float, int]:
    """Chi-square test of the 2xK table, as scipy.stats.chi2_contingency (Yates when dof is 1)."""
    ref, cur = _paired_counts(ref_counts, cur_counts)
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    dof = table.shape[1] - 1
    if dof == 0:
        return 0.0, 1.0, 0
    observed = table
    if dof == 1:
        diff = expected - observed
        observed = observed + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, chi2_sf(statistic, dof), dof


def kolmogorov_sf(z: float) -> float:
    """P(K > z) for the limiting Kolmogorov distribution (scipy.special.kolmogorov)."""
    if z <= 0:
        return 1.0
    if z < 1.0:
        # The theta-function form converges fast for small z; the alternating one does not.
        k = np.arange(1, 8)
        w = math.sqrt(2 * math.pi) / z
        cdf = w * float(np.sum(np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * z * z))))
        return min(1.0, max(0.0, 1.0 - cdf))
    k = np.arange(1, 101)
    terms = (-1.0) ** (k - 1) * np.exp(-2.0 * k * k * z * z)
    return min(1.0, max(0.0, 2.0 * float(np.sum(terms))))


def _sample(values: ArrayLike, name: str) -> Floats:
    arr = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not contain NaN")
    return arr


def ks_statistic(a: ArrayLike, b: ArrayLike) -> float:
    """The two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (ties handled)."""
    x, y = _sample(a, "first sample"), _sample(b, "second sample")
    both = np.concatenate([x, y])
    diff = np.searchsorted(x, both, side="right") / x.size
    diff -= np.searchsorted(y, both, side="right") / y.size
    return float(max(np.clip(-diff.min(), 0, 1), diff.max()))


def ks_2samp(a: ArrayLike, b: ArrayLike, method: str = "auto") -> tuple[float, float]:
    """Two-sided two-sample KS test, (statistic, p-value) as scipy.stats.ks_2samp.

    method 'exact' and 'auto' (exact when both sizes are <= 10,000) port scipy's exact
    lattice-path computations and match it. 'asymp' (and 'auto' beyond 10,000) uses the
    limiting Kolmogorov distribution at sqrt(en) * D, en = n1 * n2 / (n1 + n2): scipy uses
    the finite-n distribution kstwo(round(en)) there, which differs by O(1 / sqrt(en)).
    """
    if method not in ("auto", "exact", "asymp"):
        raise ValueError(f"method must be auto, exact or asymp, got {method!r}")
    n1, n2 = np.size(a), np.size(b)
    d = ks_statistic(a, b)
    if method == "auto":
        method = "exact" if max(n1, n2) <= MAX_AUTO_N else "asymp"
    if method == "exact":
        exact = _exact_2samp_sf(n1, n2, d)
        if exact is not None:
            return exact
    return d, ks_asymptotic_sf(d, n1, n2)


def ks_asymptotic_sf(d: float, n1: float, n2: float) -> float:
    """Asymptotic two-sided KS p-value with effective sample size n1 * n2 / (n1 + n2)."""
    en = n1 * n2 / (n1 + n2)
    return kolmogorov_sf(math.sqrt(en) * d)


def _exact_2samp_sf(n1: int, n2: int, d: float) -> tuple[float, float] | None:
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    h = round(d * lcm)
    d = h / lcm
    if h == 0:
        return d, 1.0
    prob = _prob_outside_square(n1, h) if n1 == n2 else _outer_prob_inside(n1, n2, g, h)
    if not (math.isfinite(prob) and 0 <= prob <= 1):
        return None
    return d, prob


def _prob_outside_square(n: int, h: int) -> float:
    # Horner-like form of 2 * sum (-1)^(k-1) binom(2n, n - k h) / binom(2n, n) (scipy).
    p = 0.0
    k = n // h
    while k >= 0:
        p1 = 1.0
        for j in range(h):
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1)
        p = p1 * (1.0 - p)
        k -= 1
    return 2 * p


def _outer_prob_inside(m: int, n: int, g: int, h: int) -> float:
    # Hodges' inside method for 1 - P(inside), the Viehmann recursion, as scipy ports it.
    if m < n:
        m, n = n, m
    mg, ng = m // g, n // g
    minj, maxj = 0, min(math.ceil(h / mg), n + 1)
    curlen = maxj - minj
    a = [1.0] * min(2 * maxj + 2, n + 1)
    a[minj:maxj] = [0.0] * (maxj - minj)
    for i in range(1, m + 1):
        lastminj, lastlen = minj, curlen
        minj = min(max((ng * i - h) // mg + 1, 0), n)
        maxj = min(-((-(ng * i + h)) // mg), n + 1)
        if maxj <= minj:
            return 1.0
        val = 0.0 if minj == 0 else 1.0
        shift = minj - lastminj
        for jj in range(maxj - minj):
            j = jj + minj
            val = (a[jj + shift] * i + val * j) / (i + j)
            a[jj] = val
        curlen = maxj - minj
        if lastlen > curlen:
            a[curlen : curlen + lastlen - curlen] = [1.0] * (lastlen - curlen)
    return a[maxj - minj - 1]


def ks_from_histograms(ref_counts: ArrayLike, cur_counts: ArrayLike) -> tuple[float, float]:
    """KS statistic between two binned distributions on the same bins, asymptotic p-value.

    The p-value uses the limiting Kolmogorov distribution with the effective sample size
    n_ref * n_cur / (n_ref + n_cur); binning can only lower the statistic.
    """
    ref, cur = _paired_counts(ref_counts, cur_counts)
    d = float(np.max(np.abs(np.cumsum(ref) / ref.sum() - np.cumsum(cur) / cur.sum())))
    return d, ks_asymptotic_sf(d, float(ref.sum()), float(cur.sum()))
