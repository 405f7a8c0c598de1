"""ClipLoader: the DataLoader of a ShardClips dataset, which knows where in the stream it stands.

Every pass (``iter``) first fixes the dataset's :class:`~magvit_pl.data.stream.Pass` in this, the main
process: the epoch (``epoch_fn``, the trainer's ``current_epoch``; without one, a count of passes),
the DDP rank (webdataset's ``pytorch_worker_info``) and the batches of the epoch to skip.

Exact resume: ``state_dict()`` is ``{"epoch", "batches"}``, the batches of the epoch handed out so
far. Lightning's fit loop saves the state of every training loader that has ``state_dict`` and
``load_state_dict`` with each checkpoint, and on a resumed fit hands it back through
``load_state_dict`` before the first pass starts, which then skips those batches (a run resumed on an
epoch's last batch starts the next epoch). Lightning knows the loader's length, so it prefetches
nothing: batches handed out are batches trained on.

Waiting for data: SIGTERM while a batch is awaited stops the run (:class:`DataWaitTerminated`, exit
143; Lightning itself only looks for SIGTERM between batches, so a stalled decoder or file system
would keep a run alive forever), and a UserError raised in a worker arrives as its one line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import webdataset as wds
from torch.utils.data import DataLoader

from magvit_pl.data.stream import ShardClips
from magvit_pl.run.errors import Terminated, UserError


class DataWaitTerminated(Terminated):
    """SIGTERM arrived while the run was waiting for a batch."""


class ClipLoader(DataLoader):
    """A DataLoader over :class:`ShardClips` that sets up each pass and can resume mid-epoch.

    Args:
        dataset: The clips.
        epoch_fn: Returns the epoch of the pass about to start (None: count passes).
        **kwargs: DataLoader arguments.

    ``skip_fn`` (attribute, default None) returns, at each pass, the batches of the epoch to skip, for
    callers that place the stream by hand; a restored ``state_dict`` takes precedence once.
    """

    def __init__(self, dataset: ShardClips, epoch_fn: Callable[[], int | None] | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.epoch_fn = epoch_fn
        self.skip_fn: Callable[[], int] | None = None
        self._passes = 0
        self._restored: dict[str, int] | None = None
        self._state = {"epoch": 0, "batches": 0}  # the pass under way: its epoch, batches handed out

    def __iter__(self) -> Iterator:
        epoch, skip = self._next_position()
        if skip and skip >= self._batches():  # resumed on an epoch's last batch: the next epoch starts
            epoch, skip = epoch + 1, 0
        self._set_pass(epoch=epoch, skip_batches=skip if self.dataset.train else 0)
        self._state = {"epoch": epoch, "batches": skip}
        return _GuardedBatches(super().__iter__(), self._state)

    def __len__(self) -> int:
        return self._batches()

    def _batches(self) -> int:
        self._set_pass()
        return super().__len__()

    def _next_position(self) -> tuple[int, int]:
        """(epoch, batches to skip) of the pass about to start."""
        if self._restored is not None:
            epoch, skip = self._restored["epoch"], self._restored["batches"]
            self._restored, self._passes = None, epoch + 1
            return epoch, skip
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._passes
        self._passes += 1
        return int(epoch), int(self.skip_fn()) if self.skip_fn is not None else 0

    def _set_pass(self, **changes: int) -> None:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()  # here in the main process: see stream.py
        self.dataset.pass_ = dataclasses.replace(self.dataset.pass_, rank=int(rank), world_size=int(world_size),
                                                 workers=self.num_workers, **changes)

    def state_dict(self) -> dict[str, int]:
        """Where the training stream stands: the epoch and the batches of it handed out."""
        return dict(self._state)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Start the next pass where ``state_dict`` (from :meth:`state_dict`, via a checkpoint) stood."""
        ok = isinstance(state_dict, dict) and all(
            isinstance(state_dict.get(k), int) and not isinstance(state_dict.get(k), bool) and state_dict[k] >= 0
            for k in ("epoch", "batches"))
        if not ok:
            raise UserError(f"the checkpoint's data-loader state {state_dict!r:.80} is malformed; "
                            f"it was not written by this program")
        self._restored = {"epoch": state_dict["epoch"], "batches": state_dict["batches"]}


class _GuardedBatches:
    """A DataLoader iterator whose waits SIGTERM can stop, whose worker errors stay one line, and
    which counts the batches it hands out into ``state["batches"]``."""

    def __init__(self, iterator: Iterator, state: dict[str, int]):
        self._iterator, self._state = iterator, state

    def __iter__(self):
        return self

    def __next__(self):
        with _sigterm_stops_the_wait():
            try:
                batch = next(self._iterator)
            except Exception as err:  # noqa: BLE001  only a worker's UserError is rewritten
                if (error := _from_worker(err)) is None:
                    raise
                raise error from None
        self._state["batches"] += 1
        return batch

    def __getattr__(self, name: str):
        return getattr(self._iterator, name)


@contextlib.contextmanager
def _sigterm_stops_the_wait() -> Iterator[None]:
    """While the body runs, SIGTERM raises DataWaitTerminated (after the handler that was installed,
    e.g. Lightning's, has recorded it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:  # the process chose to ignore SIGTERM: keep it that way
        yield
        return

    def stop(signum, frame):
        if callable(previous):
            previous(signum, frame)
        raise DataWaitTerminated("stopped by SIGTERM while waiting for data")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _from_worker(err: Exception) -> UserError | None:
    """The one-line UserError behind ``err`` when ``err`` is torch's re-raise of a UserError from a
    DataLoader worker (whose message carries the worker's whole traceback), else None."""
    text = str(err)
    if not (text.startswith("Caught ") and " in DataLoader worker process " in text.split("\n", 1)[0]):
        return None
    qualname, _, message = text.rstrip().rsplit("\n", 1)[-1].partition(": ")
    module, _, name = qualname.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)  # only classes already imported here
    if not (isinstance(cls, type) and issubclass(cls, UserError)) and not isinstance(err, UserError):
        return None
    error = UserError(message)
    error.exit_code = getattr(cls, "exit_code", UserError.exit_code)
    return error
