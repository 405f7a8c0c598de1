"""Fréchet Video Distance (Unterthiner et al., arXiv 1812.01717), as a DDP-synced torchmetrics Metric.

Protocol (the one MAGVIT reports): clips in [-1, 1] are resized bilinearly to 224×224 (on TF 1.x's sampling grid,
as the TF reference and the official MAGVIT code resize: :func:`resize_clips`), passed through
the Kinetics-400 I3D, and the 400 time-averaged logits are the features. FVD is the Fréchet
distance (:mod:`magvit_pl.metrics.frechet`) between Gaussians fitted (float64) to the real and to the
generated features. FVD numbers
are only comparable under the same protocol (sample counts, frames, stride, resolution, I3D file),
so :meth:`FrechetVideoDistance.protocol` records it and it should be saved with every result.

Real-data statistics can be cached in an ``.npz`` keyed by the shard manifest hash + protocol
(:meth:`~FrechetVideoDistance.save_real_stats` / :meth:`~FrechetVideoDistance.load_real_stats`);
``cli.py test`` does so for its test set (:meth:`~FrechetVideoDistance.attach_real_stats_file`, key from
:func:`test_set_key`). A statistics file is data from outside: it is read without pickles and refused unless
μ is a finite vector and Σ a finite, symmetric, positive semi-definite matrix of the same size.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from magvit_pl.metrics.frechet import frechet_distance, gaussian_stats
from magvit_pl.metrics.i3d import I3D, MIN_FRAMES
from magvit_pl.run.errors import UserError, first_line
from magvit_pl.run.files import atomic_path, sha256_file
from magvit_pl.run.weights import WEIGHTS, resolve


RESIZE = "bilinear on TF 1.x's align_corners=False grid (source = output index x in/out), no antialias"


def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Low/high source indices and the weight of the high one, for each of ``n_out`` outputs on TF1's grid."""
    x = torch.arange(n_out, dtype=torch.float32, device=device) * (n_in / n_out)
    lo = x.floor().clamp(0, n_in - 1)
    return lo.long(), (lo + 1).clamp(max=n_in - 1).long(), x - lo


def resize_clips(videos: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` → ``(B, C, T, size, size)``, bilinear as TF 1.x ``tf.image.resize_bilinear`` (default
    ``align_corners=False``, no half-pixel centres) computes it: output pixel ``i`` samples the source at
    ``i · in / out``, with TF's order of operations. This is the resize of the TF FVD reference and of the official
    MAGVIT evaluation (``videogvt/train_lib/metrics_lib.py``); PyTorch's ``align_corners=False`` samples half a pixel
    elsewhere, which moves FVD by several per cent (docs/fvd.md)."""
    b, c, t, h, w = videos.shape
    if (h, w) == (size, size):
        return videos
    rows_lo, rows_hi, y = _tf1_axis(h, size, videos.device)
    cols_lo, cols_hi, x = _tf1_axis(w, size, videos.device)
    top, bottom = videos[..., rows_lo, :], videos[..., rows_hi, :]  # (B, C, T, size, W)
    top = top[..., cols_lo] + (top[..., cols_hi] - top[..., cols_lo]) * x  # (B, C, T, size, size)
    bottom = bottom[..., cols_lo] + (bottom[..., cols_hi] - bottom[..., cols_lo]) * x
    return top + (bottom - top) * y[:, None]


@functools.lru_cache(maxsize=2)
def _shared_i3d(path: str) -> I3D:
    """One frozen I3D per weights file, shared by every FVD metric (e.g. one per task)."""
    return I3D.from_pretrained(path)


def stats_key(manifest_sha256: str, protocol: dict[str, Any]) -> str:
    """Cache key of real statistics: sha256 of the data manifest hash and the protocol fields that change them."""
    fields = {k: protocol.get(k) for k in _KEY_FIELDS}
    blob = json.dumps({"manifest": manifest_sha256, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


_KEY_FIELDS = ("num_real", "frames", "resolution", "stride", "seed", "resize", "weights_sha256")
# tolerances of a loaded Σ: |Σ - Σᵀ| and the most negative eigenvalue, relative to max(1, the largest |entry| / eigenvalue)
SYMMETRY_TOL, PSD_TOL = 1e-8, 1e-6


def test_set_key(manifest_sha256: str, selection: dict[str, Any], fvd: "FrechetVideoDistance") -> str:
    """Cache key of a test set's real statistics: the manifest hash, what selects and shapes the clips
    (``selection``: split, frames, resolution, stride, batch size, batch limit, processes …) and the feature
    protocol of ``fvd`` (resize, minimum frames, I3D file)."""
    fields = {"manifest": manifest_sha256, "selection": selection, "resize": fvd.resize, "resize_method": RESIZE, "min_frames": fvd.min_frames,
              "weights_sha256": fvd._weights_sha256}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class FrechetVideoDistance(Metric):
    """FVD with the Kinetics-400 I3D; ``update(videos, real)`` then ``compute()``.

    Features are kept per rank in list states (``dist_reduce_fx='cat'``), so under DDP every rank
    computes the FVD of all samples. The I3D network is not part of the metric's ``state_dict``
    (checkpoints stay small); it follows the device of the videos.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        weights_path: str | None = None,
        resize: int = 224,
        min_frames: int = MIN_FRAMES,
        batch_size: int = 8,
        stride: int = 1,
        seed: int | None = None,
        extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ):
        """
        Args:
            weights_path: I3D weights; default the verified ``i3d`` file in the weights cache.
            resize: side the clips are resized to before I3D (224 in the standard protocol).
            min_frames: clips with fewer frames are refused (I3D needs at least 9).
            batch_size: clips per I3D forward pass inside ``update`` (bounds memory).
            stride: temporal stride the clips were sampled with (recorded in the protocol only).
            seed: sampling seed of the generated clips (recorded in the protocol only).
            extractor: a different feature network ``(B, 3, T, resize, resize) → (B, D)``; for tests and
                experiments only: its numbers are not FVD.
        """
        super().__init__(**kwargs)
        if min_frames < MIN_FRAMES and extractor is None:
            raise UserError(f"min_frames must be >= {MIN_FRAMES} for I3D, got {min_frames}")
        if extractor is None:
            path = resolve("i3d", weights_path)  # MissingWeightsError names the fetch command
            self._weights_sha256 = WEIGHTS["i3d"].sha256 if weights_path is None else sha256_file(path)
            extractor = _shared_i3d(str(path))
        else:
            self._weights_sha256 = "custom-extractor"
        object.__setattr__(self, "_extractor", extractor)  # not a submodule: stays out of state_dict
        self.resize, self.min_frames, self.batch_size = resize, min_frames, batch_size
        self.stride, self.seed = stride, seed
        self._clip_shape: tuple[int, int, int] | None = None
        self._real_stats: tuple[np.ndarray, np.ndarray, int] | None = None
        self._counts: tuple[int, int] | None = None  # (real, fake) of the last compute(), all ranks
        self._stats_file: tuple[Path, str] | None = None  # attach_real_stats_file(path, key)
        self._count_real = False  # real statistics came from that file: real clips are only counted
        self._computed_real: tuple[np.ndarray, np.ndarray, int] | None = None  # real (μ, Σ, n) of the last compute()
        self.add_state("real_count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    @property
    def extractor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The feature network (I3D, shared by every metric using the same weights file)."""
        return self._extractor

    @property
    def uses_attached_real_stats(self) -> bool:
        """Whether the real statistics come from an attached file (real clips are then only counted)."""
        return self._count_real

    # -- accumulation --------------------------------------------------------------------------

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """I3D features ``(B, D)`` of clips ``(B, 3, T, H, W)`` in [-1, 1] (resized, float32, no autocast)."""
        self._check_clips(videos)
        net = self._extractor
        if isinstance(net, torch.nn.Module):
            p = next(net.parameters(), None)
            if p is not None and p.device != videos.device:
                net.to(videos.device)
        out = []
        with torch.autocast(videos.device.type, enabled=False):
            for chunk in videos.split(self.batch_size):
                x = resize_clips(chunk.float().clamp(-1, 1), self.resize)
                out.append(net(x).float())
        return torch.cat(out)

    def _check_clips(self, videos: torch.Tensor) -> None:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise UserError(f"FVD expects videos (B, 3, T, H, W) in [-1, 1], got shape {tuple(videos.shape)}")
        if videos.shape[2] < self.min_frames:
            raise UserError(f"FVD needs clips of at least {self.min_frames} frames, got {videos.shape[2]}")

    def update(self, videos: torch.Tensor, real: bool, is_features: bool = False) -> None:
        """Add a batch of real (``real=True``) or generated clips ``(B, 3, T, H, W)`` in [-1, 1].

        With ``is_features``, ``videos`` are precomputed ``(B, D)`` features (see :meth:`features`).
        """
        self._add(videos, real, is_features)

    def _add(self, videos: torch.Tensor, real: bool, is_features: bool = False) -> None:
        if is_features:
            features = videos
            if features.ndim != 2:
                raise UserError(f"features must be (B, D), got shape {tuple(features.shape)}")
        elif real and self._count_real:  # the real statistics come from the attached file: no I3D pass
            self._check_clips(videos)
            self._record_shape(videos)
            self.real_count += videos.shape[0]
            return
        else:
            features = self.features(videos)
            self._record_shape(videos)
        self._counts = None
        (self.real_features if real else self.fake_features).append(features.detach().float())

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        """Add precomputed ``(B, D)`` features; same as ``update(features, real, is_features=True)``."""
        self.update(features, real, is_features=True)

    def _record_shape(self, videos: torch.Tensor) -> None:
        shape = tuple(int(s) for s in videos.shape[2:])
        if self._clip_shape is None:
            self._clip_shape = shape
        elif self._clip_shape != shape:
            raise UserError(f"all FVD clips must share T×H×W; got {shape} after {self._clip_shape}")

    # -- statistics ----------------------------------------------------------------------------

    def _gathered(self, name: str) -> torch.Tensor | None:
        state = getattr(self, name)
        if isinstance(state, list):
            state = dim_zero_cat(state) if state else None
        return state if state is not None and state.shape[0] else None

    def _feature_dim(self) -> int:
        for name in ("real_features", "fake_features"):
            state = getattr(self, name)
            if isinstance(state, torch.Tensor) or state:
                return int(dim_zero_cat(state).shape[-1])
        if isinstance(self._extractor, I3D):
            return self._extractor.num_classes
        probe = torch.zeros(1, 3, self.min_frames, self.resize, self.resize)
        with torch.no_grad():
            return int(self._extractor(probe).shape[-1])

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        # A rank that saw no clips of a kind would send a 1-D empty tensor while the others send (n, D):
        # the gathers then disagree and DDP hangs or aborts. Send an empty (0, D) block instead.
        for name in ("real_features", "fake_features"):
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.zeros(0, self._feature_dim(), device=self.device))
        super()._sync_dist(dist_sync_fn or gather_all_tensors, process_group)

    def real_statistics(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(μ, Σ, n) of the real set: from loaded cached statistics, else from the real features seen."""
        if self._real_stats is not None:
            return self._real_stats
        feats = self._gathered("real_features")
        if feats is None:
            raise UserError("FVD has no real clips: call update(videos, real=True) or load_real_stats(...) first")
        mu, sigma = gaussian_stats(feats)
        return mu, sigma, int(feats.shape[0])

    def set_real_statistics(self, mu: np.ndarray, sigma: np.ndarray, n: int) -> None:
        """Use these real statistics instead of accumulated real features."""
        self._real_stats = (np.asarray(mu, np.float64), np.asarray(sigma, np.float64), int(n))

    def compute(self) -> torch.Tensor:
        mu_r, sigma_r, n_real = self.real_statistics()
        fake = self._gathered("fake_features")
        if fake is None or fake.shape[0] < 2:
            raise UserError(f"FVD needs at least 2 generated clips, got {0 if fake is None else fake.shape[0]}")
        if n_real < 2:
            raise UserError(f"FVD needs at least 2 real clips, got {n_real}")
        if self._count_real and int(self.real_count) != n_real:
            raise UserError(f"the cached real FVD statistics {self._stats_file[0]} were made from {n_real} clips but this run "
                            f"saw {int(self.real_count)}; delete that file to recompute them")
        if fake.shape[0] > n_real:
            warnings.warn(
                f"FVD compares {fake.shape[0]} generated clips with only {n_real} real ones; "
                "the real statistics are the noisier side", stacklevel=2)
        self._counts = (n_real, int(fake.shape[0]))
        self._computed_real = (mu_r, sigma_r, n_real)  # all ranks' (compute runs on synced states)
        mu_f, sigma_f = gaussian_stats(fake)
        return torch.tensor(frechet_distance(mu_r, sigma_r, mu_f, sigma_f), dtype=torch.float64)

    def protocol(self) -> dict[str, Any]:
        """Everything that makes two FVD numbers comparable; save it next to every result."""
        if self._counts is not None:  # after compute(): the counts over all ranks
            n_real, n_fake = self._counts
        else:
            real, fake = self._gathered("real_features"), self._gathered("fake_features")
            n_real = self._real_stats[2] if self._real_stats is not None else (0 if real is None else int(real.shape[0]))
            n_fake = 0 if fake is None else int(fake.shape[0])
        t, h, w = self._clip_shape or (None, None, None)
        return {
            "metric": "fvd",
            "num_real": n_real,
            "num_fake": n_fake,
            "resolution": self.resize,
            "input_resolution": [h, w] if h is not None else None,
            "frames": t,
            "stride": self.stride,
            "seed": self.seed,
            "resize": RESIZE,
            "features": "I3D Kinetics-400 logits averaged over time",
            "weights_sha256": self._weights_sha256,
            "real_stats_cached": self._real_stats is not None,
        }

    # -- cached real statistics --------------------------------------------------------------

    def save_real_stats(self, path: str | os.PathLike, manifest_sha256: str, key: str | None = None) -> Path:
        """Write the real set's (μ, Σ, n) and the protocol to ``path`` (.npz, atomically).

        ``manifest_sha256`` identifies the real data (e.g. the hash of the shards' manifest.json); the stored key is
        ``key`` when given, else :func:`stats_key` of it and the protocol.
        """
        return self._write_stats(path, *self.real_statistics(), manifest_sha256, key)

    def _write_stats(self, path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, n: int, manifest_sha256: str,
                     key: str | None) -> Path:
        proto = {**self.protocol(), "num_real": n}
        path = Path(path)
        with atomic_path(path) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(n), key=np.str_(key or stats_key(manifest_sha256, proto)),
                     protocol=np.str_(json.dumps(proto, sort_keys=True)))
        return path

    def attach_real_stats_file(self, path: str | os.PathLike, key: str) -> bool:
        """Cache the statistics of a fixed real set in ``path`` under ``key`` (e.g. :func:`test_set_key`).

        When ``path`` holds statistics stored under ``key`` (checked as :func:`read_real_stats` does), they are
        used: ``update(videos, real=True)`` then only counts the clips (no I3D pass), and ``compute()`` refuses a
        count that differs from the file's. Otherwise the real clips are fed as usual and
        :meth:`save_attached_real_stats` writes the file for the next run. Returns whether the file was used.
        """
        path = Path(path)
        self._stats_file = (path, key)
        if not path.is_file():
            return False
        mu, sigma, n, stored_key, _ = read_real_stats(path)
        if stored_key != key:
            return False
        self.set_real_statistics(mu, sigma, n)
        self._count_real = True
        return True

    def save_attached_real_stats(self, manifest_sha256: str) -> Path | None:
        """After ``compute()``: write the attached file (see :meth:`attach_real_stats_file`) with the real statistics
        of all processes, unless the file was used. No collective call: run it on one process."""
        if self._stats_file is None or self._count_real or self._computed_real is None:
            return None
        path, key = self._stats_file
        return self._write_stats(path, *self._computed_real, manifest_sha256, key)

    def load_real_stats(self, path: str | os.PathLike, manifest_sha256: str, num_real: int, frames: int) -> bool:
        """Use the cached real statistics at ``path`` if they were made from the same data and protocol.

        Returns False (and changes nothing) when the file is absent or its key differs: the caller then
        feeds the real clips and may :meth:`save_real_stats` for next time.
        """
        path = Path(path)
        if not path.is_file():
            return False
        mu, sigma, n, key, _ = read_real_stats(path)
        wanted = {**self.protocol(), "num_real": num_real, "frames": frames}
        if key != stats_key(manifest_sha256, wanted) or n != num_real:
            return False
        self.set_real_statistics(mu, sigma, n)
        return True

    def reset(self) -> None:
        """Forget the clips seen (cached real statistics stay)."""
        super().reset()
        self._clip_shape, self._counts = None, None


class PairedFVD(FrechetVideoDistance):
    """FVD in the form of a task metric: ``update(generated, real, given)`` adds the real and the
    generated clips of one batch (``given``, the pixel mask of the condition, is not used).
    ``real_features``: the real clips' features, already computed (:meth:`features`), used instead of an I3D
    pass over ``real`` (an evaluation shares them between tasks and repeats)."""

    def update(self, generated: torch.Tensor, real: torch.Tensor, given: torch.Tensor | None = None,  # type: ignore[override]
               real_features: torch.Tensor | None = None) -> None:
        if real_features is not None and not self._count_real:
            self._check_clips(real)
            self._record_shape(real)
            self._add(real_features, True, is_features=True)
        else:
            self._add(real, True)
        self._add(generated, False)


def read_real_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int, str, dict[str, Any]]:
    """(μ, Σ, n, key, protocol) from a statistics file written by ``save_real_stats`` (no pickles), checked:
    μ a finite vector of D values, Σ a finite, symmetric, positive semi-definite D×D matrix (within
    :data:`SYMMETRY_TOL` / :data:`PSD_TOL`), n ≥ 2. Anything else is a one-line :class:`UserError`
    (a NaN would make every FVD NaN, a negative covariance would clip it to 0)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, n, key, proto = z["mu"], z["sigma"], int(z["n"]), str(z["key"]), json.loads(str(z["protocol"]))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not an FVD statistics file: {first_line(err, default=type(err).__name__)}") from None
    bad = _bad_statistics(mu, sigma, n)
    if bad:
        raise UserError(f"{path} holds invalid FVD statistics ({bad}); delete it so they are recomputed")
    return mu.astype(np.float64), sigma.astype(np.float64), n, key, proto


def _bad_statistics(mu: np.ndarray, sigma: np.ndarray, n: int) -> str | None:
    """What is wrong with loaded (μ, Σ, n), or None."""
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        return f"dtypes {mu.dtype}/{sigma.dtype} are not numbers"
    if mu.ndim != 1 or mu.size == 0 or sigma.shape != (mu.size, mu.size):
        return f"mu has shape {mu.shape} and sigma {sigma.shape}; expected (D,) and (D, D)"
    if n < 2:
        return f"n = {n} clips; at least 2 are needed"
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        return "NaN or inf values"
    sigma = sigma.astype(np.float64)
    if np.abs(sigma - sigma.T).max() > SYMMETRY_TOL * max(1.0, np.abs(sigma).max()):
        return "sigma is not symmetric"
    eig = np.linalg.eigvalsh((sigma + sigma.T) / 2)
    if eig.min() < -PSD_TOL * max(1.0, eig.max()):
        return f"sigma is not positive semi-definite (eigenvalue {eig.min():.3g})"
    return None
