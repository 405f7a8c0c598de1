"""Exact resume: the random state a run needs to continue step for step after a crash.

Lightning restores weights, optimisers, schedulers and loop counters from a checkpoint; the modules
add their own state (EMA weights and LeCam anchors are buffers, the MTM task cycle is in
``checkpoint["magvit"]``), and the data module restarts the training stream at the saved batch
(see :mod:`magvit_pl.data.datamodule`). What is left is the global random state that dropout,
mask sampling and dead-code restarts draw from. :class:`ResumeState` keeps it:

* ``state_dict`` (written with every checkpoint) holds the torch CPU and CUDA generators, Python's
  ``random`` and numpy's global generator, as plain lists and tensors (``weights_only`` loadable);
* after a restore, the states are put back just before the first training batch runs, so nothing
  that happens in between (data-loader start, sanity check) can shift them;
* validation and the sanity check run on a forked random state, so how often one validates never
  changes the training trajectory, and a resumed run that skips a validation matches one that ran it.

Under DDP each rank checkpoints rank 0's state; after a restore every rank folds its rank into it,
so ranks keep distinct dropout masks (deterministic, but not identical to the uninterrupted run).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

from magvit_pl.run.errors import UserError, first_line


def capture_rng() -> dict[str, Any]:
    """The global random states as tensors and lists (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (missing entries are left alone); a malformed saved state is a one-line error."""
    try:
        _restore_rng(state)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as err:
        raise UserError(f"the checkpoint's saved random state is malformed ({type(err).__name__}: {first_line(err)[:200]}); "
                        "it was not written by this program") from None


def _restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _fold_rank(rank: int) -> None:
    """Derive a distinct, deterministic torch seed per rank from the restored state."""
    seed = int(torch.randint(0, 2**62, (1,)).item()) + 7919 * rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class ResumeState(Callback):
    """Save and restore the global random state with checkpoints; shield training from validation's draws."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._val_stash: dict[str, Any] | None = None

    # ---- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
            if trainer.world_size > 1:
                _fold_rank(trainer.global_rank)

    # ---- validation on a forked random state
    def _fork(self) -> None:
        self._val_stash = capture_rng()

    def _join(self) -> None:
        if self._val_stash is not None:
            restore_rng(self._val_stash)
            self._val_stash = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._fork()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._join()

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._fork()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._join()


class ResumedOptimizerSettings(Callback):
    """``fit --ckpt_path``: the optimiser settings of the resumed model (its learning rates, betas, weight decay,
    as configured now: the resume policy lets a typed ``--model.lr`` win) replace those restored from the
    checkpoint's optimiser state, which would otherwise keep the old ones whatever the config says.

    Lightning restores each optimiser's ``param_groups`` and each scheduler's ``base_lrs``; just before training
    continues, a fresh ``configure_optimizers()`` of the module gives the current settings, which are copied onto
    the restored objects (moments and step counters stay restored). A ``LambdaLR``'s rate is recomputed at once
    for the resumed step; other schedulers apply theirs at their next step."""

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.ckpt_path:
            return
        from lightning.pytorch.core.optimizer import _configure_optimizers  # lazy: Lightning's own parser of the return value

        fresh_opts, fresh_scheds, _ = _configure_optimizers(pl_module.configure_optimizers())
        for restored, fresh in zip(trainer.optimizers, fresh_opts):
            for group, new in zip(restored.param_groups, fresh.param_groups):
                group.update({k: v for k, v in new.items() if k not in ("params", "lr")})
        for restored, fresh in zip(trainer.lr_scheduler_configs, fresh_scheds):  # fresh: a scheduler or its dict
            old, new = restored.scheduler, fresh["scheduler"] if isinstance(fresh, dict) else fresh
            if hasattr(old, "base_lrs"):
                old.base_lrs = list(new.base_lrs)
            if isinstance(old, torch.optim.lr_scheduler.LambdaLR):
                lrs = [base * fn(old.last_epoch) for fn, base in zip(old.lr_lambdas, old.base_lrs)]
                for group, lr in zip(old.optimizer.param_groups, lrs):
                    group["lr"] = lr
                old._last_lr = lrs
