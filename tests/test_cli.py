import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from envs.layer_pruning import FEATURES, OBS_VERSION
from search.cli import main
from search.termination import interrupts_deferred, raise_if_interrupted, sigterm_received, stop_on_signals

TINY = """
model: {name: "tests.fixtures:tiny_cnn"}
data: {name: synthetic, options: {size: 10, n_train: 400, n_test: 100}}
train: {epochs: 3, batch_size: 64, lr: 0.05, augment: false}
prune: {importance: l1, macs_target: 0.5, steps: 2, finetune_epochs: 0.5, final_epochs: 1, distill: 0.5}
eval: {bn_batches: 2, bn_batch_size: 64, latency_repeats: 3}
sweep: {ratios: [0.0, 0.5], sensitivity_ratios: [0.5], accuracy_floor: 0.3}
threads: 1
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def cli_env() -> dict[str, str]:
    """The environment of a `python -m search.cli` child: the repo first on PYTHONPATH, then whatever the caller's
    holds (packages installed with --target, say)."""
    path = os.pathsep.join(p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_cli(*args: str, cwd: Path, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=cli_env(), timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["prune", "missing.yaml"], "missing.yaml: config file not found"),
    (["prune", "{cfg}", "prune.stepz=2"], "field `prune.stepz`: unknown key"),
    (["prune", "{cfg}", "train.epochs=lots"], "field `train.epochs`"),
    (["prune", "{cfg}", "--policy", "nope.json"], "nope.json: policy file not found"),
    (["prune", "{cfg}", "model.name=resnet9000"], "model.name: unknown model 'resnet9000'"),
    (["prune", "{cfg}", "model.name=vgg_small", "model.kwargs.widths=[M, M, M, M]"],  # named only model.name
     "model.name/model.kwargs: vgg_small with {'widths': ['M', 'M', 'M', 'M']} cannot take inputs shaped (1, 10, 10)"),
    (["prune", "{cfg}", "device=cuda:7"], "device"),
    (["prune", "{cfg}", "device=mps"], "device: expected auto, cpu, cuda or cuda:N, got 'mps'"),  # was a traceback
    (["search", "{cfg}", "agent.name=dqn"], "field `agent.name`: Input should be 'ddpg', 'td3', 'sac' or 'ppo'"),
    (["search", "{cfg}", "search.searcher=td3", "agent.name=sac"], "search.searcher is 'td3' but agent.name is 'sac'"),
    # both run on Ray: --backend local was dropped without a word
    (["search", "{cfg}", "--backend", "local", "--address", "127.0.0.1:1"],
     "--backend local and --address: --address joins a Ray cluster; leave out --backend local"),
    # found when the environment was built, after the set-up had written search.json and an empty study
    (["search", "{cfg}", "--backend", "local", "sweep.accuracy_floor=null", "env.macs_target=0.3", "env.r_max=0.05"],
     "env.macs_target: 0.3 cannot be met with r_max=0.05"),
    # the floor's sweep used to replace the given target without a word
    (["search", "{cfg}", "env.macs_target=0.4"], "env.macs_target (0.4) and sweep.accuracy_floor (0.3) both set the "
                                               "search's MACs target; give sweep.accuracy_floor=null"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, tiny_config, args, message):
    out = tmp_path / "run"
    result = run_cli(*[a.format(cfg=tiny_config) for a in args], "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["..", "../escape", "a/b"])
def test_a_run_name_that_is_not_one_folder_is_refused(tmp_path, tiny_config, name):
    """results/<name>/: `..` wrote the report and model into the working folder, `../escape` beside it."""
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("prune", str(tiny_config), f"name={name}", cwd=work)
    assert result.returncode == 2, result.stderr
    assert "field `name`: expected a name for one folder under results/" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml", "work"] and list(work.iterdir()) == []


def test_a_cuda_device_the_machine_lacks_is_refused(monkeypatch):
    """cuda:3 on a one-GPU machine passed, then failed at the first tensor moved there."""
    from pruning.errors import UserError
    from pruning.runtime import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda").type == "cuda"
    with pytest.raises(UserError, match=r"device: 'cuda:3' was asked for but this machine has 1 CUDA GPU\(s\), "
                                        r"cuda:0 to cuda:0"):
        resolve_device("cuda:3")


def test_train_writes_the_checkpoint_where_out_says(tmp_path, tiny_config, capsys):
    """--out was accepted and ignored: the baseline went to the cache alone."""
    from pruning.baseline import baseline_path
    from pruning.checkpoint import load_checkpoint
    from pruning.config import load_config
    from pruning.data import load_data

    assert main(["train", str(tiny_config), "--quiet", "--out", str(tmp_path / "folder")]) == 2  # before training
    assert "--out: expected a .pt file, got" in capsys.readouterr().err
    out = tmp_path / "kept" / "dense.pt"
    assert main(["train", str(tiny_config), "--quiet", "--out", str(out)]) == 0
    assert main(["prune", str(tiny_config), "--quiet", "--out", str(tmp_path / "pinned"), f"model.checkpoint={out}",
                 "prune.final_epochs=0", "prune.steps=1"]) == 0
    summary = json.loads((tmp_path / "pinned" / "summary.json").read_text())
    assert summary["baseline_checkpoint"] == str(out)
    cfg = load_config(tiny_config)
    cached = load_checkpoint(baseline_path(cfg, load_data(cfg.data.name, None, cfg.data.val_fraction, cfg.data.val_size,
                                                          **cfg.data.options)))["state_dict"]
    kept = load_checkpoint(out)["state_dict"]
    assert kept.keys() == cached.keys() and all(torch.equal(kept[k], cached[k]) for k in kept)


def test_two_searches_into_one_shared_storage_keep_a_study_each(tmp_path, tiny_config):
    """A cluster's searches share one --storage. The second loaded the first's study of the same name, and its
    evaluations, whose ids the first had used, were dropped: it reported the first search's results as its own."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["search", str(tiny_config), "--backend", "local", "--quiet", "--storage", storage, "search.evaluations=4",
              "agent.warmup_episodes=2", "agent.net_arch=[8]", "env.macs_target=0.6", "search.final_pass=false",
              "sweep.accuracy_floor=null", "env.budget=cap"]
    for seed in (1, 2):
        assert main([*common, "--out", str(tmp_path / f"s{seed}"), f"search.seed={seed}"]) == 0
    summaries = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert summaries == {"tiny": 4, "tiny-2": 4}
    second = json.loads((tmp_path / "s2" / "search.json").read_text())
    assert second["study_name"] == "tiny-2" and "`tiny-2`" in (tmp_path / "s2" / "report.md").read_text()
    first, own = (pd.read_csv(tmp_path / f"s{seed}" / "evaluations.csv") for seed in (1, 2))
    assert len(own) == 4 and not own.filter(like="ratio:").equals(first.filter(like="ratio:"))


def test_a_cache_folder_that_cannot_be_made_is_a_message(tmp_path, tiny_config, monkeypatch, capsys):
    """A file in the way of PRUNEPILOT_CACHE was a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("PRUNEPILOT_CACHE", str(tmp_path / "afile" / "cache"))
    assert main(["train", str(tiny_config), "--quiet"]) == 2
    assert "afile/cache: cannot make the cache folder of baselines (Not a directory); set PRUNEPILOT_CACHE" in \
        capsys.readouterr().err


def test_a_policy_that_leaves_units_out_keeps_them_whole_and_says_so(tmp_path, tiny_config, caplog):
    assert main(["prune", str(tiny_config), "--out", str(tmp_path / "uniform"), "--quiet", "prune.final_epochs=0"]) == 0
    policy = json.loads((tmp_path / "uniform" / "policy.json").read_text())
    first, *rest = policy["ratios"]
    del policy["ratios"][first]
    (tmp_path / "partial.json").write_text(json.dumps(policy))
    with caplog.at_level(logging.INFO):
        assert main(["prune", str(tiny_config), "--out", str(tmp_path / "partial"), "--quiet", "prune.final_epochs=0",
                     "--policy", str(tmp_path / "partial.json")]) == 0
    assert f"partial.json: 1 unit(s) not in the policy are kept whole: {first}" in caplog.text
    kept = json.loads((tmp_path / "partial" / "policy.json").read_text())["ratios"]
    assert kept.get(first, 0.0) == 0.0 and all(kept[name] == policy["ratios"][name] for name in rest)


def test_a_budget_inside_the_random_warm_up_is_warned_of(tmp_path, tiny_config, caplog):
    """evaluations <= warmup_episodes: DDPG acted at random throughout and nothing said so."""
    common = ["search", str(tiny_config), "--backend", "local", "--quiet", "search.evaluations=3", "env.macs_target=0.6",
              "search.final_pass=false", "sweep.accuracy_floor=null", "agent.net_arch=[8]"]
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--out", str(tmp_path / "a"), "agent.warmup_episodes=3"]) == 0
    assert "agent.warmup_episodes (3) >= search.evaluations (3): every evaluation is a random warm-up" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--out", str(tmp_path / "b"), "agent.warmup_episodes=2"]) == 0
    assert "warm-up" not in caplog.text


def test_ray_only_settings_given_to_a_local_search_are_warned_of(tmp_path, tiny_config, caplog):
    """`--backend local search.concurrency=3` ran one policy at a time without a word, and search_summary.json
    recorded a concurrency of 3."""
    common = ["search", str(tiny_config), "--backend", "local", "--quiet", "search.evaluations=2", "env.macs_target=0.6",
              "search.final_pass=false", "sweep.accuracy_floor=null", "agent.warmup_episodes=1", "agent.net_arch=[8]"]
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--out", str(tmp_path / "a"), "search.concurrency=3", "search.gpus_per_trial=0.5"]) == 0
    assert ("search.concurrency=3, search.gpus_per_trial=0.5: the local backend evaluates one policy at a time in this "
            "process") in caplog.text
    assert json.loads((tmp_path / "a" / "search_summary.json").read_text())["concurrency"] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the values the local backend has anyway say nothing
        assert main([*common, "--out", str(tmp_path / "b"), "search.concurrency=1", "search.cpus_per_trial=1"]) == 0
    assert "local backend" not in caplog.text


@pytest.mark.parametrize("sigint_ignored", [False, True])
def test_sigterm_stops_a_search_as_ctrl_c_does(tmp_path, tiny_config, sigint_ignored):
    """A batch scheduler's SIGTERM ended the job at once: no word on what was kept. Now it stops as Ctrl-C does,
    with exit code 143, also where SIGINT is ignored (a batch script's background job, `prunepilot search ... &`).
    (Tiny's few distinct policies keep the agent replaying them for tens of seconds.)"""
    out = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(tiny_config), "--backend", "local",
                               "--quiet", "--out", str(out), "search.evaluations=400", "env.macs_target=0.6",
                               "sweep.accuracy_floor=null", "search.final_pass=false", "agent.warmup_episodes=1"],
                              cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored
                              else None)
    try:
        deadline = time.monotonic() + 120
        while not recorded_trials(out / "study.db") and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 143, err[-2000:]
    assert "search stopped after" in err and "prunepilot search: terminated (SIGTERM)" in err
    assert recorded_trials(out / "study.db") >= 1 and not (out / "evaluations.csv").exists()


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs in the main thread at its next bytecode


def a_new_job(restore: Callable[[], None]) -> Callable[[], None]:
    """Put back the last job's signal handlers and install a fresh job's (no Ctrl-C pending)."""
    restore()
    return stop_on_signals()


def test_a_ctrl_c_that_code_swallowed_is_raised_again_and_one_held_during_a_start_is_raised_after_it():
    """Python raises KeyboardInterrupt wherever the main thread is; a bare `except:` or a fork's at-fork hooks
    (`ray.init`) dropped it and the job ran to its end. The job's phase boundaries raise it again."""
    restore = stop_on_signals()
    try:
        try:
            ctrl_c()
        except BaseException:  # noqa: B036 - what a library's bare except does
            pass
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        restore = a_new_job(restore)
        raise_if_interrupted()
        reached = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred("the start"):
                ctrl_c()
                reached.append("the end of the start")
        assert reached == ["the end of the start"]
        restore = a_new_job(restore)
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred("the start"):
                ctrl_c()
                ctrl_c()  # a second one stops at once
                reached.append("past the second")
        assert reached == ["the end of the start"]
        restore = a_new_job(restore)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job: Ctrl-C stays ignored
        with interrupts_deferred("the start"):
            ctrl_c()
            reached.append("ignored")
        assert reached == ["the end of the start", "ignored"]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        restore = a_new_job(restore)
        with pytest.raises(KeyboardInterrupt):  # a scheduler's SIGTERM is held too, and ends the job as SIGTERM
            with interrupts_deferred("the start"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached.append("after SIGTERM")
        assert reached[-1] == "after SIGTERM" and sigterm_received()
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def met_by_a_ctrl_c(monkeypatch, owner: object, name: str) -> Callable:
    """Replace `owner.name` by itself preceded by a Ctrl-C (a real SIGINT to this process), counting its calls in
    `.calls`; returns the original."""
    real = getattr(owner, name)

    def after_a_ctrl_c(*args, **kwargs):
        after_a_ctrl_c.calls += 1
        ctrl_c()
        return real(*args, **kwargs)

    after_a_ctrl_c.calls = 0

    monkeypatch.setattr(owner, name, after_a_ctrl_c)
    return real


def tiny_search(config: Path, out: Path, backend: str, *overrides: str) -> list[str]:
    """`prunepilot search` of the tiny config: two evaluations at 60% MACs, no sweep."""
    return ["search", str(config), "--backend", backend, "--out", str(out), "--quiet", "search.evaluations=2",
            "agent.warmup_episodes=2", "env.macs_target=0.6", "sweep.accuracy_floor=null", *overrides]


def test_a_ctrl_c_as_a_finished_search_shuts_ray_down_is_held_and_the_search_ends_with_its_code(tmp_path, tiny_config,
                                                                                                 monkeypatch):
    """Ray's shutdown ran in its exit hook, where a Ctrl-C pressed as the job finished printed a traceback and the
    process exited with code 1 after all its files were written."""
    import ray

    met_by_a_ctrl_c(monkeypatch, ray, "shutdown")
    assert main(tiny_search(tiny_config, tmp_path / "run", "ray", "search.final_pass=false")) == 0
    assert ray.shutdown.calls == 1 and not ray.is_initialized()
    assert (tmp_path / "run" / "report.md").is_file()


def test_a_ctrl_c_while_the_search_report_is_written_is_held_and_then_says_how_to_run_the_final_pass(
        tmp_path, tiny_config, monkeypatch, caplog):
    """Held until the report is written (a finished search with half a report and no word of how to finish it), then
    the job stops before its final pass and says so; it used to say 'final pass stopped' of a pass never started."""
    import search.search_job as job

    met_by_a_ctrl_c(monkeypatch, job, "write_search_report")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="prunepilot"):
        assert main(tiny_search(tiny_config, out, "local")) == 130
    assert job.write_search_report.calls == 1
    assert (out / "best_policy.json").is_file() and (out / "search_summary.json").is_file()
    assert not (out / "summary.json").exists() and not (out / "report.md").exists()
    assert (f"stopped before the final pass; the search's 2 evaluations and its best policy are kept in {out}; run "
            f"the pass with: prunepilot prune {tiny_config} --policy {out / 'best_policy.json'} --out {out / 'final'} "
            "search.evaluations=2") in caplog.text, caplog.text


def test_a_ctrl_c_before_tune_first_saves_its_experiment_says_there_is_nothing_to_resume(tmp_path, tiny_config,
                                                                                         monkeypatch, caplog):
    """The hint said 'continue it with --resume', which then refused: no restorable Tune experiment."""
    from search import ray_backend

    real_run_tune = met_by_a_ctrl_c(monkeypatch, ray_backend, "run_tune")  # as Tune starts, before it saves anything
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="prunepilot"):
        assert main(tiny_search(tiny_config, out, "ray")) == 130
    assert (f"search stopped after 0 recorded evaluations, before Ray Tune first saved its experiment, so --resume "
            f"has nothing to continue: search again with another --out (or delete {out})") in caplog.text
    assert "continue it with" not in caplog.text
    monkeypatch.setattr(ray_backend, "run_tune", real_run_tune)
    assert main(["search", str(tiny_config), "--resume", str(out), "--quiet"]) == 2  # what the hint no longer offers

def recorded_trials(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # the tables are not made yet
            return 0


VGG_ON_DIGITS = ["model.name=vgg_small", "model.kwargs.widths=[8,8,M,16,16,M,32]", "data.name=digits",
                 "data.options={}", "train.epochs=6"]


@pytest.mark.parametrize("ratios, warned", [((0.75, 0.75, 0.0, 0.0, 0.0), True), ((0.1, 0.1, 0.4, 0.4, 0.4), False)])
def test_a_best_policy_below_the_uniform_rule_is_said(tmp_path, tiny_config, caplog, ratios, warned):
    """A short search (here one seeded evaluation) or a zero-shot policy from another model can lose to the uniform
    rule at the same MACs; the report showed both rows and said nothing, and the final pass pruned the worse one."""
    assert main(["prune", str(tiny_config), "--out", str(tmp_path / "u"), "--quiet", "prune.final_epochs=0",
                 *VGG_ON_DIGITS]) == 0
    policy = json.loads((tmp_path / "u" / "policy.json").read_text())
    policy.update(ratios=dict(zip(policy["ratios"], ratios)), meta={})
    (tmp_path / "seed.json").write_text(json.dumps(policy))
    common = ["--quiet", "--policy", str(tmp_path / "seed.json"), "env.macs_target=0.6", "sweep.accuracy_floor=null",
              *VGG_ON_DIGITS]
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(tiny_config), "--backend", "local", "--out", str(tmp_path / "s"), *common,
                     "search.evaluations=1", "agent.warmup_episodes=0", "search.final_pass=false"]) == 0
        assert main(["transfer", str(tiny_config), "--out", str(tmp_path / "t"), *common]) == 0
    search = json.loads((tmp_path / "s" / "search_summary.json").read_text())
    transfer = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert (search["uniform_reward"] > search["best"]["meta"]["reward"]) is warned
    assert (transfer["uniform_reward"] > transfer["reward"]) is warned
    said = ("the search's best (1 evaluations) scores below the uniform policy at the same MACs target",
            "the zero-shot policy (policy ", "prune the uniform policy (prunepilot prune CONFIG prune.macs_target=0.60)")
    assert all((line in caplog.text) is warned for line in said)
    assert ("**The best policy found scores below the uniform policy**" in
            (tmp_path / "s" / "report.md").read_text()) is warned


def test_ctrl_c_in_a_local_final_pass_gives_a_prune_that_keeps_the_search(tmp_path, tiny_config):
    """The hint's prune wrote into results/<config name>/ without the search's overrides; a prune into a search's
    folder replaced the search's report and model."""
    import signal
    import time

    out = tmp_path / "run"
    extra = ["search.evaluations=3", "agent.warmup_episodes=2", "env.macs_target=0.6", "sweep.accuracy_floor=null",
             "prune.final_epochs=150"]  # a last step of ~20 s to interrupt
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(tiny_config), "--backend", "local",
                                   "--out", str(out), "--quiet", *extra], cwd=tmp_path, stdout=sink,
                                  stderr=subprocess.STDOUT, env=cli_env())
    try:
        deadline = time.monotonic() + 300
        while "step 1/" not in log.read_text() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        driver.kill()
        driver.wait()
    hint = (f"run the pass again with: prunepilot prune {tiny_config} --policy {out / 'best_policy.json'} --out "
            f"{out / 'final'} {' '.join(extra)}")
    assert hint in log.read_text(), log.read_text()[-3000:]
    result = run_cli("prune", str(tiny_config), "--policy", str(out / "best_policy.json"), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and f"--out: {out} holds a search (its search.json)" in result.stderr
    assert not (out / "report.md").exists() and not (out / "model.pt").exists()
    pruned = tmp_path / "pruned"  # and the other way round
    (pruned).mkdir()
    (pruned / "summary.json").write_text("{}")
    result = run_cli("search", str(tiny_config), "--backend", "local", "--out", str(pruned), *extra, cwd=tmp_path)
    assert result.returncode == 2 and f"--out: {pruned} holds a pruned model" in result.stderr
    assert sorted(p.name for p in pruned.iterdir()) == ["summary.json"]


def test_policy_for_another_model_is_refused(tmp_path, tiny_config):
    policy = {"format": "prunepilot.sparsity-policy/1", "model_fingerprint": "feedfacefeedface",
              "mode": "structured", "ratios": {"0": 0.5}}
    (tmp_path / "p.json").write_text(json.dumps(policy))
    code = main(["prune", str(tiny_config), "--policy", str(tmp_path / "p.json"), "--out", str(tmp_path / "run"),
                 "--quiet"])
    assert code == 2


def test_prune_writes_a_complete_run_folder(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert main(["prune", str(tiny_config), "--out", str(out), "--quiet"]) == 0
    for name in ("report.md", "steps.csv", "steps.parquet", "policy.json", "summary.json", "unit_ratios.png",
                 "model.pt", "model.torchscript.pt", "model.onnx"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs_ratio"] <= 0.5 + 1e-9
    assert summary["export_max_abs_diff"]["onnx"] < 1e-4
    report = (out / "report.md").read_text()
    assert "Progressive steps" in report
    for batch in (1, 64):  # dense and pruned alternated in rounds: the speed-up comes with its spread
        low, high = summary[f"speedup_b{batch}_range"]
        assert 0 < low <= high and summary[f"speedup_b{batch}_fastest"] > 0
        assert summary[f"speedup_b{batch}"] == summary["dense"][f"latency_b{batch}_ms"] / summary["pruned"][
            f"latency_b{batch}_ms"]
    assert f"alternated over {summary['latency_rounds']} rounds; per-round speed-ups" in report
    assert f"x{low:.2f}-x{high:.2f} at batch 64; fastest passes" in report
    assert f"x{summary['speedup_b64_fastest']:.2f} at batch 64" in report
    # the tool that re-times finished runs on a quiet machine takes a prune output folder as well
    from bench.latency_forms import main as forms_main

    forms_main([str(out), "--repeats", "3", "--rounds", "2", "--threads", "1"])
    forms = pd.read_csv(out / "latency_forms-t1.csv")
    assert list(forms["run"]) == ["run", "run"] and list(forms["batch"]) == [1, 64]
    assert (forms["deployed_speedup_low"] <= forms["deployed_speedup_high"]).all()
    assert (forms["deployed_speedup_fastest_over_macs_reduction"] ==
            forms["deployed_speedup_fastest"] / forms["macs_reduction"]).all()
    # the baseline is cached: a second run loads it instead of training
    assert main(["prune", str(tiny_config), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["dense"]["test_accuracy"] == summary["dense"]["test_accuracy"]
    # same config and seed on a CPU: the same pass (importance, fine-tuning order, distillation), the same weights
    from pruning.checkpoint import load_checkpoint

    first, second = (load_checkpoint(folder / "model.pt")["state_dict"] for folder in (out, tmp_path / "again"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    steps = ["val_accuracy_pruned", "val_accuracy_finetuned", "macs"]
    assert pd.read_csv(out / "steps.csv")[steps].equals(pd.read_csv(tmp_path / "again" / "steps.csv")[steps])
    assert again["pruned"]["test_accuracy"] == summary["pruned"]["test_accuracy"]


def test_sweep_and_sensitivity(tmp_path, tiny_config, capsys):
    assert main(["sweep", str(tiny_config), "--out", str(tmp_path / "sw"), "--quiet"]) == 0
    assert "sweep" not in capsys.readouterr().err  # --quiet: no progress, as for training and search
    sweep = json.loads((tmp_path / "sw" / "summary.json").read_text())
    assert [r["ratio"] for r in sweep["rows"]] == [0.0, 0.5]
    assert sweep["rows"][1]["macs_ratio"] < sweep["rows"][0]["macs_ratio"]
    assert "chosen" in sweep
    assert main(["sensitivity", str(tiny_config), "--out", str(tmp_path / "se")]) == 0
    err = capsys.readouterr().err
    assert "sensitivity:" in err and "sensitivity 1/" not in err  # one bar, not a log line per evaluation
    assert (tmp_path / "se" / "sensitivity.png").is_file() and (tmp_path / "se" / "sensitivity.csv").is_file()


@pytest.mark.parametrize("searcher", ["ddpg", "td3", "tpe", "random", "lamp"])
def test_local_search_writes_the_run_folder(tmp_path, tiny_config, searcher, capsys):
    out = tmp_path / searcher
    args = ["search", str(tiny_config), "--backend", "local", "--out", str(out), "--quiet", f"search.searcher={searcher}",
            "search.evaluations=6", "agent.warmup_episodes=2", "agent.net_arch=[16]", "env.macs_target=0.6",
            "search.final_pass=false", "sweep.accuracy_floor=null",
            "env.budget=cap"]  # the tiny CNN has fewer than 6 policies exactly on the target; below it, plenty
    assert main(args) == 0
    table = pd.read_csv(out / "evaluations.csv")
    assert len(table) == (1 if searcher == "lamp" else 6)
    assert (table["macs_ratio"] <= 0.6 + 1e-9).all()
    assert (out / "best_policy.json").is_file() and (out / "report.md").is_file()
    assert (out / "agent.zip").is_file() == (searcher in ("ddpg", "td3"))
    if searcher in ("ddpg", "td3"):  # the agent the searcher names (td3 once ran DDPG under its name)
        assert json.loads((out / "agent.json").read_text())["agent"]["name"] == searcher
    if searcher == "ddpg":  # a local search keeps no Tune experiment; --resume read that as 'stopped within 5 s'
        assert main(["search", str(tiny_config), "--resume", str(out)]) == 2
        assert f"--resume: {out} was searched by the local backend" in capsys.readouterr().err
        assert main(args) == 2  # the same search again: no --resume to offer
        assert f"{out} already holds a search; choose another --out" in capsys.readouterr().err


def test_unknown_searcher_is_a_user_error(tmp_path, tiny_config):
    assert main(["search", str(tiny_config), "--backend", "local", "search.searcher=gridsearch",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert not (tmp_path / "x").exists()


def test_policy_reuse_zero_shot_and_warm_start(tmp_path, tiny_config, caplog):
    common = ["--backend", "local", "--quiet", "search.evaluations=6", "agent.warmup_episodes=2", "agent.net_arch=[16]",
              "env.macs_target=0.6", "search.final_pass=false", "sweep.accuracy_floor=null"]
    assert main(["search", str(tiny_config), "--out", str(tmp_path / "a"), *common]) == 0
    agent, best = tmp_path / "a" / "agent.zip", tmp_path / "a" / "best_policy.json"
    other_model = ["model.name=vgg_small", "model.kwargs={widths: [8, M, 16, 16]}"]
    # zero-shot: the agent's policy and the other model's best policy, resampled; the better one is saved
    assert main(["transfer", str(tiny_config), "--agent", str(agent), "--policy", str(best), "--out",
                 str(tmp_path / "t"), "--quiet", "env.macs_target=0.6", *other_model]) == 0
    summary = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert summary["model"] == "vgg_small" and 0.5 < summary["macs_ratio"] <= 0.6 + 1e-9
    assert [c["source"] for c in summary["candidates"]] == [f"agent {agent}", f"policy {best}"]
    assert summary["reward"] == max(c["reward"] for c in summary["candidates"])
    moved = json.loads((tmp_path / "t" / "policy.json").read_text())
    assert moved["meta"]["source"] == summary["source"] and len(moved["profile"]) == len(moved["ratios"])
    # warm start: the agent goes on, seeded with the best policy, which is scored first
    assert main(["search", str(tiny_config), "--out", str(tmp_path / "w"), "--agent", str(agent), "--policy", str(best),
                 *common, *other_model]) == 0
    evaluations = pd.read_csv(tmp_path / "w" / "evaluations.csv")
    assert len(evaluations) == 6
    candidates = {c["source"]: c for c in summary["candidates"]}
    assert evaluations["accuracy"].iloc[0] == pytest.approx(candidates[f"policy {best}"]["accuracy"])
    assert evaluations["accuracy"].iloc[1] == pytest.approx(candidates[f"agent {agent}"]["accuracy"])
    assert "predicted_reward" not in evaluations
    # a warm start screens when this run asks for it, whatever the saved agent's own search did
    assert main(["search", str(tiny_config), "--out", str(tmp_path / "ws"), "--agent", str(agent), "--policy", str(best),
                 *common, *other_model, "agent.candidates=4", "agent.screen_after=2"]) == 0
    screened = pd.read_csv(tmp_path / "ws" / "evaluations.csv")
    assert screened["predicted_reward"].iloc[:2].isna().all() and screened["predicted_reward"].iloc[2:].notna().all()
    # with a prior of the first model's scored policies, the screen starts at the first proposal after the seed,
    # before agent.screen_after of this model's own were scored, and records how much the prior weighed
    assert main(["search", str(tiny_config), "--out", str(tmp_path / "wp"), "--agent", str(agent), "--policy", str(best),
                 "--prior", str(tmp_path / "a"), *common, *other_model, "agent.candidates=4", "agent.screen_after=5"]) == 0
    prior = pd.read_csv(tmp_path / "wp" / "evaluations.csv")
    assert prior["predicted_reward"].iloc[0:1].isna().all() and prior["predicted_reward"].iloc[1:].notna().all()
    assert prior["prior_weight"].iloc[1:].between(0, 1).all() and prior["prior_weight"].iloc[1] == 1.0
    assert main(["transfer", str(tiny_config), "--agent", str(tmp_path / "none.zip"), "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    # a DDPG agent would go on as DDPG under a td3 search's name; refused before the baseline (once after its
    # training and the floor's sweep)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["search", str(tiny_config), "--out", str(tmp_path / "wt"), "--agent", str(agent), *common,
                     *other_model, "search.searcher=td3"]) == 2
    assert "dense vgg_small" not in caplog.text and not (tmp_path / "wt").exists()


@pytest.mark.parametrize("args, message", [
    (["transfer", "{cfg}"], "transfer: give --agent agent.zip, --policy FILE, or both"),
    (["transfer", "{cfg}", "--policy", "{bare}"], "no unit profile"),
    (["transfer", "{cfg}", "--agent", "{bare}"], "bare.json: not an agent (expected the agent.zip"),  # named bare.zip
    (["search", "{cfg}", "--policy", "{bare}", "search.searcher=tpe"], "--policy: seeding a search needs an agent"),
    (["search", "{cfg}", "--policy", "nope.json"], "nope.json: policy file not found"),
    (["search", "{cfg}", "env.latency_weight=1", "env.latency_table=nope.json"], "env.latency_table: file not found"),
    (["search", "{cfg}", "env.latency_weight=1", "env.latency_table={table}"], "env.latency_table: measured for another"),
    (["search", "{cfg}", "--prior", "{bare}"], "--prior: a prior screens an agent's candidates"),
    (["search", "{cfg}", "--prior", "nowhere", "agent.candidates=4"], "--prior nowhere: evaluations.csv not found"),
    (["search", "{cfg}", "--agent", "{broken}"], "broken.zip: not a readable DDPG agent archive"),  # after the sweep
])
def test_reuse_input_errors_exit_2_and_write_nothing(tmp_path, tiny_config, args, message):
    bare = tmp_path / "bare.json"  # another model's policy without its unit profile
    bare.write_text(json.dumps({"format": "prunepilot.sparsity-policy/1", "model_fingerprint": "0123456789abcdef",
                                "ratios": {"features.0": 0.5}}))
    broken = tmp_path / "broken.zip"  # an agent archive cut short, beside metadata that reads well
    broken.write_bytes(b"PK\x03\x04 cut short")
    broken.with_suffix(".json").write_text(json.dumps({"agent": {"name": "ddpg"}, "obs_version": OBS_VERSION,
                                                       "features": list(FEATURES)}))
    table = tmp_path / "table.json"  # a latency table of the tiny CNN, not of the VGG searched here
    assert main(["latency-table", str(tiny_config), "--out", str(table), "--quiet", "env.latency_batch=2"]) == 0
    out = tmp_path / "run"
    result = run_cli(*[a.format(cfg=tiny_config, bare=bare, table=table, broken=broken) for a in args], "--out", str(out), "--quiet",
                     "model.name=vgg_small", "model.kwargs={widths: [8, M, 16, 16]}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("overrides, message", [
    (["agent.kwargs.foo=1"], "agent.kwargs.foo: stable-baselines3's DDPG takes no keyword 'foo'"),
    (["search.searcher=td3", "agent.kwargs.polcy_delay=3"], "did you mean policy_delay?"),
    (["agent.kwargs.batch_sise=8"], "did you mean batch_size (set by agent.batch_size)?"),
    # a TypeError ("multiple values") once the agent was built, after the baseline and the sweep
    (["agent.kwargs.learning_rate=0.1"], "agent.kwargs.learning_rate: set by agent.actor_lr and agent.critic_lr"),
    (["agent.kwargs.tau=0.5"], "agent.kwargs.tau: set by agent.tau"),  # silently overrode agent.tau
    (["search.searcher=ppo", "agent.kwargs.gamma=0.5"], "agent.kwargs.gamma: set by agent.gamma"),
])
def test_bad_agent_kwargs_are_refused_before_the_baseline(tmp_path, tiny_config, overrides, message):
    out = tmp_path / "run"
    result = run_cli("search", str(tiny_config), "--out", str(out), *overrides, cwd=tmp_path)  # not quiet: logs
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "device cpu" in result.stderr and "dense" not in result.stderr and not out.exists()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--address", "127.0.0.1:{port}"], "--address: nothing answers at 127.0.0.1:{port} (Connection refused"),
    (["--address", "head-node"], "--address: expected HOST:PORT"),
    (["--address", "127.0.0.1:70000"], "--address: expected HOST:PORT"),
    # Ray Client: Tune would run the driver loop, and so the study's recorder, on the head (and ray[client] is absent)
    (["--address", "ray://127.0.0.1:{port}"], "--address: 'ray://127.0.0.1:{port}' is a Ray Client address, which a "
     "search cannot use"),
    (["--storage", "sqlite:///{tmp}/no/such/dir/study.db"], "--storage: cannot open Optuna storage"),
    (["--storage-path", "{tmp}/tiny.yaml/ray"], "--storage-path: cannot make folder"),  # under a file
    # a trial no node can hold: Tune waits for it forever, warning once a minute
    (["search.gpus_per_trial=64"], "search.gpus_per_trial: a trial asks for 1 CPU(s) and 64 GPU(s), but this machine has"),
    (["search.cpus_per_trial=4096"], "search.cpus_per_trial: a trial asks for 4096 CPU(s) and 0 GPU(s), but this machine"),
])
def test_a_wrong_cluster_or_storage_fails_at_once_and_leaves_no_run_folder(tmp_path, tiny_config, args, message):
    """Ray retries an unreachable --address forever; the global sweep writes into the run folder before the storage
    opens. Both must end in a message, exit 2, and nothing to block the corrected rerun."""
    port = closed_port()
    out = tmp_path / "run"
    result = run_cli("search", str(tiny_config), *[a.format(port=port, tmp=tmp_path) for a in args], "--out", str(out),
                     "--quiet", "search.evaluations=2", cwd=tmp_path, timeout=120)  # a hang fails, not blocks, the suite
    assert result.returncode == 2, result.stderr
    assert message.format(port=port) in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_storage_password_is_not_printed(tmp_path, tiny_config):
    """The URL of a --storage that cannot be opened was quoted whole, password and all, into the job's log."""
    url = f"postgresql://me:s3cr3t-pw@127.0.0.1:{closed_port()}/db"
    result = run_cli("search", str(tiny_config), "--backend", "local", "--quiet", "--storage", url, "--out",
                     str(tmp_path / "run"), "search.evaluations=2", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--storage: cannot open Optuna storage 'postgresql://me:***@127.0.0.1:" in result.stderr
    assert "s3cr3t-pw" not in result.stderr + result.stdout


def test_a_relative_sqlite_storage_is_kept_absolute_and_an_in_memory_one_refused(tmp_path, tiny_config):
    """search.json kept `sqlite:///study.db` as typed, so a resume or a review from another working folder opened (and
    created) another file; `sqlite:///:memory:` recorded a study that was gone when the search ended."""
    (tmp_path / "jobs").mkdir()
    common = ["search", str(tiny_config), "--backend", "local", "--quiet", "search.evaluations=2",
              "env.macs_target=0.6", "sweep.accuracy_floor=null", "search.final_pass=false", "agent.warmup_episodes=1"]
    kept = run_cli(*common, "--storage", "sqlite:///shared.db", "--out", str(tmp_path / "run"), cwd=tmp_path / "jobs",
                   timeout=120)
    assert kept.returncode == 0, kept.stderr[-2000:]
    state = json.loads((tmp_path / "run" / "search.json").read_text())
    shared = tmp_path / "jobs" / "shared.db"
    assert state["storage"] == f"sqlite:///{shared}" and shared.is_file()
    review = subprocess.run([sys.executable, "-c", "import optuna, sys; print(len(optuna.load_study(study_name="
                             "sys.argv[2], storage=sys.argv[1]).trials))", state["storage"], state["study_name"]],
                            cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert review.stdout.strip() == "2", review.stderr[-2000:]
    memory = run_cli(*common, "--storage", "sqlite:///:memory:", "--out", str(tmp_path / "mem"), cwd=tmp_path,
                     timeout=120)
    assert memory.returncode == 2 and "Traceback" not in memory.stderr
    assert "--storage: sqlite:///:memory: is an in-memory SQLite database, which keeps nothing" in memory.stderr
    assert not (tmp_path / "mem").exists()


def test_two_searches_started_at_once_into_one_folder_do_not_share_it(tmp_path, tiny_config, monkeypatch,
                                                                       capsys):
    """Both passed the 'already holds a search' check and spent their set-up (the baseline's training) side by side,
    then wrote one folder: one study.db holding two studies, one search.json, one evaluations.csv. The folder is
    now claimed before the set-up; a claim whose process is gone is taken over, a live one refused."""
    monkeypatch.setenv("PRUNEPILOT_CACHE", str(tmp_path / "fresh-cache"))  # both train the baseline: a set-up of seconds
    out = tmp_path / "run"
    common = ["search", str(tiny_config), "--backend", "local", "--quiet", "--out", str(out), "search.evaluations=3",
              "env.macs_target=0.6", "sweep.accuracy_floor=null", "search.final_pass=false", "agent.warmup_episodes=1",
              "train.epochs=8"]
    runs = [subprocess.Popen([sys.executable, "-m", "search.cli", *common, f"search.seed={seed}"], cwd=tmp_path,
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (1, 2)]
    said = [run.communicate(timeout=300)[1] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], said
    refused = said[[run.returncode for run in runs].index(2)]
    assert "another search (pid " in refused or "already holds a search" in refused
    studies = subprocess.run([sys.executable, "-c", "import optuna, sys; print(len(optuna.get_all_study_summaries("
                              "sys.argv[1])))", f"sqlite:///{out / 'study.db'}"], capture_output=True, text=True,
                             env=cli_env(), timeout=120)
    assert studies.stdout.strip() == "1", studies.stderr[-2000:]
    # a live claim (this test's own process) is refused and kept; a claim of a process that is gone is taken over
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    live = {"setting_up": {"pid": os.getpid(), "host": socket.gethostname()}}
    (claimed / "search.json").write_text(json.dumps(live))
    again = [*common[:5], "--out", str(claimed), *common[7:]]
    result = run_cli(*again, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and f"another search (pid {os.getpid()} on " in result.stderr, result.stderr[-2000:]
    assert json.loads((claimed / "search.json").read_text()) == live
    # nothing to resume or review yet (a resume read the claim as a search and went looking for Tune's experiment)
    assert main(["search", str(tiny_config), "--resume", str(claimed), "--quiet"]) == 2
    assert main(["dashboard", str(claimed)]) == 2
    said = capsys.readouterr().err
    assert f"--resume: {claimed} holds a search whose set-up did not finish" in said
    assert f"{claimed}: its search is still setting up" in said
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (claimed / "search.json").write_text(json.dumps({"setting_up": {"pid": int(gone.stdout), "host":
                                                                    socket.gethostname()}}))
    result = run_cli(*again, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "taking over the run folder" in result.stderr and "study_name" in (claimed / "search.json").read_text()


def test_same_config_and_seed_give_the_same_search(tmp_path, tiny_config):
    args = ["--backend", "local", "--quiet", "search.evaluations=8", "agent.warmup_episodes=3", "agent.net_arch=[16]",
            "agent.batch_size=8", "search.final_pass=false", "sweep.accuracy_floor=null"]
    tables = []
    for name in ("one", "two"):
        assert main(["search", str(tiny_config), "--out", str(tmp_path / name), *args]) == 0
        tables.append(pd.read_csv(tmp_path / name / "evaluations.csv"))
    columns = [c for c in tables[0].columns if c.startswith("ratio:")] + ["reward", "accuracy"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])
    assert tables[0]["reward"].nunique() > 1  # the searches explored, they did not repeat one policy


def test_resume_keeps_the_overrides_the_search_started_with(tmp_path, tiny_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "search.json").write_text(json.dumps({"overrides": ["search.evaluations=8"], "storage": "x",
                                                 "study_name": "tiny", "storage_path": str(run / "ray")}))
    assert main(["search", str(tiny_config), "--resume", str(run), "--quiet", "search.evaluations=9"]) == 2
    assert sorted(p.name for p in run.iterdir()) == ["search.json"]


@pytest.mark.parametrize("change, message", [
    (["model.kwargs={width: 12}"], "searched tests.fixtures:tiny_cnn (units fingerprint"),
    (["data.options={size: 10, n_train: 300, n_test: 100}"], "searched data"),
])
def test_resume_refuses_a_config_of_another_model_or_data(tmp_path, tiny_config, change, message):
    """It used to go on: the study then mixed two models' evaluations and the final pass pruned the second."""
    run = tmp_path / "run"
    assert main(["search", str(tiny_config), "--backend", "local", "--out", str(run), "--quiet", "search.evaluations=2",
                 "search.final_pass=false"]) == 0
    state = json.loads((run / "search.json").read_text())
    assert state["model"] == "tests.fixtures:tiny_cnn" and "path" not in state["data"]
    del state["backend"]  # as a state written before the backend was kept: the local-backend refusal stays quiet
    (run / "search.json").write_text(json.dumps(state))
    other = tmp_path / "other.yaml"
    other.write_text(TINY)
    result = run_cli("search", str(load_into(other, change)), "--resume", str(run), "--quiet", cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert json.loads((run / "search.json").read_text()) == state


def load_into(config: Path, overrides: list[str]) -> Path:
    """`config` with `overrides` written into it (a resume takes no new overrides, so the change goes in the file)."""
    import yaml

    from pruning.config import load_config

    body = yaml.safe_load(config.read_text())
    changed = load_config(config, overrides).model_dump(mode="json")
    for section in ("model", "data"):
        body[section] = changed[section]
    config.write_text(yaml.safe_dump(body))
    return config


def test_latency_table_command_and_a_latency_aware_local_search(tmp_path, tiny_config):
    table = tmp_path / "tables" / "tiny.json"
    assert main(["latency-table", str(tiny_config), "--out", str(table), "--quiet"]) == 0
    body = json.loads(table.read_text())
    assert body["format"] == 1 and body["batch_size"] == 64 and body["entries"]
    bad = run_cli("latency-table", str(tiny_config), "--out", str(tmp_path / "t.txt"), cwd=tmp_path)
    assert bad.returncode == 2 and "--out: expected a .json file" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "t.txt").exists()

    out = tmp_path / "run"
    args = ["search", str(tiny_config), "--backend", "local", "--out", str(out), "--quiet", "search.searcher=random",
            "search.evaluations=6", "env.macs_target=0.6", "env.budget=cap", "search.final_pass=false",
            "sweep.accuracy_floor=null", "env.latency_weight=1", "env.latency_target=0.5", "env.latency_batch=8"]
    assert main(args) == 0
    frame = pd.read_csv(out / "evaluations.csv")
    assert (out / "latency_table.json").is_file()  # measured by the search, kept beside its evaluations
    assert frame["latency_ratio"].between(0, 2).all()
    penalty = (frame["latency_ratio"] / 0.5 - 1).clip(lower=0)
    expected = frame["accuracy"] - 0.5 * frame["macs_ratio"] - penalty  # accuracy_minus_compute, then the term
    assert np.allclose(frame["reward"], expected)
    report = (out / "report.md").read_text()
    assert "minus 1 x max(0, L / 0.5 - 1)" in report and "latency_ratio" in report
    # the search's own table prices its policies (a resume reuses it): the command's default folder and --out
    # no longer land on it
    kept = (out / "latency_table.json").read_bytes()
    refused = run_cli("latency-table", str(tiny_config), "--out", str(out / "latency_table.json"), cwd=tmp_path)
    assert refused.returncode == 2 and f"--out: {out} holds a search" in refused.stderr
    assert run_cli("latency-table", str(tiny_config), cwd=tmp_path).returncode == 0
    assert (tmp_path / "results" / "tiny-latency" / "latency_table.json").is_file()
    assert (out / "latency_table.json").read_bytes() == kept


REMOVABLE = ("layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")


def test_a_search_may_remove_residual_blocks_and_the_final_pass_removes_them(tmp_path, tiny_config, caplog):
    from torch import nn

    from pruning.export import load_pruned
    from pruning.models import build_model
    from pruning.units import discover_units
    from search.review import policy_of_row

    residual = ["model.name=resnet20", "model.kwargs={}", "data.name=digits", "data.options={}", "prune.round_to=4",
                "env.remove_blocks=true", "env.macs_target=0.5", "sweep.accuracy_floor=null"]
    out = tmp_path / "search"
    with caplog.at_level("INFO", logger="prunepilot"):
        assert main(["search", str(tiny_config), "--backend", "local", "--out", str(out), "--quiet",
                     "search.searcher=random", "search.evaluations=8", "search.final_pass=false", *residual]) == 0
    assert f"env.remove_blocks: 7 residual block(s) of resnet20 can be removed ({', '.join(REMOVABLE)})" in caplog.text
    table = pd.read_csv(out / "evaluations.csv")
    inside = [f"ratio:{block}.conv1" for block in REMOVABLE]
    ratios = table.filter(like="ratio:")
    assert (ratios[inside] == 1.0).any(axis=None)  # random actions near +1 remove a block
    assert (ratios.drop(columns=inside) <= 0.8).all(axis=None) and (table["macs_ratio"] <= 0.5 + 1e-9).all()

    graph = discover_units(build_model("resnet20", 1, 10, (1, 8, 8)), (1, 8, 8))
    row = table[(ratios[inside] == 1.0).any(axis=1)].iloc[0]
    policy = policy_of_row(row, graph)
    policy.save(tmp_path / "removing.json")
    pruned_out = tmp_path / "prune"
    assert main(["prune", str(tiny_config), "--policy", str(tmp_path / "removing.json"), "--out", str(pruned_out),
                 "--quiet", *residual]) == 0
    modules = dict(load_pruned(pruned_out / "model.pt").named_modules())
    gone = [block for block in REMOVABLE if policy.ratios[f"{block}.conv1"] == 1.0]
    assert gone and all(isinstance(modules[block], nn.Identity) for block in gone)
    assert not any(isinstance(modules[block], nn.Identity) for block in set(REMOVABLE) - set(gone))
    summary = json.loads((pruned_out / "summary.json").read_text())
    assert summary["macs_ratio"] == pytest.approx(policy.macs_ratio(graph, 4))
    assert summary["export_max_abs_diff"]["onnx"] < 1e-4


def test_ratio_one_is_refused_for_a_unit_that_is_no_removable_block(tmp_path, tiny_config):
    from pruning.models import build_model
    from pruning.policy import SparsityPolicy
    from pruning.units import discover_units

    graph = discover_units(build_model("resnet20", 1, 10, (1, 8, 8)), (1, 8, 8))
    SparsityPolicy.from_ratios(graph, [1.0] + [0.0] * (len(graph.units) - 1)).save(tmp_path / "stem.json")
    result = run_cli("prune", str(tiny_config), "--policy", str(tmp_path / "stem.json"), "--out", str(tmp_path / "run"),
                     "model.name=resnet20", "model.kwargs={}", "data.name=digits", "data.options={}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ratio of unit 'conv1' must lie in [0, " in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("[::1]:6379", ("::1", 6379)),
])
def test_an_address_splits_into_host_and_port(address, expected):
    from search.ray_address import host_and_port

    assert host_and_port(address) == expected


def test_the_dashboard_refuses_a_taken_or_impossible_port_with_a_message(tmp_path):
    """Both were bind() tracebacks, the taken port's after the 'open http://...' line."""
    import optuna

    from search.review import sqlite_url

    storage = sqlite_url(str(tmp_path / "study.db"))
    optuna.create_study(storage=storage, study_name="s")
    (tmp_path / "search.json").write_text(json.dumps({"storage": storage}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("dashboard", str(tmp_path), "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    assert "open http" not in result.stdout
    result = run_cli("dashboard", str(tmp_path), "--port", "99999", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "argument --port: expected a TCP port 1-65535, got '99999'" in result.stderr
    # every interface: it serves, and says that it has no login
    port = closed_port()
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", str(tmp_path), "--host", "0.0.0.0",
                               "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=cli_env())
    try:
        said = "".join(server.stdout.readline() for _ in range(3))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"optuna-dashboard has no login: on 0.0.0.0 anyone who can reach this machine on port {port}" in said
    assert f"open http://0.0.0.0:{port}/dashboard/" in said


@pytest.mark.parametrize("command", [["search", "{cfg}", "--resume", "{run}"], ["dashboard", "{run}"]])
def test_a_damaged_run_state_is_named_not_a_traceback(tmp_path, tiny_config, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "search.json").write_text("{")
    result = run_cli(*[a.format(cfg=tiny_config, run=run) for a in command], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "run/search.json: not valid JSON" in result.stderr
    assert (run / "search.json").read_text() == "{"  # a resume that cannot start changes nothing


@pytest.mark.parametrize("flag, value, kept", [("--storage", "sqlite:///{tmp}/other.db", "sqlite:///{run}/study.db"),
                                              ("--storage-path", "{tmp}/shared", "{run}/ray")])
def test_a_resume_does_not_take_another_storage_silently(tmp_path, tiny_config, flag, value, kept):
    """The study and Tune's experiment stay where the search started; another --storage was ignored without a word."""
    run = tmp_path / "run"
    run.mkdir()
    state = json.dumps({"storage": f"sqlite:///{run}/study.db", "study_name": "tiny", "storage_path": f"{run}/ray",
                        "overrides": []})
    (run / "search.json").write_text(state)
    result = run_cli("search", str(tiny_config), "--resume", str(run), flag, value.format(tmp=tmp_path), cwd=tmp_path,
                     timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"--resume: {run} keeps its search in {flag} {kept.format(run=run)}, not {value.format(tmp=tmp_path)}; "
            f"leave {flag} out") in result.stderr
    assert (run / "search.json").read_text() == state and not (tmp_path / "shared").exists()


@pytest.mark.parametrize("command, out, message", [
    *[(c, "{taken}", "--out: {taken} is a file; expected a folder") for c in ("prune", "search", "sweep", "bench")],
    # under a file: the folder could not be made, a NotADirectoryError traceback after the work
    *[(c, "{taken}/run", "--out: cannot make {taken}/run: {taken} is a file, not a folder") for c in ("prune", "sweep")],
    ("latency-table", "{taken}/table.json", "--out: cannot make {taken}/table.json: {taken} is a file, not a folder"),
    ("latency-table", "{folder}", "--out: {folder} is a folder; expected a .json file"),
])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, tiny_config, command, out, message):
    taken, folder = tmp_path / "notes.txt", tmp_path / "tables.json"
    taken.write_text("mine")
    folder.mkdir()
    result = run_cli(command, str(tiny_config), "--out", out.format(taken=taken, folder=folder), "--quiet",
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message.format(taken=taken, folder=folder) in result.stderr
    assert "timing every layer" not in result.stderr  # refused before the work, not after it
    assert taken.read_text() == "mine" and not any(folder.iterdir())


def test_ctrl_c_in_a_searchs_set_up_leaves_no_folder_to_block_the_rerun(tmp_path, tiny_config, monkeypatch):
    """The floor sweep and search.json are written before the last set-up step; a Ctrl-C there used to leave a
    folder that refused a new search ('already holds a search') and had no Tune experiment to resume."""
    import search.search_job as search_job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_job, "load_warm_agent", interrupted)
    out = tmp_path / "run"
    assert main(["search", str(tiny_config), "--backend", "local", "--out", str(out), "--quiet"]) == 130
    assert not out.exists()


def test_a_held_claim_is_refused_while_its_heartbeat_runs_and_taken_over_after(tmp_path, monkeypatch):
    """Another machine's claim was never judged stale: a job that crashed on one node blocked its folder for good."""
    from pruning.errors import UserError
    from search import folder_claim

    monkeypatch.setattr(folder_claim, "HEARTBEAT_S", 0.05)
    path = tmp_path / ".claim"
    release = folder_claim.hold_claim(path, lambda held: f"held by {held['pid']}")
    before = path.stat().st_mtime
    time.sleep(0.3)
    assert path.stat().st_mtime > before  # the heartbeat touches it
    with pytest.raises(UserError, match=rf"held by {os.getpid()}"):
        folder_claim.hold_claim(path, lambda held: f"held by {held['pid']}")
    release()
    assert not path.exists()
    elsewhere = {"pid": 4242, "host": "another-node"}  # its process cannot be seen from here: only its heartbeat
    path.write_text(json.dumps(elsewhere))
    with pytest.raises(UserError, match="held by 4242"):
        folder_claim.hold_claim(path, lambda held: f"held by {held['pid']}")
    stopped = time.time() - folder_claim.STALE_AFTER_S - 5
    os.utime(path, (stopped, stopped))
    release = folder_claim.hold_claim(path, lambda held: f"held by {held['pid']}")
    assert json.loads(path.read_text()) == folder_claim.this_process()
    release()
    assert not path.exists()




@pytest.mark.parametrize("skew_s", [-600.0, 600.0])
def test_a_heartbeat_is_judged_by_the_file_systems_clock_not_this_machines(tmp_path, monkeypatch, skew_s):
    """A cluster node whose clock is minutes off the shared folder's server took a live claim for stale (and took
    the folder over from a running search), or kept a stale one for live."""
    from search import folder_claim

    live, stopped = tmp_path / "live.claim", tmp_path / "stopped.claim"
    live.write_text("{}")
    stopped.write_text("{}")
    long_ago = time.time() - folder_claim.STALE_AFTER_S - 30
    os.utime(stopped, (long_ago, long_ago))
    real_time = time.time
    monkeypatch.setattr(folder_claim.time, "time", lambda: real_time() + skew_s)  # this machine's clock is off
    assert not folder_claim.heartbeat_stopped(live)
    assert folder_claim.heartbeat_stopped(stopped)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.claim", "stopped.claim"]  # no probe left behind

def take_in_a_race(take: Callable[[], object], start, done, outcomes) -> None:
    """One of several processes that `take` a claim at the same moment; puts what happened."""
    from pruning.errors import UserError

    start.wait()
    try:
        take()
        outcomes.put("took it")
    except UserError as exc:
        outcomes.put(str(exc))
    except BaseException as exc:  # noqa: BLE001 - a crash is an outcome here
        outcomes.put(f"crashed: {exc!r}")
    done.wait()  # the winner holds its claim until every process has tried


@pytest.mark.parametrize("claim", ["driver claim", "search.json's set-up claim"])
def test_a_stale_claim_that_several_processes_take_over_at_once_goes_to_one_of_them(tmp_path, claim):
    """Jobs started together into a folder with a stale claim (resubmitted after a crash, say) each replaced it and
    all went on in one folder, and the temporary file they shared made some crash with a traceback."""
    import multiprocessing

    from search import folder_claim
    from search.search_job import claim_run_folder

    context, racers = multiprocessing.get_context("fork"), 6
    gone = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)
    dead = {"pid": gone, "host": socket.gethostname()}
    for race in range(6):
        folder = tmp_path / str(race)
        folder.mkdir()
        if claim == "driver claim":
            (folder / ".claim").write_text(json.dumps(dead))
            take = lambda: folder_claim.hold_claim(folder / ".claim", lambda held: f"held by pid {held.get('pid')}")  # noqa: E731
        else:
            (folder / "search.json").write_text(json.dumps({"setting_up": dead}))
            take = lambda: claim_run_folder(folder)  # noqa: E731
        start, done, outcomes = context.Barrier(racers), context.Barrier(racers), context.Queue()
        processes = [context.Process(target=take_in_a_race, args=(take, start, done, outcomes)) for _ in range(racers)]
        for process in processes:
            process.start()
        said = [outcomes.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        assert said.count("took it") == 1, said
        refusals = [s for s in said if s != "took it"]
        assert all(f"pid {gone}" not in s and not s.startswith("crashed") for s in refusals), said
        assert len(list(folder.glob(".*tmp"))) == len(list(folder.glob(".*takeover*"))) == 0

def test_a_set_up_claim_from_another_machine_is_stale_once_its_drivers_heartbeat_stops(tmp_path):
    from pruning.errors import UserError
    from search.folder_claim import STALE_AFTER_S
    from search.search_job import DRIVER_CLAIM, check_no_search_in

    elsewhere = {"pid": 4242, "host": "another-node"}
    (tmp_path / "search.json").write_text(json.dumps({"setting_up": elsewhere}))
    with pytest.raises(UserError, match=r"another search \(pid 4242 on another-node\) is setting up"):
        check_no_search_in(tmp_path)  # no driver claim yet: it may be about to take it
    (tmp_path / DRIVER_CLAIM).write_text(json.dumps(elsewhere))
    with pytest.raises(UserError, match="is setting up"):
        check_no_search_in(tmp_path)  # its heartbeat runs
    stopped = time.time() - STALE_AFTER_S - 5
    os.utime(tmp_path / DRIVER_CLAIM, (stopped, stopped))
    check_no_search_in(tmp_path)  # that node stopped: the folder may be taken over
