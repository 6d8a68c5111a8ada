"""Runs of `prunepilot` sub-commands as separate processes, a few at once, each resumable by its folder.

One process per run keeps runs independent (own seed, own torch thread, own failure) and lets a
benchmark stop and continue: a run whose outputs exist is not run again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pruning.errors import UserError


@dataclass(frozen=True)
class Run:
    """One `prunepilot` command whose outputs go to `out`; done when every file of `done_when` exists there."""

    name: str
    command: str
    config: str
    out: Path
    overrides: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    done_when: tuple[str, ...] = ("search_summary.json",)

    @property
    def done(self) -> bool:
        return all((self.out / f).is_file() for f in self.done_when)

    @property
    def log(self) -> Path:
        return self.out.parent / f"{self.out.name}.log"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "search.cli", self.command, self.config, "--out", str(self.out), "--quiet",
                *self.flags, *self.overrides]


@dataclass
class GridOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class _Launcher:
    """Starts the runs' processes and, on Ctrl-C, stops them and starts no more.

    Without it a Ctrl-C ended only the waiting loop: the pool's shutdown then waited for every queued run, and each
    started after the interrupt (a terminal's Ctrl-C had stopped the running ones, so the queue moved on).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen] = {}
        self._stopping = False

    def execute(self, run: Run) -> int:
        with self._lock:
            if self._stopping:
                return -signal.SIGINT
            if run.out.exists():  # a run interrupted earlier starts again from a clean folder
                shutil.rmtree(run.out)
            run.out.parent.mkdir(parents=True, exist_ok=True)
            log = run.log.open("w")
            log.write(" ".join(run.argv()) + "\n")
            log.flush()
            process = subprocess.Popen(run.argv(), stdout=log, stderr=subprocess.STDOUT)
            self._running[run.name] = process
        try:
            return process.wait()
        finally:
            log.close()
            with self._lock:
                self._running.pop(run.name, None)

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGINT to every running run (each stops as on Ctrl-C; the next bench starts it again), then wait."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_grid(runs: list[Run], parallel: int, label: str, show_progress: bool = True) -> GridOutcome:
    """Run what is not done yet, `parallel` at a time; failures are collected, not raised, so others finish.
    Ctrl-C stops the running ones, starts no more, and is raised again."""
    outcome = GridOutcome(skipped=[run.name for run in runs if run.done])
    todo = [run for run in runs if not run.done]
    launcher = _Launcher()
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        with tqdm(total=len(runs), initial=len(outcome.skipped), desc=label, disable=not show_progress) as bar:
            futures = {pool.submit(launcher.execute, run): run for run in todo}
            for future in as_completed(futures):
                run = futures[future]
                ok = future.result() == 0 and run.done
                (outcome.ran if ok else outcome.failed).append(run.name)
                bar.set_postfix_str(f"{run.name} {'done' if ok else 'FAILED'}")
                bar.update()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        launcher.stop()
        raise
    finally:
        pool.shutdown(wait=True)
    return outcome


def require(outcome: GridOutcome, runs: list[Run]) -> None:
    """Raise with the failed runs' logs named, after every other run has finished."""
    if outcome.failed:
        logs = [str(r.log) for r in runs if r.name in outcome.failed]
        raise UserError(f"bench: {len(outcome.failed)} run(s) failed: {', '.join(outcome.failed)}; "
                        f"see {', '.join(logs)} (finished runs are kept: run the same command again to continue)")
