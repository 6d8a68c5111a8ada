"""SIGTERM stops a job as Ctrl-C does.

Batch schedulers (Slurm at a time limit or on `scancel`, Kubernetes on eviction) and `kill` send SIGTERM, then
SIGKILL after a grace period. Python's default ends the process at once, and the embedded Ray's own handler printed a
C++ stack dump first: no word on what was kept, no `--resume` hint, and a half-done final pass. Here SIGTERM runs the
SIGINT handler, so every path that handles Ctrl-C (Tune saving its experiment, the search's "continue it with
--resume", the bench stopping its runs) handles it too; the exit code then says SIGTERM (143), not Ctrl-C (130).
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

_received = threading.Event()
_installed = threading.Event()


def _as_interrupt(signum: int, frame: Any) -> None:
    _received.set()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Tune's (it saves the experiment and stops), or Python's default: KeyboardInterrupt
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored, as in a batch script's background job (`prunepilot search ... &`): stop all the same
        raise KeyboardInterrupt


def stop_on_sigterm() -> Callable[[], None]:
    """Handle SIGTERM as Ctrl-C in this process; returns the function that puts the previous handler back.
    `ray.init` installs a handler of its own: `keep_sigterm_handler` puts this one back. Outside the main thread
    (where Python allows no handler) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _received.clear()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _as_interrupt)
    _installed.set()

    def restore() -> None:
        _installed.clear()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return restore


def keep_sigterm_handler() -> None:
    """Put this module's handler back where a library (Ray's driver) replaced it, while a job has it installed."""
    if _installed.is_set() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_interrupt)


def sigterm_received() -> bool:
    """Whether the interrupt being handled came from SIGTERM."""
    return _received.is_set()
