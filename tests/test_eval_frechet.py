"""The Fréchet distance equals clean-fid's on this SciPy and keeps working under SciPy 1.18's `sqrtm(A)` signature.

Reference values: clean-fid 0.1.35 `cleanfid.fid.frechet_distance` with SciPy 1.17.1 / numpy 2.4.6 (Python 3.11) on
the features below (numpy's PCG64 `default_rng` streams are stable across numpy versions).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

import eval.frechet as frechet
from eval.fid import fid_from_features

# (n1, n2, d) -> clean-fid's FID; the second case has n < d (singular covariances, as with < 2048 images)
CLEAN_FID_VALUES = {(80, 60, 24): 37.162116137836506, (20, 30, 64): 443.92805233036916}


def _features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + shift


def _stats(n1: int, n2: int, d: int) -> tuple[np.ndarray, ...]:
    a, b = _features(n1, d, 0.0, 0), _features(n2, d, 0.5, 1)
    return a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)


@pytest.mark.parametrize("shape", sorted(CLEAN_FID_VALUES))
def test_frechet_distance_equals_recorded_clean_fid_values(shape):
    args = _stats(*shape)
    # rel 1e-9: the BLAS thread count (the run's thread policy limits it) changes the summation order inside sqrtm;
    # 1 vs 2 OpenBLAS threads moved these values by 2.7e-11 relative
    assert frechet.frechet_distance(*args) == pytest.approx(CLEAN_FID_VALUES[shape], rel=1e-9)
    # an independent route (eigenvalues of sqrt(S1) S2 sqrt(S1)) agrees to float noise
    assert frechet.frechet_distance_eig(*args) == pytest.approx(CLEAN_FID_VALUES[shape], rel=1e-7)


def test_frechet_distance_equals_installed_clean_fid_when_it_runs():
    from cleanfid.fid import frechet_distance as clean_fid_frechet

    args = _stats(80, 60, 24)
    try:
        expected = float(clean_fid_frechet(*args))
    except TypeError:  # SciPy >= 1.18: clean-fid's sqrtm(..., disp=False) no longer exists
        pytest.skip("clean-fid's frechet_distance does not run on this SciPy")
    assert frechet.frechet_distance(*args) == pytest.approx(expected, abs=1e-9)


def _sqrtm_scipy_1_18(A):  # noqa: N803 (SciPy's parameter name): SciPy 1.18's signature, no `disp`
    out = _REAL_SQRTM(A)
    return out[0] if isinstance(out, tuple) else out


def _sqrtm_returning_tuple(A, *args, **kwargs):  # noqa: N803 (a SciPy that returns (sqrtm, errest))
    return _REAL_SQRTM(A), 0.0


_REAL_SQRTM = linalg.sqrtm


@pytest.mark.parametrize("fake", [_sqrtm_scipy_1_18, _sqrtm_returning_tuple])
def test_frechet_distance_survives_both_sqrtm_conventions(monkeypatch, fake):
    monkeypatch.setattr(frechet.linalg, "sqrtm", fake)
    for shape, value in CLEAN_FID_VALUES.items():
        assert frechet.frechet_distance(*_stats(*shape)) == pytest.approx(value, rel=1e-9)  # BLAS threads: above
    a, b = _features(80, 24, 0.0, 0), _features(60, 24, 0.5, 1)
    assert fid_from_features(a, b) == pytest.approx(CLEAN_FID_VALUES[(80, 60, 24)], rel=1e-9)


def test_frechet_distance_errors_name_the_problem():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="different lengths"):
        frechet.frechet_distance(mu, s, np.zeros(4), np.eye(4))
    assert frechet.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-12)
