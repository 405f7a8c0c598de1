"""The Fréchet distance between two Gaussians, and the Gaussian fitted to features: the maths FVD and FID share."""
from __future__ import annotations

import numpy as np
import torch

from magvit_pl.run.errors import UserError


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, in float64."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise UserError(f"need at least 2 samples to fit a Gaussian, got features of shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _clip_eigvals(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues that are rounding noise (below n·eps·max|w|), so singular matrices stay exact."""
    tol = max(w.size, 1) * np.finfo(np.float64).eps * np.abs(w).max(initial=0.0)
    return np.where(w > tol, w, 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½, in float64.

    With Σ1 = V diag(w) Vᵀ, tr (Σ1 Σ2)^½ = Σ √eig(diag(√w) Vᵀ Σ2 V diag(√w)): a symmetric PSD matrix
    (similar to Σ1^½ Σ2 Σ1^½), so eigendecompositions give the trace without the complex or
    non-converging results of a general ``sqrtm``. It stays exact for singular covariances (fewer
    samples than dimensions): eigenvalues below the rounding noise floor count as 0, and only the
    r = rank(Σ1) non-zero directions enter the second, r×r, eigenproblem.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    w = _clip_eigvals(w)
    keep = w > 0
    half = v[:, keep] * np.sqrt(w[keep])  # (D, r): Σ1 = half @ halfᵀ
    inner = half.T @ s2 @ half  # (r, r), symmetric PSD
    tr_covmean = np.sqrt(_clip_eigvals(np.linalg.eigvalsh((inner + inner.T) / 2))).sum() if keep.any() else 0.0
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))
