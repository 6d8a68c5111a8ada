"""The Optuna review store: every evaluation of every searcher becomes one trial of the run's study.

Only the driver writes. Per-unit ratios are the params; (accuracy, MACs ratio) are the two
objectives, so optuna-dashboard draws the Pareto front; reward, searcher, episode, node id and
timings are user attributes. Each evaluation carries an id (its Tune trial's creation index) and is
written at most once, which is what makes a resumed search free of duplicates.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import pandas as pd
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from pruning.errors import UserError
from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph

log = logging.getLogger("prunepilot")
RATIO_DISTRIBUTION = optuna.distributions.FloatDistribution(0.0, 1.0)
OBJECTIVES = ["accuracy", "macs_ratio"]
T = TypeVar("T")
RATIO_PREFIX = "ratio:"
"""Column prefix of each unit's ratio in an evaluations table (`OptunaRecorder.frame`, evaluations.csv)."""


def ratio_column(unit: str) -> str:
    return f"{RATIO_PREFIX}{unit}"


def completed_evaluations(path: str | Path, columns: list[str], expected: str) -> pd.DataFrame:
    """The completed rows of an evaluations CSV, which must hold `columns`; a bad file is a UserError naming it and
    `expected` (what it should have been)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}); expected {expected}") from None
    missing = [c for c in ("state", *columns) if c not in table.columns]
    if missing:
        raise UserError(f"{path}: lacks the column(s) {missing[:3]}; expected {expected}")
    return table[table["state"] == "COMPLETE"]


def policy_of_row(row: pd.Series | dict, graph: UnitGraph, **meta: Any) -> SparsityPolicy:
    """The policy one row of an evaluations table scored (its ratio columns, in `graph`'s unit order)."""
    return SparsityPolicy.from_ratios(graph, [float(row[ratio_column(u.name)]) for u in graph.units], **meta)


# what a process sees when another one is creating the same fresh storage's tables at that moment
SCHEMA_RACE_MESSAGES = ("already exists", "UNIQUE constraint failed: alembic_version", "database is locked")


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


def pinned_storage(storage: str) -> str:
    """A new search's --storage as search.json keeps it: a relative SQLite path made absolute (a resume or a review
    from another working folder opened, and created, another file), an in-memory one refused (it keeps nothing to
    review or resume). Other URLs are kept as given."""
    try:
        url = make_url(storage)
    except sqlalchemy.exc.ArgumentError:
        return storage  # not a URL: opening it says so
    if url.get_backend_name() != "sqlite":
        return storage
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise UserError(f"--storage: {storage} is an in-memory SQLite database, which keeps nothing to review or "
                        "resume; give a file (sqlite:///path/study.db), or leave --storage out for <run>/study.db")
    if database.startswith("file:") or Path(database).is_absolute():
        return storage
    return url.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def recorded_run_folder(state: dict) -> Path | None:
    """The folder a search state was written in: recorded since it is kept, else read off the default locations
    (`<run>/study.db` and `<run>/ray`) when both were used; None where the search kept its study elsewhere."""
    if isinstance(state.get("run_folder"), str):
        return Path(state["run_folder"])
    storage_path = state.get("storage_path")
    if isinstance(storage_path, str) and Path(storage_path).name == "ray":
        folder = Path(storage_path).parent
        if state.get("storage") == sqlite_url(str(folder / "study.db")):
            return folder
    return None


def storage_after_move(run: Path, state: dict) -> object:
    """The storage recorded in `run`'s search.json, found inside the folder where it is now when it was the default
    `<run>/study.db` and the folder was moved or copied (search.json names absolute paths)."""
    before, storage = recorded_run_folder(state), state.get("storage")
    if before is None or before == run.resolve() or storage != sqlite_url(str(before / "study.db")):
        return storage
    return sqlite_url(str(run.resolve() / "study.db"))


def retry_schema_race(open_storage: Callable[[], T], attempts: int = 8, pause_s: float = 0.25) -> T:
    """Run `open_storage`, again while another process is creating the same storage's schema.

    Optuna creates its tables on the first open of a storage. Two processes opening one fresh
    SQLite file at once (a driver and a dashboard started early, or a test polling the file) make
    one of them fail with "table ... already exists" or a UNIQUE error on alembic_version. The
    schema is whole a moment later, so the same open then succeeds. Any other error is raised at once.
    """
    for attempt in range(attempts - 1):
        try:
            return open_storage()
        except sqlalchemy.exc.DBAPIError as exc:
            if not any(m in str(exc) for m in SCHEMA_RACE_MESSAGES):
                raise
            time.sleep(pause_s * (attempt + 1))
    return open_storage()


def shown_storage(storage: str) -> str:
    """A storage URL as messages, logs and reports show it, its password masked (`postgresql://user:***@db/x`): a
    report is shared and committed, a job's log is kept by its scheduler. search.json keeps the URL as given, which a
    resume and the dashboard open."""
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return storage


def storage_error(storage: str, exc: Exception) -> str:
    """`Type: message` of an exception from opening `storage`, with the URL in it (SQLAlchemy quotes it) masked."""
    return f"{type(exc).__name__}: {str(exc).replace(storage, shown_storage(storage))}"


class OptunaRecorder:
    """Writes evaluations into an Optuna study (SQLite file or any SQLAlchemy URL)."""

    def __init__(self, storage: str, study_name: str, unit_names: list[str], new: bool = False):
        """Open `study_name` in `storage`; with `new`, a study of its own: `study_name`, or `study_name-2`, -3, ...
        where a storage shared by many searches (a cluster's PostgreSQL) already holds one by that name. A new
        search used to load that study, and its evaluations, whose ids the other search had used, were dropped."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study = retry_schema_race(lambda: self._open(storage, study_name, new))
        except Exception as exc:  # bad URL, unreachable server, missing driver
            hint = ("; install the PostgreSQL driver with: pip install 'prunepilot[postgres]'"
                    if isinstance(exc, ImportError) and storage.startswith("postgresql") else "")
            raise UserError(f"--storage: cannot open Optuna storage {shown_storage(storage)!r} "
                            f"({storage_error(storage, exc)}){hint}") from None
        if self.study.metric_names is None:
            with warnings.catch_warnings():  # set_metric_names is marked experimental; the dashboard reads it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(OBJECTIVES)
        self.storage, self.unit_names = storage, unit_names
        self.seen = {t.user_attrs.get("evaluation_id") for t in self.study.get_trials(deepcopy=False)}

    @staticmethod
    def _open(storage: str, study_name: str, new: bool) -> optuna.Study:
        directions = ["maximize", "minimize"]
        if not new:
            return optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                       directions=directions)
        for number in range(1, 10_000):
            name = study_name if number == 1 else f"{study_name}-{number}"
            try:  # create, not look first: two searches starting at once cannot both take one name
                return optuna.create_study(storage=storage, study_name=name, directions=directions)
            except optuna.exceptions.DuplicatedStudyError:
                continue
        raise UserError(f"--storage: {shown_storage(storage)} holds studies {study_name} to {study_name}-9999; give "
                        "another name")

    def record(self, evaluation_id: str, ratios: dict[str, float], accuracy: float | None, macs_ratio: float | None,
               attrs: dict[str, Any], failed: bool = False) -> bool:
        """Add one evaluation; False (and nothing written) when this id is already in the study."""
        if evaluation_id in self.seen:
            return False
        ok = not failed and accuracy is not None and macs_ratio is not None and math.isfinite(accuracy)
        trial = optuna.trial.create_trial(
            params={name: float(ratios[name]) for name in self.unit_names if name in ratios},
            distributions={name: RATIO_DISTRIBUTION for name in self.unit_names if name in ratios},
            values=[float(accuracy), float(macs_ratio)] if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            user_attrs={"evaluation_id": evaluation_id, **{k: _plain(v) for k, v in attrs.items()}},
        )
        self.study.add_trial(trial)
        self.seen.add(evaluation_id)
        return True

    def frame(self) -> pd.DataFrame:
        """One row per recorded evaluation, in the order they were written."""
        rows = []
        for trial in self.study.get_trials(deepcopy=False):
            row = {"evaluation": trial.number, "state": trial.state.name, **trial.user_attrs}
            if trial.values:
                row.update(accuracy=trial.values[0], macs_ratio=trial.values[1])
            row.update({ratio_column(k): v for k, v in trial.params.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def _plain(value: Any) -> Any:
    """Optuna user attributes must be JSON-serialisable."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
