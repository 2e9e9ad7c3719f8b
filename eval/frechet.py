"""The Fréchet distance between two Gaussians (FID's formula), working on every SciPy the project allows.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)) (Heusel et al. 2017). This is clean-fid 0.1.35's
`cleanfid/fid.py::frechet_distance` step for step (the same matrix square root, the same eps retry on a singular
product, the same tolerance on the imaginary part), so it gives clean-fid's numbers. clean-fid calls
`scipy.linalg.sqrtm(A, disp=False)` and unpacks a tuple; SciPy 1.18 removed `disp` (and older SciPy returns a bare
array without it), so that call raises `TypeError` on new SciPy. Here `sqrtm` is called without `disp` and both
return conventions are accepted. Imports only numpy and scipy.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

IMAG_TOL = 1e-3  # clean-fid / pytorch-fid: the largest imaginary diagonal part tolerated in sqrtm(S1 S2)


def matrix_sqrt(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm(a) as an array, whatever the SciPy version (no `disp`; tuple results unpacked)."""
    with warnings.catch_warnings():  # singular products warn; the caller checks finiteness as clean-fid does
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2): clean-fid's `frechet_distance`, any SciPy."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = matrix_sqrt(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # a near-singular product: regularise both covariances, as clean-fid does
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = matrix_sqrt((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_TOL):
            raise ValueError(f"FID: sqrtm(S1 S2) has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}"
                             " (covariances far from positive semi-definite: check the features)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_eig(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same distance from the eigenvalues of sqrt(S1) S2 sqrt(S1) (symmetric PSD, no general sqrtm).

    tr(sqrtm(S1 S2)) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), since both products have the same eigenvalues.
    An independent cross-check of `frechet_distance`; tiny negative eigenvalues (round-off) count as 0.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    w, v = linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = linalg.eigvalsh(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())
