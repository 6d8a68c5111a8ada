"""One process at a time in a results folder: a claim file, created whole and exclusively, names the process.

Two jobs started into one folder (a search submitted twice into its default results/<name>/; a bench started again
while the first still runs, which deletes and restarts the runs it finds unfinished) each passed their 'is it taken'
checks and wrote into, or deleted, the other's files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from pruning.checkpoint import atomic_write_text
from pruning.errors import UserError

log = logging.getLogger("prunepilot")
HEARTBEAT_S = 10.0
"""How often a held claim's file is touched."""
STALE_AFTER_S = 120.0
"""A held claim untouched this long is stale wherever its process ran (another node that crashed, say)."""
SETUP_CLAIM_KEY = "setting_up"
"""search.json's one key while its search sets up (the claim on the run folder, before the study is opened)."""


def this_process() -> dict:
    """What a claim records: enough to tell, on this machine, whether its process still runs."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def claim_is_stale(claim: dict) -> bool:
    """A claim made on this machine by a process that no longer runs (killed, say); another machine's is never
    judged stale, since its process cannot be seen from here."""
    if claim.get("host") != socket.gethostname() or not isinstance(claim.get("pid"), int):
        return False
    try:
        os.kill(claim["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def create_exclusively(path: Path, text: str) -> bool:
    """Write `path` whole unless it exists; False when it did (then nothing is written)."""
    written = path.with_name(f".{path.name}.{os.getpid()}")
    written.write_text(text)
    try:  # a hard link appears whole or not at all: a reader never sees half a claim
        os.link(written, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: an exclusive create, written at once
        try:
            with path.open("x") as file:
                file.write(text)
            return True
        except FileExistsError:
            return False
    finally:
        written.unlink(missing_ok=True)


def take_over(path: Path, stale: str, text: str) -> bool:
    """Replace the claim `stale` (the text read from `path` and judged stale) with `text`; False when another
    process took it over first. Two processes that judged one claim stale at once both replaced it, and both went
    on in the folder: the replacement is made only while `path` still holds `stale`, under a lock named after
    that claim and created exclusively."""
    lock = path.with_name(f".{path.name}.takeover-{hashlib.sha1(stale.encode()).hexdigest()[:12]}")
    if not create_exclusively(lock, claim_text()):
        if not (claim_is_stale(_held_by(lock)) or heartbeat_stopped(lock)):  # another is taking it over now
            deadline = time.monotonic() + 2.0
            while lock.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return False  # the caller reads its claim, made by now
        lock.unlink(missing_ok=True)  # one that was killed while taking it over
        if not create_exclusively(lock, claim_text()):
            return False
    try:
        try:
            current = path.read_text()
        except FileNotFoundError:  # its owner removed it: a claim made afresh
            return create_exclusively(path, text)
        if current != stale:  # already taken over (and its lock gone)
            return False
        atomic_write_text(path, text)
        return True
    finally:
        lock.unlink(missing_ok=True)


def read_claim(path: Path) -> str:
    """A claim file's text as it is now ('' when it went in the meantime), for `take_over` to compare."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def claim_text(key: str | None = None) -> str:
    """This process's claim as JSON, under `key` when the claim file also holds other state (search.json)."""
    return json.dumps({key: this_process()} if key else this_process())


def _held_by(path: Path, text: str | None = None) -> dict:
    """The claim in `path` (or its `text`, read before); an unreadable one (half a write by hand, say) reads as
    nobody's."""
    try:
        held = json.loads(path.read_text() if text is None else text)
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def heartbeat_stopped(path: Path) -> bool:
    """Whether a held claim's file went untouched for STALE_AFTER_S: its process stopped, on any machine. Judged
    by the file system's clock, which stamped the heartbeat: this machine's own clock, some minutes off the
    server's on a cluster's shared folder, took a live claim for stale (or a stale one for live)."""
    try:
        return file_system_now(path.parent) - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return True


def file_system_now(folder: Path) -> float:
    """The time as `folder`'s file system stamps it (a network file system: its server's), read from a file
    touched for the purpose; this machine's clock where the folder cannot be written."""
    probe = folder / f".clock.{os.getpid()}-{threading.get_ident()}"
    try:
        probe.touch()
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)
    except OSError:
        return time.time()


def hold_claim(path: Path, refusal: Callable[[dict], str]) -> Callable[[], None]:
    """Claim `path` for as long as this process works in its folder, touched every HEARTBEAT_S by a daemon thread;
    a live claim is a UserError (`refusal` of its pid and host), a stale one (process gone from this machine, or
    heartbeat stopped) is taken over. Returns the release, which removes the claim if it is still this process's."""
    text = claim_text()
    if not create_exclusively(path, text):
        seen = read_claim(path)
        held = _held_by(path, seen)
        if held and not (claim_is_stale(held) or heartbeat_stopped(path)):
            raise UserError(refusal(held))
        log.info("%s: taking over from a process that stopped (pid %s on %s)", path.parent, held.get("pid"),
                 held.get("host"))
        if not take_over(path, seen, text):
            raise UserError(refusal(_held_by(path)))  # the process that took it over first
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(path)
            except OSError:  # the folder went (a set-up stopped and removed what it made)
                return

    threading.Thread(target=beat, name=f"claim {path.name}", daemon=True).start()

    def release() -> None:
        stop.set()
        if _held_by(path) == this_process():
            path.unlink(missing_ok=True)
    return release
