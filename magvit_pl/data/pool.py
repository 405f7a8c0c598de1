"""Decoder processes for ``prepare``: one task at a time each, a hard time limit per task, and no
process outliving the one that started it.

``concurrent.futures`` cannot do what prepare needs here: FFmpeg can block inside C code where no
Python timeout reaches, so a task past its limit has its process killed and a fresh one started, and
a process that crashes costs only its task. Both come back as a :class:`Lost` result naming why.

Workers die with their parent: ``PR_SET_PDEATHSIG`` on Linux, and end-of-file on their pipe (plus a
poll of the parent's pid) elsewhere; a forked worker first closes the descriptors it inherited (the
parent's pipe ends and ``close_in_child``, e.g. prepare's output lock), so that the parent's death
reads as end-of-file and releases the lock.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator

PARENT_POLL_S = 2.0  # an idle worker checks this often that its parent still lives


@dataclass(frozen=True)
class Lost:
    """The result of a task whose process crashed or ran past the time limit."""

    reason: str


@dataclass
class _Slot:
    """One worker process and the task it is running."""

    process: mp.process.BaseProcess
    conn: mp.connection.Connection  # this side of the worker's pipe
    task: Hashable | None = None  # the id of the task it runs (None: idle)
    started: float = 0.0  # time.monotonic() when that task was sent


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then make
    sure the parent did not die before that took effect."""
    if sys.platform.startswith("linux"):
        import ctypes  # only here: the prctl call exists on Linux alone

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # no prctl: the pipe's end-of-file and the polling below still end the worker
    if os.getppid() != parent_pid:
        os._exit(0)


def _worker_loop(conn: mp.connection.Connection, inherited: list, parent_pid: int, work: Callable[[Any], Any]) -> None:
    """A worker process: run ``work`` on the tasks from ``conn`` until told to stop or the parent is gone."""
    for end in inherited:
        if isinstance(end, int):
            os.close(end)
        else:
            end.close()
    die_with_parent(parent_pid)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        while not conn.poll(PARENT_POLL_S):
            if os.getppid() != parent_pid:
                return
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            conn.send(work(task))
        except OSError:  # the parent is gone
            return


class Pool:
    """``workers`` processes running ``work(task)``, one task at a time each; a task running past
    ``limit_s`` has its process killed and replaced. ``close_in_child``: descriptors of this process
    that workers must not keep open (see the module docstring)."""

    def __init__(self, work: Callable[[Any], Any], workers: int, limit_s: float, close_in_child: Iterable[int | None] = ()):
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self.ctx = mp.get_context(method)
        self.work, self.limit_s = work, limit_s
        self.close_in_child = [fd for fd in close_in_child if fd is not None] if method == "fork" else []
        self.slots: list[_Slot] = []
        for _ in range(workers):
            self.slots.append(self._start())

    def _start(self) -> _Slot:
        # Free cyclic garbage before forking: a PyAV object holding FFmpeg worker threads (e.g. an audio
        # resampler's filter graph) that the child collected would wait forever for threads that exist
        # only in the parent (tests/reliability/test_hostile_media.py reproduces it).
        gc.collect()
        parent, child = self.ctx.Pipe()
        forked = self.ctx.get_start_method() == "fork"
        inherited = [parent, *(slot.conn for slot in self.slots), *self.close_in_child] if forked else []
        proc = self.ctx.Process(target=_worker_loop, args=(child, inherited, os.getpid(), self.work), daemon=True)
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def imap(self, tasks: Iterable[tuple[Hashable, Any]]) -> Iterator[tuple[Hashable, Any]]:
        """Run ``(task id, task)`` pairs; yield ``(task id, result or Lost)`` in completion order."""
        pending = iter(tasks)
        while True:
            for slot in self.slots:
                if slot.task is None and (nxt := next(pending, None)) is not None:
                    slot.task, slot.started = nxt[0], time.monotonic()
                    slot.conn.send(nxt[1])
            busy = [slot for slot in self.slots if slot.task is not None]
            if not busy:
                return
            wait_s = max(0.05, min(slot.started + self.limit_s - time.monotonic() for slot in busy))
            ready = mp.connection.wait([slot.conn for slot in busy], timeout=wait_s)
            for slot in busy:
                if (result := self._result(slot, slot.conn in ready)) is not None:
                    task, slot.task = slot.task, None
                    yield task, result

    def _result(self, slot: _Slot, ready: bool) -> Any:
        """The finished task's result, a Lost for a crashed or timed-out one (its process replaced), or
        None while it still runs."""
        if ready:
            try:
                return slot.conn.recv()
            except (EOFError, OSError):
                self._replace(slot)
                return Lost("decoder process crashed")
        if time.monotonic() - slot.started > self.limit_s:
            self._replace(slot)
            return Lost(f"timed out after {self.limit_s:.0f} s")
        return None

    def _replace(self, slot: _Slot) -> None:
        """Kill the slot's process and start a fresh one in its place."""
        slot.process.kill()
        slot.process.join()
        slot.conn.close()
        self.slots.remove(slot)  # its closed connection must not be handed to the new child
        fresh = self._start()
        slot.process, slot.conn = fresh.process, fresh.conn
        self.slots.append(slot)

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot.conn.send(None)
            except OSError:
                pass
        for slot in self.slots:
            slot.process.join(timeout=5)
            if slot.process.is_alive():
                slot.process.kill()
            slot.conn.close()
