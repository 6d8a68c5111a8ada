"""SIGTERM stops a job as Ctrl-C does.

Batch schedulers (Slurm at a time limit or on `scancel`, Kubernetes on eviction) and `kill` send SIGTERM, then
SIGKILL after a grace period. Python's default ends the process at once, and the embedded Ray's own handler printed a
C++ stack dump first: no word on what was kept, no `--resume` hint, and a half-done final pass. Here SIGTERM runs the
SIGINT handler, so every path that handles Ctrl-C (Tune saving its experiment, the search's "continue it with
--resume", the bench stopping its runs) handles it too; the exit code then says SIGTERM (143), not Ctrl-C (130).

Either signal is also latched: Python raises KeyboardInterrupt wherever the main thread is, and some places drop it
(a fork's at-fork hooks, as `ray.init` starts its processes: "Exception ignored in: _releaseLock"; a library's bare
`except:`), so a job went on to the end as if nothing was asked. `raise_if_interrupted` at the job's phase boundaries
raises the one that was dropped.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger("prunepilot")

_received = threading.Event()
_installed = threading.Event()
_pending = threading.Event()


def interrupt(signum: int, frame: Any) -> None:
    """The SIGINT handler: Python's KeyboardInterrupt, latched."""
    _pending.set()
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether a Ctrl-C or SIGTERM arrived in this job (handled or not)."""
    return _pending.is_set()


def raise_if_interrupted() -> None:
    """Raise the Ctrl-C or SIGTERM that arrived in this job if the code it landed in swallowed it."""
    if interrupted():
        raise KeyboardInterrupt


@contextmanager
def interrupts_deferred(what: str) -> Iterator[None]:
    """Hold a Ctrl-C (or a SIGTERM, in a job that handles it) until `what` is done, then raise it; a second one
    stops at once. Ray's start interrupted halfway left its core worker to crash the interpreter's exit (a segfault,
    exit code 139). A SIGINT the shell ignores stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    replaced = ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else []) + \
        ([signal.SIGTERM] if _installed.is_set() else [])
    previous = {s: signal.getsignal(s) for s in replaced}

    def defer(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM:
            _received.set()
        if _pending.is_set():
            raise KeyboardInterrupt
        _pending.set()
        log.warning("stopping once %s is done (Ctrl-C again stops at once)", what)

    for signum in replaced:
        signal.signal(signum, defer)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise_if_interrupted()


def _as_interrupt(signum: int, frame: Any) -> None:
    _received.set()
    _pending.set()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Tune's (it saves the experiment and stops), or ours: KeyboardInterrupt
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored, as in a batch script's background job (`prunepilot search ... &`): stop all the same
        raise KeyboardInterrupt


def stop_on_signals() -> Callable[[], None]:
    """Handle SIGTERM as Ctrl-C in this process, and latch both; returns the function that puts the previous handlers
    back. A SIGINT the shell ignores (a script's background job) stays ignored. `ray.init` installs a SIGTERM handler
    of its own: `keep_sigterm_handler` puts this one back. Outside the main thread (where Python allows no handler)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _received.clear()
    _pending.clear()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _as_interrupt)
    if previous[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
    _installed.set()

    def restore() -> None:
        _installed.clear()
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    return restore


def keep_sigterm_handler() -> None:
    """Put this module's handler back where a library (Ray's driver) replaced it, while a job has it installed."""
    if _installed.is_set() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_interrupt)


def sigterm_received() -> bool:
    """Whether the interrupt being handled came from SIGTERM."""
    return _received.is_set()
