"""`prunepilot dashboard RUN`: optuna-dashboard on a run's study, bound to 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pruning.checkpoint import read_json_object
from pruning.errors import UserError
from search.folder_claim import SETUP_CLAIM_KEY
from search.review import retry_schema_race, shown_storage, storage_after_move, storage_error

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def storage_of(run: Path, override: str | None = None) -> str:
    """The Optuna storage URL recorded for `run` (or `override`)."""
    if override:
        return override
    state = run / "search.json"
    if not state.is_file():
        raise UserError(f"{run}: not a search run folder (no search.json); give the folder `prunepilot search` wrote")
    kept = read_json_object(state, "a search's state")
    if SETUP_CLAIM_KEY in kept:  # claim_run_folder's: the search has not opened its study yet
        raise UserError(f"{run}: its search is still setting up (or was stopped then), before it recorded anything; "
                        "review it once its search runs")
    storage = storage_after_move(run, kept)
    if not isinstance(storage, str):
        raise UserError(f"{state}: field `storage`: expected the search's storage URL, got {storage!r}")
    return storage


def check_sqlite_file(storage: str) -> None:
    """SQLAlchemy creates a missing SQLite file, so a mistyped or moved study would open as an empty dashboard
    and leave an empty database behind; reviewing never creates a storage."""
    try:
        url = make_url(storage)
    except ArgumentError:
        return  # not a URL at all: opening it reports the error
    database = url.database
    if url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:") and not Path(database).is_file():
        raise UserError(f"{storage}: SQLite file {database} not found (the dashboard reviews an existing search's "
                        "storage; it does not create one)")


def check_can_listen(host: str, port: int) -> None:
    """Bind once as the dashboard's server will (address reuse on), so a taken port or an unknown host is a
    message before the 'open http://...' line, not a traceback after it."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                        "choose another --port, or stop what uses it") from None


def dashboard_job(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    run = Path(args.run)
    storage = storage_of(run, args.storage)
    check_sqlite_file(storage)
    try:
        studies = retry_schema_race(lambda: optuna.get_all_study_summaries(storage))
    except Exception as exc:
        raise UserError(f"{shown_storage(storage)}: cannot open Optuna storage ({storage_error(storage, exc)})") \
            from None
    check_can_listen(args.host, args.port)
    if args.host not in LOOPBACK:
        log.warning("optuna-dashboard has no login: on %s anyone who can reach this machine on port %d can read the "
                    "study and edit its notes; 127.0.0.1 (the default) with an SSH tunnel keeps it to you",
                    args.host, args.port)
    names = ", ".join(s.study_name for s in studies) or "none yet"
    print(f"optuna-dashboard on {shown_storage(storage)} (studies: {names})")
    print(f"open http://{args.host}:{args.port}/dashboard/  (Ctrl-C to stop)", flush=True)
    run_server(storage, host=args.host, port=args.port)
    return 0
