"""The search on a real Ray cluster, recorded in a real Optuna study (SQLite, or a PostgreSQL server started here),
reviewed in the real dashboard.

Each test runs `prunepilot search` as a user would (a subprocess), against a two-node cluster
started with `ray start` on loopback, or embedded Ray; faults are real: SIGKILL of a Ray worker
process mid-search, and SIGKILL of the driver followed by `--resume`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
RAY = str(Path(sys.executable).parent / "ray")
CONFIG = """
model: {name: "tests.fixtures:tiny_cnn", kwargs: {width: 16}}
data: {name: synthetic, options: {size: 16, n_train: 600, n_test: 100}}
train: {epochs: 2, batch_size: 64, lr: 0.05, augment: false}
prune: {importance: l1}
eval: {bn_batches: 2, bn_batch_size: 64}
env: {macs_target: 0.6, budget: cap}  # exactly on target, this CNN has too few policies for 16 new evaluations
agent: {warmup_episodes: 3, net_arch: [32, 32], batch_size: 8}
search: {searcher: ddpg, evaluations: 8, concurrency: 2, backend: ray, final_pass: false}
threads: 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """Environment for every Ray process of these tests: token auth, the project importable, a private cache."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PYTHONPATH": str(ROOT), "PRUNEPILOT_CACHE": str(tmp_path_factory.mktemp("cache")),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(CONFIG)
    return path


# evaluations of about a second (instead of ~0.1 s): several are in flight at once and a kill lands mid-search
HEAVIER = ["model.kwargs={width: 64}", "data.options={size: 28, n_train: 3000, n_test: 100}", "eval.bn_batches=20"]
# a latency-aware reward (a table measured by the driver; channels in steps of 4 keep it to seconds)
LATENCY = ["prune.round_to=4", "env.latency_weight=1", "env.latency_batch=8"]
# the fault tests run three times as many: once trials start within a second (the evaluator is shipped ready),
# 8, and under a loaded machine even 16, can all finish before the test has seen two recorded and picked its moment
FAULT_EVALUATIONS = 24


def search_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", "search", str(config), "--out", str(out), "--quiet", *extra]


def study_frame(out: Path, storage: str | None = None) -> pd.DataFrame:
    study = optuna.load_study(study_name="search", storage=storage or f"sqlite:///{out / 'study.db'}")
    return pd.DataFrame([{"state": t.state.name, **t.user_attrs, **{f"ratio:{k}": v for k, v in t.params.items()}}
                         for t in study.get_trials(deepcopy=False)])


def recorded(out: Path) -> int:
    """Trials in the run's study, read without writing: opening it with Optuna would create the
    schema, a second writer racing the driver's own creation of it."""
    if not (out / "study.db").exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:  # the driver may be creating the study right now
        return 0


def assert_complete_once(out: Path, evaluations: int) -> pd.DataFrame:
    frame = study_frame(out)
    assert len(frame) == evaluations, frame
    assert frame["evaluation_id"].is_unique
    assert (frame["state"] == "COMPLETE").all()
    table = pd.read_csv(out / "evaluations.csv")
    assert len(table) == evaluations and table["evaluation_id"].is_unique
    return frame


@pytest.fixture
def two_node_cluster(ray_env, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                   env=ray_env, check=True, capture_output=True, timeout=120)
    subprocess.run([RAY, "start", f"--address={address}", *common], env=ray_env, check=True, capture_output=True,
                   timeout=120)
    count_alive = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
                   "print(sum(n['Alive'] for n in ray.nodes()))")

    def both_nodes_alive() -> bool:  # `ray start` can return before the node has registered with the head
        out = subprocess.run([sys.executable, "-c", count_alive], env=ray_env, capture_output=True, text=True,
                             timeout=120)
        return out.stdout.strip().endswith("2")

    try:
        wait_for(both_nodes_alive, 120, "both Ray nodes to register")
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ray_env, capture_output=True, timeout=120)


def test_search_runs_trials_on_both_nodes_of_a_cluster(two_node_cluster, ray_env, config, tmp_path):
    out = tmp_path / "run"
    # first without the cluster's token, as a user who forgot it: a message with the fix, and no run folder
    tokenless = {k: v for k, v in ray_env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    refused = subprocess.run(search_cmd(config, out, "--address", two_node_cluster), env=tokenless, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "this shell needs RAY_AUTH_MODE=token and the cluster's token" in refused.stderr
    assert not out.exists()
    # trials that no node can hold: a cluster may still grow, so the search says so and waits (Tune alone only
    # warned a minute later); Ctrl-C then stops it
    log = tmp_path / "waiting.log"
    with log.open("w") as stderr:
        waiting = subprocess.Popen(search_cmd(config, tmp_path / "waiting", "--address", two_node_cluster,
                                              "search.gpus_per_trial=64"), env=ray_env, cwd=tmp_path, stderr=stderr)
        try:
            wait_for(lambda: "the search waits until such a node joins" in log.read_text(), 120, "the warning",
                     lambda: log.read_text()[-3000:])
            assert ("search.gpus_per_trial: a trial asks for 1 CPU(s) and 64 GPU(s), but the cluster's 2 node(s) have "
                    "at most 1 CPU(s) and 0 GPU(s) each") in log.read_text()
            waiting.send_signal(signal.SIGINT)
            assert waiting.wait(timeout=120) == 130
        finally:
            waiting.kill()
    # evaluations long enough (~1 s) that two are in flight: with 0.1 s trials one reused actor could run them all
    screened = ["agent.candidates=4", "agent.screen_after=3"]  # model-based exploration through the Tune searcher
    result = subprocess.run(search_cmd(config, out, "--address", two_node_cluster, *HEAVIER, *LATENCY, *screened),
                            env=ray_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = assert_complete_once(out, 8)
    assert frame["node_id"].nunique() == 2  # nodes share 127.0.0.1: told apart by node id
    assert frame["searcher"].eq("ddpg").all() and frame["reward"].notna().all()
    # the driver's latency table reached the workers of both nodes: each trial priced its policy with it
    table = pd.read_csv(out / "evaluations.csv")
    assert table["latency_ratio"].notna().all()
    assert np.allclose(table["reward"], table["accuracy"] - 0.5 * table["macs_ratio"] - table["latency_ratio"])
    # the first 4 trials go out before 3 policies are scored, unscreened; from the 5th on (2 in flight, so at least
    # 3 scored) each carries the reward model's prediction beside its result
    by_creation = table.set_index(table["evaluation_id"].str.lstrip("#").astype(int)).sort_index()
    assert by_creation["predicted_reward"].iloc[:4].isna().all() and by_creation["predicted_reward"].iloc[4:].notna().all()
    assert (by_creation["candidates"].iloc[4:] >= 1).all()
    assert (out / "agent.zip").is_file() and (out / "best_policy.json").is_file()
    assert "2 Ray node(s)" in (out / "report.md").read_text()


def test_a_search_runs_embedded_beside_a_cluster_and_joins_the_one_ray_address_names(two_node_cluster, ray_env,
                                                                                     config, tmp_path):
    """`ray.init()` with no address joined any cluster `ray start` had left on this machine, while the search went on
    as if embedded (its checks and messages); and RAY_ADDRESS (Ray's own convention, set inside a Ray Job) joined a
    cluster that the search's checks and messages never named."""
    nodes = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{two_node_cluster}', "
                            "logging_level='ERROR'); print(' '.join(n['NodeID'] for n in ray.nodes()))"],
                           env=ray_env, capture_output=True, text=True, timeout=120)
    cluster = set(nodes.stdout.split())
    assert len(cluster) == 2, nodes.stderr[-2000:]

    def search(name: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(search_cmd(config, tmp_path / name, *extra), env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    embedded = search("embedded", ray_env)
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert not set(pd.read_csv(tmp_path / "embedded" / "evaluations.csv")["node_id"]) & cluster
    joined = search("joined", {**ray_env, "RAY_ADDRESS": two_node_cluster})
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert f"joining the Ray cluster at RAY_ADDRESS={two_node_cluster}" in joined.stderr
    assert set(pd.read_csv(tmp_path / "joined" / "evaluations.csv")["node_id"]) <= cluster
    local = search("local", {**ray_env, "RAY_ADDRESS": two_node_cluster}, "--backend", "local")
    assert local.returncode == 0 and "RAY_ADDRESS" not in local.stderr, local.stderr[-3000:]
    port = free_port()  # nothing listens there
    refused = search("refused", {**ray_env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"RAY_ADDRESS: nothing answers at 127.0.0.1:{port}" in refused.stderr and not (tmp_path / "refused").exists()


def live_worker_pids(out: Path) -> list[int]:
    """Ray worker processes that have run trials of this search (each evaluation records its pid)."""
    if recorded(out) == 0:
        return []
    return [int(pid) for pid in study_frame(out)["pid"].dropna().unique() if Path(f"/proc/{int(pid)}").exists()]


def busy(pid: int) -> bool:
    """True when the process is burning CPU right now (evaluating), not idling between trials."""
    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    try:
        before = cpu_ticks()
        time.sleep(0.1)
        return cpu_ticks() - before >= 3
    except (OSError, IndexError):
        return False


def wait_for(predicate, timeout: float, what: str, details=lambda: "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}{details()}")


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_ray_starts_stops_once_it_has_started(ray_env, config, tmp_path, stop):
    """A Ctrl-C inside `ray.init` was dropped by Python's at-fork hooks as Ray forked its processes (the search then
    ran to the end with exit code 0), or left Ray's core worker half-made, and the interpreter's exit segfaulted
    (exit code 139). A SIGTERM met Ray's own driver handler: exit code 15 and no word, or dropped the same way."""
    out, log = tmp_path / "run", tmp_path / "driver.log"
    with log.open("w") as stderr:
        driver = subprocess.Popen(search_cmd(config, out), env=ray_env, cwd=tmp_path, stderr=stderr)
        try:
            wait_for(lambda: "starting Ray embedded" in log.read_text(), 120, "Ray's start",
                     lambda: log.read_text()[-3000:])
            driver.send_signal(getattr(signal, stop))
            assert driver.wait(timeout=120) == {"SIGINT": 130, "SIGTERM": 143}[stop], log.read_text()[-3000:]
        finally:
            driver.kill()
    said = log.read_text()
    assert "stopping once Ray's start is done (Ctrl-C again stops at once)" in said, said[-3000:]
    assert "Exception ignored" not in said
    assert {"SIGINT": "prunepilot search: interrupted", "SIGTERM": "prunepilot search: terminated (SIGTERM)"}[stop] in said
    assert not out.exists()


def test_a_killed_worker_is_retried_and_nothing_is_lost(ray_env, config, tmp_path):
    out = tmp_path / "run"
    # ~1 s evaluations, and the kill lands while the worker computes: Tune 2.60 retries a trial that was RUNNING
    # when its worker died, not one still PENDING on a reused actor that died between two trials
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(search_cmd(config, out, *HEAVIER, *LATENCY, f"search.evaluations={FAULT_EVALUATIONS}"),
                                  env=ray_env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)

    def busy_workers() -> list[int]:
        if driver.poll() is not None:
            raise AssertionError(f"the search ended (exit {driver.returncode}, {recorded(out)} recorded) before a "
                                 f"worker could be killed mid-trial; its output:\n{log.read_text()[-3000:]}")
        return [pid for pid in live_worker_pids(out) if busy(pid)] if recorded(out) >= 2 else []

    try:
        candidates: list[int] = []
        wait_for(lambda: candidates.extend(busy_workers()) or candidates, 300,
                 "two evaluations and a worker in the middle of a trial")
        victim = candidates[0]
        os.kill(victim, signal.SIGKILL)  # the actor reused for the next trials dies, mid-trial or between two
        before_kill = recorded(out)
        driver.wait(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, log.read_text()[-3000:]
    frame = study_frame(out)
    complete = frame[frame["state"] == "COMPLETE"]
    assert len(complete) == FAULT_EVALUATIONS and complete["evaluation_id"].is_unique, frame
    # Tune retries a trial that was running when its worker died; one whose reused actor died between two trials
    # errors for good, is recorded as FAIL, and the searcher sends its policy again: either way nothing is lost
    ratios = [c for c in frame if c.startswith("ratio:")]
    scored = {tuple(row) for row in complete[ratios].round(6).to_numpy()}
    failed = frame[frame["state"] != "COMPLETE"]
    assert all(tuple(row) in scored for row in failed[ratios].round(6).to_numpy()), frame
    assert victim not in set(complete["pid"].iloc[before_kill + 1:])  # (one result may have been in flight)
    failures = list((out / "ray").rglob("error.txt"))
    assert failures, "Tune recorded no failed attempt: the kill was not noticed"


def test_ctrl_c_in_the_final_pass_keeps_the_search_and_resume_runs_only_the_pass(ray_env, config, tmp_path):
    """The search is done and recorded; Ctrl-C in the (long) final pass said only 'interrupted'."""
    out = tmp_path / "run"
    long_pass = ["search.final_pass=true", "prune.final_epochs=150", "search.evaluations=4"]  # its last step ~20 s
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(search_cmd(config, out, *long_pass), env=ray_env, cwd=tmp_path,
                                  start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "step 1/" in log.read_text() or driver.poll() is not None, 300, "the final pass's first step",
                 lambda: log.read_text()[-3000:])
        os.kill(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    said = log.read_text()
    assert (f"final pass stopped; the search's 4 evaluations and its best policy are kept in {out}; run the pass "
            f"again with: prunepilot search {config} --resume {out}") in said
    assert (out / "best_policy.json").is_file() and not (out / "report.md").exists()
    copy = tmp_path / "copy"  # Tune's saved state names `out`: resuming a copy continued, and recorded into, `out`
    shutil.copytree(out, copy)
    refused = subprocess.run(search_cmd(config, tmp_path / "ignored", "--resume", str(copy)), env=ray_env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"--resume: {copy} was started as {out.resolve()} (which is still there)" in refused.stderr
    result = subprocess.run(search_cmd(config, tmp_path / "ignored", "--resume", str(out)), env=ray_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete_once(out, 4)  # no evaluation run again
    assert (out / "report.md").is_file() and (out / "model.pt").is_file()
    # a finished search resumed again (a scheduler's requeued job, say) ran the whole final pass once more
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    again = subprocess.run(search_cmd(config, tmp_path / "ignored", "--resume", str(out)), env=ray_env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the search and its final pass are finished; nothing to resume" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_a_killed_driver_resumes_without_loss_or_duplicates(ray_env, config, tmp_path, stop):
    """SIGKILL: a crash. SIGINT: Ctrl-C, which Tune catches and used to report as a finished search (then the final
    pass ran on half of it); now the job stops with exit code 130 and says how to resume. SIGTERM (a batch scheduler's
    time limit, `kill`): it ended the driver at once after Ray's C++ stack dump; now it stops as Ctrl-C does (143)."""
    out = tmp_path / "run"
    # ~1 s evaluations, so that the kill lands while the search still has evaluations to run
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(search_cmd(config, out, *HEAVIER, *LATENCY, f"search.evaluations={FAULT_EVALUATIONS}"),
                                  env=ray_env, cwd=tmp_path, start_new_session=True, stdout=sink,
                                  stderr=subprocess.STDOUT)

    def three_recorded() -> bool:
        if driver.poll() is not None:  # fail at once, with the driver's words, rather than after the timeout
            raise AssertionError(f"the driver ended (exit {driver.returncode}) before three evaluations were "
                                 f"recorded:\n{log.read_text()[-3000:]}")
        return recorded(out) >= 3

    try:
        wait_for(three_recorded, 300, "three recorded evaluations",
                 lambda: f" ({recorded(out)} recorded); the driver's output:\n{log.read_text()[-3000:]}")
        if stop == "SIGINT":  # a --resume while the search still ran continued its experiment and study beside it
            beside = subprocess.run(search_cmd(config, tmp_path / "ignored", "--resume", str(out), *HEAVIER, *LATENCY,
                                               f"search.evaluations={FAULT_EVALUATIONS}"), env=ray_env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
            assert beside.returncode == 2 and "Traceback" not in beside.stderr, beside.stderr[-3000:]
            assert f"{out}: its search is running (pid {driver.pid} on " in beside.stderr
            assert driver.poll() is None and (out / ".search.claim").is_file()
    finally:
        if stop != "SIGKILL":
            os.kill(driver.pid, getattr(signal, stop))  # Ctrl-C or a scheduler's SIGTERM reaches the driver, mid-search
            stopped = driver.wait(timeout=120)
        with contextlib.suppress(ProcessLookupError):  # after SIGINT the whole group may have ended already
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started, mid-search
        driver.wait()
    if stop != "SIGKILL":
        said = log.read_text()
        assert stopped == {"SIGINT": 130, "SIGTERM": 143}[stop], said[-3000:]
        assert f"--resume {out}" in said and "SIGTERM received" not in said
        assert {"SIGINT": "prunepilot search: interrupted", "SIGTERM": "prunepilot search: terminated (SIGTERM)"}[stop] in said
        assert not (out / "report.md").exists() and not (out / "evaluations.csv").exists()  # no final pass
    partial = recorded(out)
    assert 3 <= partial < FAULT_EVALUATIONS
    # a stopped driver releases its claim; a killed one leaves it to the resume, which sees its process gone
    assert (out / ".search.claim").is_file() == (stop == "SIGKILL")
    table = (out / "latency_table.json").read_bytes()
    result = subprocess.run(search_cmd(config, tmp_path / "ignored", "--resume", str(out), *HEAVIER, *LATENCY,
                                       f"search.evaluations={FAULT_EVALUATIONS}"), env=ray_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = assert_complete_once(out, FAULT_EVALUATIONS)
    assert not (out / ".search.claim").exists()
    # the resumed search kept its stored latency overrides and priced its policies with the same table, not a new one
    assert (out / "latency_table.json").read_bytes() == table and frame["latency_ratio"].notna().all()


def test_searches_sharing_one_storage_path_keep_a_tune_experiment_each(ray_env, config, tmp_path):
    """A cluster's jobs share --storage-path: under one experiment name the second search wrote into the first's
    experiment, and a resume of the first would have restored the second."""
    shared = tmp_path / "shared_ray"
    runs = [tmp_path / "a", tmp_path / "b"]
    for seed, out in enumerate(runs):
        subprocess.run(search_cmd(config, out, "--storage-path", str(shared), "search.evaluations=3",
                                  f"search.seed={seed}"), env=ray_env, cwd=tmp_path, check=True, capture_output=True,
                       timeout=300)
    names = [json.loads((out / "search.json").read_text())["experiment"] for out in runs]
    assert names[0] != names[1] and sorted(p.name for p in shared.iterdir()) == sorted(names)
    assert all(name.startswith(f"{out.name}-") for name, out in zip(names, runs))
    result = subprocess.run(search_cmd(config, tmp_path / "ignored", "--resume", str(runs[0])), env=ray_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # its own experiment, done
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete_once(runs[0], 3)


def test_dashboard_shows_the_study_in_headless_chromium(ray_env, config, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it where apt is available)")
    out = tmp_path / "run"
    subprocess.run(search_cmd(config, out, "--backend", "local", "search.evaluations=5"), env=ray_env, cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", str(out), "--port", str(port)],
                              env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/dashboard/studies/1"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1400,1000", "--virtual-time-budget=15000"]
    try:
        def serving() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(serving, 60, "optuna-dashboard to listen")
        dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'c1'}", "--dump-dom", url], capture_output=True,
                             text=True, timeout=120).stdout
        shot = tmp_path / "dashboard.png"
        subprocess.run([*flags, f"--user-data-dir={tmp_path / 'c2'}", f"--screenshot={shot}", url],
                       capture_output=True, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "search" in dom and "Pareto Front" in dom and "accuracy" in dom and "macs_ratio" in dom
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_a_trial_evaluates_on_the_gpu_ray_gave_it_not_on_the_drivers_device():
    """The driver's device went to every trial: 'cuda' to workers Ray gave no GPU (it hides them: every trial failed),
    'cpu' to workers it gave one, 'cuda:1' to a worker that sees its one GPU as cuda:0."""
    from search.ray_backend import trial_device

    assert [trial_device(device, 0.0) for device in ("auto", "cuda", "cuda:1", "cpu")] == ["cpu"] * 4
    assert [trial_device(device, 0.5) for device in ("auto", "cuda", "cuda:1")] == ["cuda"] * 3
    assert trial_device("cpu", 1.0) == "cpu"  # asked for in so many words


def test_an_evaluation_is_keyed_by_its_creation_index_not_its_trial_id():
    from types import SimpleNamespace

    from search.ray_backend import evaluation_key

    first = SimpleNamespace(trial_id="a1b2c3d4", experiment_tag="7_ratios=0.5")
    recreated = SimpleNamespace(trial_id="e5f6a7b8", experiment_tag="7_ratios=0.3")  # after a stale resume
    assert evaluation_key(first) == evaluation_key(recreated) == "#7"
    assert evaluation_key(SimpleNamespace(trial_id="a1b2c3d4", experiment_tag="")) == "a1b2c3d4"


def postgres_tools() -> tuple[str, str] | None:
    """initdb and pg_ctl from PATH or Debian's postgresql package (which keeps them off PATH)."""
    for folder in [None, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        initdb, pg_ctl = (shutil.which(name, path=None if folder is None else str(folder)) for name in ("initdb", "pg_ctl"))
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL server on loopback, in a throw-away cluster; torn down after the module.

    The server refuses to run as root, so under root (CI) it runs as `nobody` in a folder handed to it.
    """
    tools = postgres_tools()
    if tools is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (scripts/setup.sh installs Debian's postgresql)")
    initdb, pg_ctl = tools
    folder = Path(tempfile.mkdtemp(prefix="prunepilot-pg-"))
    as_server = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_server:
        shutil.chown(folder, user="nobody")
    port = free_port()
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run([*as_server, initdb, "-D", str(folder / "data"), "-U", "prunepilot", "--auth=trust", "-E", "UTF8"],
                   **run)
    subprocess.run([*as_server, pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "start",
                    "-o", f"-h 127.0.0.1 -p {port} -k {folder}"], **run)
    try:
        yield f"postgresql://prunepilot@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_server, pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_ray_search_records_into_postgresql_and_the_dashboard_reads_it_there(ray_env, config, tmp_path,
                                                                               postgres_url):
    """The cluster set-up the README shows: `--storage postgresql://...`, nothing in a local study.db. A password in
    the URL (the server trusts loopback, so any password opens it) was printed into the log and the shared report."""
    out = tmp_path / "run"
    with_password = postgres_url.replace("prunepilot@", "prunepilot:s3cr3t-pw@")
    result = subprocess.run(search_cmd(config, out, "--storage", with_password), env=ray_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "study.db").exists()
    report = (out / "report.md").read_text()
    assert "s3cr3t-pw" not in report + result.stdout + result.stderr and "prunepilot:***@127.0.0.1" in report
    frame = study_frame(out, postgres_url)
    table = pd.read_csv(out / "evaluations.csv")
    assert len(frame) == len(table) == 8 and (frame["state"] == "COMPLETE").all()
    assert sorted(frame["evaluation_id"]) == sorted(table["evaluation_id"])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", str(out), "--port", str(port)],
                              env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def studies() -> list[dict] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    return json.load(response)["study_summaries"]
            except OSError:
                return None

        wait_for(lambda: studies() is not None, 60, "optuna-dashboard to answer")
        assert [s["study_name"] for s in studies()] == ["search"]
    finally:
        server.terminate()
        said, _ = server.communicate(timeout=30)
    assert "optuna-dashboard on postgresql://prunepilot:***@127.0.0.1" in said and "s3cr3t-pw" not in said
