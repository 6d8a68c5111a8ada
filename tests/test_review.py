"""The Optuna review store under concurrent first use of one fresh SQLite file."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import optuna
import pytest

from pruning.errors import UserError
from search.review import OptunaRecorder, sqlite_url

OPENERS = 6


def _open_when_all_ready(url: str, barrier: mp.synchronize.Barrier, outcomes: mp.Queue) -> None:
    barrier.wait()
    try:
        OptunaRecorder(url, "search", ["conv1"])
        outcomes.put("ok")
    except Exception as exc:  # noqa: BLE001 - the test reports what each process saw
        outcomes.put(f"{type(exc).__name__}: {exc}"[:300])


@pytest.mark.parametrize("round_", range(3))
def test_processes_opening_one_fresh_sqlite_study_at_once_all_succeed(tmp_path: Path, round_: int) -> None:
    """Optuna alone fails here in roughly one opener of three (a table or alembic row created twice)."""
    url = sqlite_url(str(tmp_path / "study.db"))
    ctx = mp.get_context("fork")
    barrier, outcomes = ctx.Barrier(OPENERS), ctx.Queue()
    workers = [ctx.Process(target=_open_when_all_ready, args=(url, barrier, outcomes)) for _ in range(OPENERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    seen = [outcomes.get(timeout=5) for _ in workers]
    assert seen == ["ok"] * OPENERS, seen
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["search"]


def test_a_storage_that_cannot_open_is_a_user_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--storage: cannot open Optuna storage"):
        OptunaRecorder(sqlite_url(str(tmp_path / "no" / "such" / "dir" / "study.db")), "search", ["conv1"])


def test_the_progress_line_counts_each_recorded_evaluation_once(tmp_path: Path) -> None:
    """It starts from the evaluations a resumed search recorded before, and a repeated id does not move it."""
    from search.recording import EvaluationSink

    url = sqlite_url(str(tmp_path / "study.db"))
    result = {"ratios": {"conv1": 0.5}, "accuracy": 0.9, "macs_ratio": 0.5, "reward": 0.4}
    sink = EvaluationSink(url, "search", ["conv1"], "ddpg", total=5)
    for n in range(3):
        sink(f"local-{n}", {**result, "reward": 0.1 * n})
        assert sink._bar.n == n + 1
    sink("local-2", result)  # already recorded
    assert sink._bar.n == 3 and sink.best == pytest.approx(0.2)
    sink.close()
    resumed = EvaluationSink(url, "search", ["conv1"], "ddpg", total=5)
    resumed("local-3", result, failed=True)
    assert resumed._bar.n == 4 and resumed.best is None
    resumed.close()


def test_a_postgresql_url_without_its_driver_says_how_to_install_one():
    """pg8000 is a PostgreSQL driver PrunePilot does not install: the message names the extra that brings one."""
    with pytest.raises(UserError, match=r"ImportError.*pip install 'prunepilot\[postgres\]'"):
        OptunaRecorder("postgresql+pg8000://user@127.0.0.1:1/db", "search", ["conv1"])


def test_the_dashboard_reads_a_moved_or_copied_run_folder_where_it_is_now(tmp_path: Path) -> None:
    """search.json names absolute paths; read as they were, a copied folder showed the original's study, and a moved
    one made an empty SQLite file at the old path and showed no study at all."""
    import json

    from search.dashboard import check_sqlite_file, storage_of

    old, new = tmp_path / "old", tmp_path / "new"
    new.mkdir()
    defaults = {"storage": sqlite_url(str(old / "study.db")), "storage_path": str(old / "ray")}
    elsewhere = sqlite_url(str(tmp_path / "shared.db"))
    for state, expected in ((dict(defaults, run_folder=str(old)), sqlite_url(str(new.resolve() / "study.db"))),
                            (defaults, sqlite_url(str(new.resolve() / "study.db"))),  # written before run_folder was kept
                            (dict(defaults, storage=elsewhere), elsewhere)):  # a --storage of its own stays
        (new / "search.json").write_text(json.dumps(state))
        assert storage_of(new) == expected
    with pytest.raises(UserError, match=r"shared.db not found \(the dashboard reviews an existing search's storage"):
        check_sqlite_file(elsewhere)
    assert not (tmp_path / "shared.db").exists()  # nothing created by looking
