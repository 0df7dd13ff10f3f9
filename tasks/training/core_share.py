"""Training runs side by side on the CPU, each computing with its share of the cores.

Why: at the demo's sizes a training step is small GEMMs and a GRU over ~12 time steps, which
two threads speed up only 1.3x over one. Two Stage I runs trained at once in two threads of
one process, one torch thread each, finish 1.41x sooner than one after the other with two
threads each (2-core development machine, 240 steps of each: 14.1 s against 2 x 10.0 s).

torch's intra-op thread count is partly per process (ATen's) and partly per calling thread
(MKL's), so the count is set whenever a run joins or leaves, and each run sets it again from
its own thread before its first epoch (both runs have joined by then: loading the data takes
seconds) and after each epoch; the last run to leave puts back the count it found. The share is ``cores // runs computing now``, so a run left
alone (its sibling finished, or was served from the cache and never joined) gets every core
back at its next epoch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from webvse_model.train import pick_device


class CoreShare:
    """The runs computing now in this process, and the cores each may use."""

    def __init__(self, cores: int | None = None) -> None:
        self._cores = cores or torch.get_num_threads()
        self._active = 0
        self._before = self._cores  # the thread count before the first run joined, restored after the last one
        self._lock = threading.Lock()

    def threads(self) -> int:
        with self._lock:
            return self._share()

    def _share(self) -> int:
        return max(1, self._cores // max(1, self._active))

    def rebalance(self) -> None:
        """Set torch's thread count to this run's share now (call it from the run's thread)."""
        torch.set_num_threads(self.threads())

    @contextmanager
    def member(self) -> Iterator[CoreShare]:
        """One run computing in the calling thread for the duration."""
        with self._lock:
            if self._active == 0:
                self._before = torch.get_num_threads()
            self._active += 1
            torch.set_num_threads(self._share())
        try:
            yield self
        finally:
            with self._lock:
                self._active -= 1
                torch.set_num_threads(self._share() if self._active else self._before)


_TRAINING_CORES = CoreShare()  # one per process: the Stage I runs of a flow share it


def training_cores() -> CoreShare:
    """This process's share. Step code calls this rather than naming the instance: a Dask task
    runner pickles the flow's tasks by value, with the globals their code names, and a lock
    does not pickle (a function is pickled by reference)."""
    return _TRAINING_CORES


def trains_side_by_side(device: str) -> bool:
    """Whether a flow's Stage I runs train at once: on the CPU, sharing its cores; on a GPU one
    at a time, each with the whole device (and its memory)."""
    return pick_device(device).type == "cpu"
