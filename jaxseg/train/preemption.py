"""Preemption: a SIGTERM (or SIGINT) makes the loop save a checkpoint at the current step and
stop; the next run with the same workdir resumes from it.

One process: a signal handler sets a flag that the loop reads after each step. Several
processes: JAX's preemption service (on by default after `jax.distributed.initialize`) catches
SIGTERM on any host and agrees on one step at which every host stops, so all of them take
part in the same checkpoint.
"""

from __future__ import annotations

import signal
import threading

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(RuntimeError):
    """Raised by the loop after the preemption checkpoint is on disk."""

    def __init__(self, step: int, signum: int):
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; the checkpoint of step {step} "
            f"is saved: run again with the same workdir to resume"
        )
        self.step, self.signum = step, signum


class PreemptionWatch:
    """A context manager; `requested(step)` says whether to save and stop after `step`."""

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._multiprocess = jax.process_count() > 1

    def __enter__(self):
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, step: int) -> bool:
        if self._multiprocess:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
                return True
            return False
        return self.signum is not None
