"""One process at a time in a results folder: a claim file, created whole and exclusively, names the process.

Two jobs started into one folder (a search submitted twice into its default results/<name>/; a bench started again
while the first still runs, which deletes and restarts the runs it finds unfinished) each passed their 'is it taken'
checks and wrote into, or deleted, the other's files.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pruning.checkpoint import atomic_write_text


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


def take_over(path: Path, text: str) -> None:
    """Replace a stale claim with this process's."""
    atomic_write_text(path, text)


def claim_text(key: str | None = None) -> str:
    """This process's claim as JSON, under `key` when the claim file also holds other state (search.json)."""
    return json.dumps({key: this_process()} if key else this_process())
