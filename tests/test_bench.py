"""`prunepilot bench` end to end on a tiny model: every part, the tables, the targets and the resume."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from search.cli import main

TINY_BENCH = """
model: {name: "tests.fixtures:tiny_cnn"}
data: {name: synthetic, options: {size: 10, n_train: 400, n_test: 100}}
train: {epochs: 3, batch_size: 64, lr: 0.05, augment: false}
prune: {importance: l1, steps: 2, finetune_epochs: 0.5, final_epochs: 1, distill: 0.5}
eval: {bn_batches: 2, bn_batch_size: 64, latency_repeats: 3}
sweep: {accuracy_floor: 0.3}
agent: {warmup_episodes: 2, net_arch: [16], batch_size: 8}
threads: 1
bench:
  methods: [uniform, ddpg]
  macs_targets: [0.6, 0.4]
  seeds: [0, 1]
  evaluations: 6
  efficiency_evaluations: 0
  transfer_model: vgg_small
  transfer_overrides: ["model.kwargs={widths: [8, M, 16, 16]}"]
  transfer_warm_seeds: [1]
  transfer_scratch_seeds: [2]
  zoo: ["tests.fixtures:tiny_cnn"]
"""


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    config = folder / "tiny.yaml"
    config.write_text(TINY_BENCH)
    out = folder / "out"
    # a module fixture is set up before the function-scoped cache isolation (conftest): the same cache, set here
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNEPILOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["bench", str(config), "--out", str(out), "--quiet"]) == 0
    return config, out


def test_every_method_target_and_seed_ran_with_the_same_budgets(bench_run):
    _, out = bench_run
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 * 2 * 2
    assert set(runs["method"]) == {"uniform", "ddpg"} and set(runs["seed"]) == {0, 1}
    # never over budget; on this tiny CNN the exact-target policies are few, and DDPG, having scored the ones
    # its actor reaches, stops early (repeats are free, and 10 episodes per budgeted evaluation end a search)
    assert runs[runs["method"] == "ddpg"]["evaluations"].between(3, 6).all()
    assert (runs[runs["method"] == "uniform"]["evaluations"] == 1).all()
    # the accuracy floor in the config must not move the operating points: each run meets its own target
    assert (runs["policy_macs_ratio"] <= runs["macs_target"] + 1e-9).all()
    assert (runs["macs_ratio"] <= runs["macs_target"] + 1e-9).all()
    assert runs["latency_threads"].notna().all() and (runs["latency_b64_ms"] > 0).all()  # re-timed after the grid
    for target in ("m60", "m40"):  # the seeds are different searches, not one search twice
        tables = [pd.read_csv(out / "runs" / f"ddpg-{target}-s{seed}" / "evaluations.csv") for seed in (0, 1)]
        ratios = [t[[c for c in t.columns if c.startswith("ratio:")]].to_numpy() for t in tables]
        assert ratios[0].shape == ratios[1].shape and (ratios[0] != ratios[1]).any()
    table = pd.read_csv(out / "table.csv")
    assert set(table.columns) >= {"val_accuracy_mean", "val_accuracy_std", "test_accuracy_mean", "speedup_b64_mean"}
    assert (table["seeds"] == 2).all() and len(table) == 4
    assert (out / "best_reward.png").stat().st_size > 0


def test_transfer_and_zoo_parts_and_the_summary(bench_run):
    _, out = bench_run
    transfer = json.loads((out / "transfer.json").read_text())
    assert transfer["warm_evaluations"] == 2 and transfer["scratch_evaluations"] == 6
    # the warm start scores the transferred policies first, so it never ends below zero-shot
    assert transfer["warm_best_reward"] >= transfer["zero_shot_reward"] - 1e-9
    assert transfer["source_policy"].endswith("ddpg-m60-s0/best_policy.json")
    rows = pd.read_csv(out / "transfer.csv")["run"].tolist()
    assert rows == ["uniform (rule)", "zero-shot: the agent's policy", "zero-shot: source best policy, resampled",
                    "warm-started search, seed 0", "warm-started search, seed 1", "from-scratch search, seed 0",
                    "from-scratch search, seed 2"]
    # the second warm start is another search (its own seed), from the same agent and policy
    warm = [pd.read_csv(out / "transfer" / "vgg_small-m60" / name / "evaluations.csv") for name in ("warm-start", "warm-start-s1")]
    assert len(warm[1]) == 2 and warm[0]["accuracy"].iloc[0] == warm[1]["accuracy"].iloc[0]  # the seed policy first
    assert list(transfer["warm_seed_best_rewards"]) == ["seed 0", "seed 1"]
    # the second from-scratch search is another search with the whole budget; the target is also read on their mean
    scratch = [pd.read_csv(out / "transfer" / "vgg_small-m60" / name / "evaluations.csv") for name in ("from-scratch", "from-scratch-s2")]
    assert len(scratch[1]) == 6 and not scratch[0][["accuracy"]].equals(scratch[1][["accuracy"]])
    assert list(transfer["scratch_seed_best_rewards"]) == ["seed 0", "seed 2"]
    assert transfer["scratch_mean_best_reward"] == pytest.approx(sum(transfer["scratch_seed_best_rewards"].values()) / 2)
    assert transfer["met_on_scratch_mean"] == (transfer["warm_mean_best_reward"] >= transfer["level_98pct_of_scratch_mean"])
    for name in ("warm-start", "warm-start-s1", "from-scratch", "from-scratch-s2"):  # kept beside the tables, as the comparison's are
        assert (out / "reuse" / "evaluations" / f"{name}.csv").is_file()
        assert (out / "reuse" / "policies" / f"{name}.json").is_file()
    assert transfer["warm_mean_best_reward"] == pytest.approx(sum(transfer["warm_seed_best_rewards"].values()) / 2)
    source = out / "runs" / "ddpg-m60-s0"  # the source's run folder is not committed: its agent and policy are kept
    for name in ("agent.zip", "agent.json", "best_policy.json"):
        assert (out / "reuse" / "source" / name).read_bytes() == (source / name).read_bytes()
    zoo = pd.read_csv(out / "zoo.csv")
    assert len(zoo) == 2 and (zoo["macs_reduction"] > 1.5).all() and (zoo["dense_b64_ms"] > 0).all()
    summary = (out / "summary.md").read_text()
    for heading in ("## Comparison", "## Targets", "## Policy reuse", "## Speed-up across the model zoo"):
        assert heading in summary
    assert "40% MACs, search reward: ddpg" in summary
    assert "over the 2 warm starts (one per search seed): mean best reward" in summary
    assert "against the 2 from-scratch searches (seed 0 " in summary


def test_a_second_call_continues_instead_of_running_again(bench_run, capsys):
    config, out = bench_run
    logs = sorted((out / "runs").glob("*.log"))
    before = {p: p.stat().st_mtime_ns for p in logs}
    assert main(["bench", str(config), "--out", str(out), "--quiet", "--parts", "comparison"]) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == before
    summary = (out / "summary.md").read_text()
    assert "## Policy reuse" in summary  # rebuilt from everything on disk
    # and its rerun names every part the folder holds (efficiency ran no evaluations here, so left nothing)
    assert f"`prunepilot bench {config} --out {out} --parts comparison,transfer,zoo`" in summary


def test_collect_only_tabulates_copied_runs_and_starts_none(bench_run, tmp_path):
    """A protocol split across machines: runs finished elsewhere are copied in, the rest are named as missing."""
    import shutil

    config, out = bench_run
    merged = tmp_path / "merged"
    for name in ("uniform-m60-s0", "ddpg-m60-s0", "ddpg-m60-s1"):
        shutil.copytree(out / "runs" / name, merged / "runs" / name)
    assert main(["bench", str(config), "--out", str(merged), "--quiet", "--parts", "comparison", "--collect-only"]) == 0
    assert sorted(p.name for p in (merged / "runs").iterdir()) == ["ddpg-m60-s0", "ddpg-m60-s1", "uniform-m60-s0"]
    table = pd.read_csv(merged / "table.csv")
    assert sorted(zip(table["method"], table["seeds"])) == [("ddpg", 2), ("uniform", 1)]
    assert set(table["device"]) == {"cpu"}
    summary = (merged / "summary.md").read_text()
    assert "Partial protocol:** 5 run(s)" in summary and "uniform-m60-s1" in summary and "ddpg-m40-s0" in summary
    assert f"prunepilot bench {config} --out {merged} --parts comparison --collect-only" in summary  # how it was made


def test_a_fresh_clone_goes_on_from_the_committed_tables(bench_run, tmp_path, capsys):
    """Run folders are not committed: a clone has runs.csv and the kept evaluations and policies only. It runs
    only what runs.csv lacks, tables the rest as recorded, and refuses other settings as with run folders."""
    import shutil

    config, out = bench_run
    original = pd.read_csv(out / "runs.csv")
    assert sorted(p.stem for p in (out / "evaluations").glob("*.csv")) == sorted(original["run"])
    assert sorted(p.stem for p in (out / "policies").glob("*.json")) == sorted(original["run"])
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("runs", "transfer"))
    unfinished = "ddpg-m40-s1"
    original[original["run"] != unfinished].to_csv(clone / "runs.csv", index=False)
    (clone / "evaluations" / f"{unfinished}.csv").unlink()

    assert main(["bench", str(config), "--out", str(clone), "--quiet", "--parts", "comparison",
                 "agent.noise_decay=0.9"]) == 2
    assert "agent.noise_decay: 0.95 -> 0.9" in capsys.readouterr().err and not (clone / "runs").exists()

    assert main(["bench", str(config), "--out", str(clone), "--quiet", "--parts", "comparison"]) == 0
    assert [p.name for p in (clone / "runs").iterdir() if p.is_dir()] == [unfinished]
    runs = pd.read_csv(clone / "runs.csv")
    assert runs["run"].tolist() == original["run"].tolist()  # grid order, as before
    assert dict(zip(runs["run"], runs["source"])) == {r: "here" if r == unfinished else "recorded" for r in runs["run"]}
    recorded = runs[runs["source"] == "recorded"].set_index("run")
    before = original.set_index("run").loc[recorded.index]
    for column in ("val_accuracy", "test_accuracy", "latency_b64_ms", "speedup_b64"):  # as recorded, not re-timed
        assert recorded[column].tolist() == pytest.approx(before[column].tolist())
    assert (pd.read_csv(clone / "table.csv")["seeds"] == 2).all()
    assert (clone / "evaluations" / f"{unfinished}.csv").is_file() and not (clone / "missing.json").exists()
    summary = (clone / "summary.md").read_text()
    assert "**Recorded runs:** 7 run(s)" in summary and "Partial protocol" not in summary

    # a narrower call (one method) tables that method alone, and keeps every other run in runs.csv: the clone has
    # no run folders to collect them from again
    assert main(["bench", str(config), "--out", str(clone), "--quiet", "--parts", "comparison", "--collect-only",
                 "bench.methods=[uniform]"]) == 0
    assert set(pd.read_csv(clone / "table.csv")["method"]) == {"uniform"}
    assert sorted(pd.read_csv(clone / "runs.csv")["run"]) == sorted(original["run"])
    assert main(["bench", str(config), "--out", str(clone), "--quiet", "--parts", "comparison", "--collect-only"]) == 0
    assert pd.read_csv(clone / "runs.csv")["run"].tolist() == original["run"].tolist()
    assert (pd.read_csv(clone / "table.csv")["seeds"] == 2).all()


def test_runs_on_another_dense_model_are_never_tabled_together(bench_run, tmp_path, capsys):
    """Another machine retrains the same recipe into other weights under the same cache key: refused, not mixed."""
    import shutil

    import torch

    from pruning.checkpoint import load_checkpoint

    config, out = bench_run
    runs = pd.read_csv(out / "runs.csv")
    assert runs["dense_digest"].nunique() == 1 and runs["dense_val_accuracy"].notna().all()
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("runs", "transfer"))
    runs[runs["run"] != "ddpg-m40-s1"].to_csv(clone / "runs.csv", index=False)  # one run left to run
    from pruning.baseline import baseline_path
    from pruning.config import load_config
    from pruning.data import load_data

    cfg = load_config(config)  # the bench's own baseline: other tests' tiny_cnn baselines may share the cache
    cached = baseline_path(cfg, load_data(cfg.data.name, None, cfg.data.val_fraction, cfg.data.val_size,
                                          **cfg.data.options))
    original = cached.read_bytes()
    payload = load_checkpoint(cached)
    payload["state_dict"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        torch.save(payload, cached)
        assert main(["bench", str(config), "--out", str(clone), "--quiet", "--parts", "comparison"]) == 2
        err = capsys.readouterr().err
        assert "7 run(s) were made on another dense model" in err and "new --out folder" in err
        assert not (clone / "runs").exists()  # refused before anything ran
    finally:
        cached.write_bytes(original)
    assert main(["bench", str(config), "--out", str(clone), "--quiet", "--parts", "comparison"]) == 0
    assert pd.read_csv(clone / "runs.csv")["dense_digest"].nunique() == 1


def test_a_folder_continues_only_with_the_settings_of_its_runs(bench_run, tmp_path, capsys):
    import shutil

    config, out = bench_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    recorded = (copy / "config.json").read_text()
    summary = (copy / "summary.md").read_text()
    assert main(["bench", str(config), "--out", str(copy), "--quiet", "--parts", "comparison",
                 "agent.noise_decay=0.9", "eval.bn_batches=3"]) == 2
    err = capsys.readouterr().err
    assert "agent.noise_decay: 0.95 -> 0.9" in err and "eval.bn_batches: 2 -> 3" in err and "new --out" in err
    assert (copy / "config.json").read_text() == recorded and (copy / "summary.md").read_text() == summary
    # picking part of the grid is not a change of settings: the finished runs are tabled again, none rerun
    assert main(["bench", str(config), "--out", str(copy), "--quiet", "--parts", "comparison",
                 "bench.seeds=[0]", "bench.methods=[ddpg]"]) == 0
    table = pd.read_csv(copy / "table.csv")
    assert set(table["method"]) == {"ddpg"} and (table["seeds"] == 1).all()
    assert "'bench.seeds=[0]' 'bench.methods=[ddpg]'" in (copy / "summary.md").read_text()  # quoted for a shell


def test_a_variant_runs_beside_its_searcher_under_its_own_name(tmp_path):
    """AMC's DDPG and DDPG with screening in one grid; the targets check each RL method against the non-RL ones;
    the variant's agent is the one reused (`bench.transfer_method`), and the searches on the transfer model run
    with the variant's settings."""
    config = tmp_path / "variants.yaml"
    variants = ("{ddpg_gp: {searcher: ddpg, overrides: [agent.candidates=4, agent.screen_after=2]}, "
                "random_gp: {searcher: ddpg, baseline: true, overrides: [agent.warmup_episodes=6, agent.candidates=4]}}")
    config.write_text(TINY_BENCH.replace("methods: [uniform, ddpg]", "methods: [uniform, random_gp, ddpg, ddpg_gp]")
                      .replace("seeds: [0, 1]", "seeds: [0]").replace("macs_targets: [0.6, 0.4]", "macs_targets: [0.4]")
                      .replace("transfer_warm_seeds: [1]", "transfer_method: ddpg_gp")
                      .replace("transfer_scratch_seeds: [2]", "")
                      .replace('16, 16]}"]', '16, 16]}", agent.warm_start_random_candidates=2]')  # valid with 4 only
                      .replace("zoo: [", f"final_pass: false\n  variants: {variants}\n  zoo: ["))
    out = tmp_path / "out"
    assert main(["bench", str(config), "--out", str(out), "--quiet", "--parts", "comparison,transfer"]) == 0
    transfer = json.loads((out / "transfer.json").read_text())
    assert transfer["method"] == "ddpg_gp"
    assert transfer["source_agent"] == str(out / "runs" / "ddpg_gp-m40-s0" / "agent.zip")
    assert transfer["warm_evaluations"] == 2 and transfer["scratch_evaluations"] == 6
    searches = out / "transfer" / "vgg_small-m40"
    for search in ("warm-start", "from-scratch"):
        overrides = json.loads((searches / search / "search.json").read_text())["overrides"]
        assert "search.searcher=ddpg" in overrides and overrides[-3:-1] == ["agent.candidates=4", "agent.screen_after=2"]
        assert "agent.warm_start_random_candidates=2" in overrides
    scratch = pd.read_csv(searches / "from-scratch" / "evaluations.csv")
    assert scratch["predicted_reward"].notna().sum() == len(scratch) - 2  # screened, as the variant is
    assert "Searches of `ddpg_gp`" in (out / "summary.md").read_text()
    runs = pd.read_csv(out / "runs.csv").set_index("method")
    assert list(runs.index) == ["uniform", "random_gp", "ddpg", "ddpg_gp"]
    screened = pd.read_csv(out / "evaluations" / "ddpg_gp-m40-s0.csv")
    plain = pd.read_csv(out / "evaluations" / "ddpg-m40-s0.csv")
    assert screened["predicted_reward"].notna().sum() == len(screened) - 2  # after the first 2 scored policies
    assert "predicted_reward" not in plain
    assert json.loads((out / "runs" / "ddpg_gp-m40-s0" / "search.json").read_text())["overrides"][-2:] == [
        "agent.candidates=4", "agent.screen_after=2"]
    summary = (out / "summary.md").read_text()
    for rl in ("ddpg", "ddpg_gp"):
        line = next(l for l in summary.splitlines() if l.startswith(f"- 40% MACs, search reward: {rl} "))
        assert "best baseline uniform" in line or "best baseline random_gp" in line  # never the other RL method
    assert "search reward: random_gp " not in summary  # a baseline, although it runs the ddpg searcher


@pytest.mark.parametrize("args, message", [
    (["bench.methods=[uniform, gridsearch]"], "bench.methods: unknown searcher 'gridsearch'"),
    (["bench.methods=[ddpg_x]", "bench.variants={ddpg_x: {searcher: ddpq}}"],
     "bench.variants.ddpg_x.searcher: unknown searcher 'ddpq'"),
    (["bench.methods=[tpe]", "bench.variants={tpe: {searcher: ddpg}}"], "bench.variants.tpe: a variant needs a name"),
    (["bench.methods=[ddpg_x]", "bench.variants={ddpg_x: {searcher: ddpg, overrides: [agent.candidates=0]}}"],
     "bench.variants.ddpg_x.overrides: field `agent.candidates`"),
    (["bench.methods=[ddpg_x]", "bench.variants={ddpg_x: {searcher: ddpg, overrides: [candidates]}}"],
     "bench.variants.ddpg_x.overrides: override 'candidates': expected dotted.key=value"),
    # each method's agent reads the config's agent settings: sac refuses AMC's noise options up front, not in its runs
    (["bench.methods=[ddpg, sac]", "agent.repeat_noise_growth=1.1"],
     "bench.methods: sac: field `agent.repeat_noise_growth`: expected 1 with sac"),
    (["bench.methods=[sac_x]", "bench.variants={sac_x: {searcher: sac, overrides: [agent.candidates=4, "
      "agent.candidate_noise=spread]}}"], "bench.variants.sac_x.overrides: field `agent.candidate_noise`: expected "
                                          "'schedule' with sac"),
    (["bench.methods=[td3_x]", "bench.variants={td3_x: {searcher: td3, overrides: [agent.name=sac]}}"],
     "bench.variants.td3_x.overrides: search.searcher is 'td3' but agent.name is 'sac'"),
    # agent.kwargs the method's agent does not take: refused before the first run, not by every run
    (["bench.methods=[ddpg, td3]", "agent.kwargs.policy_delay=3"],
     "bench.methods: ddpg: agent.kwargs.policy_delay: stable-baselines3's DDPG takes no keyword 'policy_delay'"),
    (["bench.methods=[ddpg_x]", "bench.variants={ddpg_x: {searcher: ddpg, overrides: [agent.kwargs.tau=0.1]}}"],
     "bench.variants.ddpg_x.overrides: agent.kwargs.tau: set by agent.tau"),
    # runs/<variant>-m50-s0: `../x` wrote its run folder, log and tables beside runs/
    (["bench.methods=[../x]", "bench.variants={../x: {searcher: random}}"],
     "field `bench.variants`: variant name '../x': expected a name for files and folders"),
    (["bench.macs_targets=[1.5]"], "field `bench.macs_targets`"),
    # a repeated target ran its runs twice over; the list was also said twice ("got [..] (got [..])")
    (["bench.macs_targets=[0.5, 0.5]"], "field `bench.macs_targets`: expected a non-empty list of MACs targets in "
                                        "(0, 1) without repeats (got [0.5, 0.5])\n"),
    (["bench.seeds=[]"], "field `bench.seeds`: expected a non-empty list without repeats (got [])\n"),
    # found only when the part ran, after the comparison's runs
    (["bench.zoo=[lenet5, resnet18]"], "bench.zoo: unknown model 'resnet18'"),
    (["bench.transfer_model=resnet5"], "bench.transfer_model: unknown model 'resnet5'"),
    (["bench.transfer_method=tpe"], "bench.transfer_method: expected an agent searcher"),
    (["bench.methods=[ddpg, random_x]", "bench.transfer_method=random_x",
      "bench.variants={random_x: {searcher: ddpg, baseline: true}}"], "bench.transfer_method: expected an agent searcher"),
    (["bench.transfer_method=td3"], "bench.transfer_method: policy reuse starts from the td3 agent, so bench.methods "
                                    "must include td3"),
    (["bench.transfer_warm_seeds=[0, 2]"], "bench.transfer_warm_seeds must list seeds without repeats and without the "
                                           "first of bench.seeds (0"),
    (["bench.transfer_scratch_seeds=[1, 1]"], "bench.transfer_scratch_seeds must list seeds without repeats"),
    (["--parts", "comparison,speed"], "--parts: unknown part(s) ['speed']"),
    (["--collect-only"], "--collect-only: applies to the comparison part alone"),
    (["--collect-only", "--parts", "comparison"], "holds no finished run of this comparison"),  # was an empty summary
])
def test_bad_bench_input_is_a_user_error(tmp_path, capsys, args, message):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_BENCH)
    assert main(["bench", str(config), "--out", str(tmp_path / "out"), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("warm, scratch, met", [
    ([0.30, 0.392], [0.2, 0.3, 0.35, 0.38, 0.39, 0.4, 0.4, 0.4], True),     # 0.392 >= 98% of 0.4 with 2 of 8
    ([0.30, 0.38], [0.2, 0.3, 0.35, 0.38, 0.39, 0.4, 0.4, 0.4], False),     # 0.38 < 98% of 0.4
    ([-0.40, -0.36], [-0.5, -0.4, -0.36, -0.35, -0.36, -0.4, -0.5, -0.5], False),  # below -0.35 - 2% of 0.35
    ([-0.40, -0.355], [-0.5, -0.4, -0.36, -0.35, -0.36, -0.4, -0.5, -0.5], True),  # a plain ratio would flip these
    ([0.39, 0.40, 0.41], [0.2, 0.3, 0.35, 0.38, 0.39, 0.4, 0.4, 0.4], False),  # 3 evaluations are more than 25% of 8
])
def test_the_transfer_target_reads_right_for_both_signs_of_reward(tmp_path, warm, scratch, met):
    from bench.grid import Run
    from bench.transfer import transfer_table

    runs = {}
    for name, rewards in (("warm", warm), ("scratch", scratch)):
        runs[name] = Run(name, "search", "c.yaml", tmp_path / name)
        runs[name].out.mkdir()
        pd.DataFrame({"state": "COMPLETE", "reward": rewards, "accuracy": [1 + r for r in rewards],
                      "macs_ratio": 0.5}).to_csv(runs[name].out / "evaluations.csv", index=False)
    zero = Run("zero", "transfer", "c.yaml", tmp_path / "zero")
    zero.out.mkdir()
    candidate = {"source": "agent a.zip", "reward": warm[0], "accuracy": 0.5, "macs_ratio": 0.5}
    (zero.out / "transfer.json").write_text(json.dumps({**candidate, "candidates": [candidate],
                                                        "uniform_accuracy": 0.4, "uniform_macs_ratio": 0.5}))
    frame, check = transfer_table(zero, runs["warm"], runs["scratch"])
    assert check["met"] is met and "met_on_mean" not in check
    warm_row = frame.set_index("run").loc["warm-started search"]
    assert warm_row["found at"] == 1 + warm.index(max(warm)) and warm_row["val accuracy"] == 1 + max(warm)
    # a second seed's warm start far below the from-scratch best: the mean misses the level whatever the first did
    other = Run("warm-start-s7", "search", "c.yaml", tmp_path / "other", ("search.seed=0", "search.seed=7"))
    other.out.mkdir()
    low = [min(scratch) - abs(min(scratch))] * len(warm)
    pd.DataFrame({"state": "COMPLETE", "reward": low, "accuracy": 0.1, "macs_ratio": 0.5}).to_csv(
        other.out / "evaluations.csv", index=False)
    frame, check = transfer_table(zero, runs["warm"], runs["scratch"], [other])
    assert check["met"] is met and check["met_on_mean"] is False
    assert check["warm_seeds_meeting_level"] == int(max(warm) >= check["level_98pct"]) and check["warm_mean_best_reward"] == pytest.approx((max(warm) + low[0]) / 2)
    assert frame["run"].tolist()[-3:] == ["warm-started search, warm", "warm-started search, seed 7", "from-scratch search"]
    # a second from-scratch seed far below the first: the level drops to 98% of their mean, which the first seed's warm
    # start meets whenever it met the first seed's level
    assert "met_on_scratch_mean" not in check
    frame, check = transfer_table(zero, runs["warm"], runs["scratch"], (), [other])
    mean = (max(scratch) + low[0]) / 2
    assert check["scratch_mean_best_reward"] == pytest.approx(mean)
    assert check["level_98pct_of_scratch_mean"] == pytest.approx(mean - 0.02 * abs(mean))
    assert check["met"] is met and check["met_on_scratch_mean"] is (max(warm) >= check["level_98pct_of_scratch_mean"]
                                                                    and len(warm) <= 2)
    assert check["met_on_scratch_mean"] or not met
    assert frame["run"].tolist()[-2:] == ["from-scratch search, scratch", "from-scratch search, seed 7"]


def test_transfer_from_an_earlier_benchmark_source(bench_run, tmp_path):
    config, out = bench_run
    args = ["bench", str(config), "--parts", "transfer", "--quiet", "bench.methods=[uniform]"]
    missing = tmp_path / "nowhere"
    assert main([*args, "--out", str(tmp_path / "a"), f"bench.transfer_source={missing}"]) == 2
    assert not (tmp_path / "a").exists()
    assert main([*args, "--out", str(tmp_path / "b"), f"bench.transfer_source={out / 'runs' / 'ddpg-m60-s0'}"]) == 0
    transfer = json.loads((tmp_path / "b" / "transfer.json").read_text())
    # a transfer-only folder: rerunning its summary's command must not start the comparison it never had
    assert f"--out {tmp_path / 'b'} --parts transfer 'bench.methods=[uniform]'" in (tmp_path / "b" / "summary.md").read_text()
    assert transfer["source_agent"] == str(out / "runs" / "ddpg-m60-s0" / "agent.zip")
    assert transfer["warm_evaluations"] == 2
    # a clone has no run folders: the kept source reruns the transfer, also from inside the folder it is kept in
    clone = tmp_path / "clone"
    shutil.copytree(tmp_path / "b" / "reuse" / "source", clone / "reuse" / "source")
    assert main([*args, "--out", str(clone), f"bench.transfer_source={clone / 'reuse' / 'source'}"]) == 0
    again = json.loads((clone / "transfer.json").read_text())
    assert again["zero_shot_reward"] == transfer["zero_shot_reward"]  # same agent and policy, same zero-shot


def test_transfer_warm_starts_screen_with_a_prior_of_the_source_search(bench_run, tmp_path, capsys):
    config, out = bench_run
    source = out / "runs" / "ddpg-m60-s0"
    args = ["bench", str(config), "--parts", "transfer", "--quiet", "bench.methods=[uniform]",
            f"bench.transfer_source={source}", "bench.transfer_prior=true"]
    # the tiny bench's DDPG sends every proposal unscreened: refused before anything is written
    assert main([*args, "--out", str(tmp_path / "unscreened")]) == 2
    assert "bench.transfer_prior: a prior screens an agent's candidates" in capsys.readouterr().err
    assert not (tmp_path / "unscreened").exists()
    folder = tmp_path / "prior"
    screened = 'bench.transfer_overrides=["model.kwargs={widths: [8, M, 16, 16]}", agent.candidates=4]'
    assert main([*args, "--out", str(folder), screened]) == 0
    assert json.loads((folder / "transfer.json").read_text())["prior"] is True
    assert "screen with a prior of the source search's scored policies" in (folder / "summary.md").read_text()
    assert (folder / "reuse" / "source" / "evaluations.csv").read_bytes() == (source / "evaluations.csv").read_bytes()
    runs = folder / "transfer" / "vgg_small-m60"
    for name in ("warm-start", "warm-start-s1"):  # the warm starts screen with the prior from their second proposal
        assert "--prior" in (runs / f"{name}.log").read_text().splitlines()[0]
        assert pd.read_csv(runs / name / "evaluations.csv")["prior_weight"].iloc[1:].notna().all()
    for name in ("zero-shot", "from-scratch", "from-scratch-s2"):
        assert "--prior" not in (runs / f"{name}.log").read_text().splitlines()[0]
    assert "prior_weight" not in pd.read_csv(runs / "from-scratch" / "evaluations.csv")


def test_a_clone_adds_a_transfer_seed_without_rerunning_the_recorded_searches(bench_run, tmp_path, capsys):
    """A clone has reuse/ (kept evaluations, zero-shot result, source agent) but no run folders: it runs only the
    search whose kept evaluations are missing (and the zero-shot run, which trains the target's baseline first),
    tables the others as recorded, and refuses searches made on another dense model."""
    config, out = bench_run
    original = json.loads((out / "transfer.json").read_text())
    assert original["recorded_runs"] == [] and len(set(original["dense_digests"].values())) == 1
    reuse = out / "reuse"
    assert (reuse / "zero-shot.json").is_file()
    assert sorted(p.stem for p in (reuse / "evaluations").glob("*.csv")) == sorted(original["dense_digests"])
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("runs", "transfer"))
    (clone / "reuse" / "evaluations" / "from-scratch-s2.csv").unlink()
    args = ["bench", str(config), "--out", str(clone), "--quiet", "--parts", "transfer",
            f"bench.transfer_source={clone / 'reuse' / 'source'}"]  # the clone's copy: the same agent, no new setting

    assert main(args) == 0
    ran = sorted(p.name for p in (clone / "transfer" / "vgg_small-m60").iterdir() if p.is_dir())
    assert ran == ["from-scratch-s2", "zero-shot"]
    again = json.loads((clone / "transfer.json").read_text())
    assert again["recorded_runs"] == ["warm-start", "from-scratch", "warm-start-s1"]
    for key in ("warm_seed_best_rewards", "scratch_seed_best_rewards", "zero_shot_reward", "met", "met_on_scratch_mean"):
        assert again[key] == original[key]  # recorded as kept; the rerun seed and zero-shot are deterministic on CPU
    assert (clone / "reuse" / "evaluations" / "from-scratch-s2.csv").is_file()
    assert "recorded runs (read from reuse/, their folders not here): warm-start" in (clone / "summary.md").read_text()

    # everything kept, nothing to run: not even the zero-shot run
    bare = tmp_path / "bare"
    shutil.copytree(clone, bare, ignore=shutil.ignore_patterns("runs", "transfer"))
    assert main([*args[:3], str(bare), *args[4:-1], f"bench.transfer_source={bare / 'reuse' / 'source'}"]) == 0
    assert not (bare / "transfer").exists()
    assert json.loads((bare / "transfer.json").read_text())["recorded_runs"][0] == "zero-shot"

    # a recorded search on another dense model than the one the clone's new search uses: refused, nothing rewritten
    marked = json.loads((bare / "transfer.json").read_text())
    marked["dense_digests"]["warm-start"] = "0" * 16
    (bare / "transfer.json").write_text(json.dumps(marked))
    (bare / "reuse" / "evaluations" / "from-scratch-s2.csv").unlink()
    assert main([*args[:3], str(bare), *args[4:-1], f"bench.transfer_source={bare / 'reuse' / 'source'}"]) == 2
    assert "2 different dense models" in capsys.readouterr().err
    assert json.loads((bare / "transfer.json").read_text()) == marked


def test_a_pinned_source_checkpoint_does_not_follow_the_transfer_to_another_model(bench_run, tmp_path):
    config, out = bench_run
    source = out / "runs" / "ddpg-m60-s0"
    pinned = json.loads((source / "search_summary.json").read_text())["baseline"]["checkpoint"]
    # the bench configs pin their dense model: the transfer model (vgg_small) must train its own, not load this one
    args = ["bench", str(config), "--parts", "transfer", "--quiet", "bench.methods=[uniform]", "--out",
            str(tmp_path / "pinned"), f"bench.transfer_source={source}", f"model.checkpoint={pinned}"]
    assert main(args) == 0
    zero = json.loads((tmp_path / "pinned" / "transfer" / "vgg_small-m60" / "zero-shot" / "transfer.json").read_text())
    assert zero["candidates"] and all(c["macs_ratio"] <= 0.6 + 1e-9 for c in zero["candidates"])


def test_resampling_moves_every_run_policy_to_another_model(bench_run):
    from bench.resampling import main as resampling

    config, out = bench_run
    other = ["model.name=vgg_small", "model.kwargs={widths: [8, M, 16, 16]}"]
    assert resampling([str(out), str(config), "--target", "0.6", *other, "--random", "2"]) == 0
    frame = pd.read_csv(out / "resampling-vgg_small-m60.csv")
    moved = frame[frame["how"].isin(["by kind", "by depth"])]
    assert len(moved) == 2 * 2 * 2  # uniform and ddpg runs, 2 seeds, both ways
    assert (frame["how"] == "agent zero-shot").sum() == 2 and (frame["how"] == "random").sum() == 2
    assert (frame["macs_ratio"] <= 0.6 + 1e-9).all() and (moved["macs_ratio"] > 0.5).all()
    assert resampling([str(out), str(config), "--target", "0.3", *other]) == 2  # no runs at that target


def test_a_search_only_table_leaves_out_the_final_pass_columns():
    from bench.comparison import aggregate, display_table

    runs = pd.DataFrame([{"run": f"ddpg-m50-s{s}", "method": "ddpg", "macs_target": 0.5, "seed": s, "evaluations": 200,
                          "search_seconds": 10.0, "reward": -0.3 + s / 100, "val_accuracy": 0.7 + s / 100}
                         for s in (0, 1)])
    table = display_table(aggregate(runs))
    assert list(table.columns) == ["MACs target", "method", "evals", "seeds", "val acc % (adaptive BN)", "reward",
                                   "search s"]
    assert table.loc[0, "val acc % (adaptive BN)"] == "70.50 ± 0.71"


def test_the_table_shows_a_seed_that_stopped_before_its_budget():
    from bench.comparison import aggregate, display_table

    runs = pd.DataFrame([{"run": f"tpe-m25-s{s}", "method": "tpe", "macs_target": 0.25, "seed": s, "evaluations": n,
                          "search_seconds": 10.0, "reward": -0.9, "val_accuracy": 0.3} for s, n in ((0, 45), (1, 200))]
                        + [{"run": "ddpg-m25-s0", "method": "ddpg", "macs_target": 0.25, "seed": 0, "evaluations": 200,
                            "search_seconds": 10.0, "reward": -0.8, "val_accuracy": 0.3}])
    table = display_table(aggregate(runs)).set_index("method")
    assert table.loc["tpe", "evals"] == "45–200" and table.loc["ddpg", "evals"] == "200"


def test_latency_forms_times_every_finished_run_in_each_form(bench_run, tmp_path, capsys):
    from bench.latency_forms import main as forms_main

    _, out = bench_run
    forms_main([str(out), "--repeats", "3", "--rounds", "1", "--threads", "1", "--onnxruntime"])
    frame = pd.read_csv(out / "latency_forms-t1.csv")
    finished = sorted(p.parent.name for p in (out / "runs").glob("*/model.pt"))
    assert sorted(set(frame["run"])) == finished and len(frame) == 2 * len(finished)  # batch 1 and 64 each
    assert set(frame["macs_target"]) == {0.6, 0.4}
    for form in ("eager", "folded", "deployed", "onnxruntime"):
        assert (frame[f"{form}_dense_ms"] > 0).all() and (frame[f"{form}_pruned_ms"] > 0).all()
        ratio = frame[f"{form}_speedup"] / frame["macs_reduction"]
        assert ratio.to_numpy() == pytest.approx(frame[f"{form}_speedup_over_macs_reduction"].to_numpy())
    md = (out / "latency_forms-t1.md").read_text()
    assert "## Mean over runs" in md and f"python -m bench.latency_forms {out}" in md
    with pytest.raises(SystemExit, match="no finished run"):
        forms_main([str(tmp_path)])
    with pytest.raises(SystemExit, match="--threads >= 1"):
        forms_main([str(out), "--threads", "0"])


def test_latency_forms_keeps_the_timing_of_runs_whose_models_are_gone(bench_run, tmp_path):
    from bench.latency_forms import main as forms_main

    _, out = bench_run
    earlier = out / "latency_forms-t1.csv"
    forms_main([str(out), "--repeats", "3", "--rounds", "1", "--threads", "1"])
    frame = pd.read_csv(earlier)
    gone = frame.iloc[:1].assign(run="timed-on-another-clone")
    pd.concat([frame, gone]).to_csv(earlier, index=False)
    before = earlier.read_text()
    with pytest.raises(SystemExit, match="timed-on-another-clone.*--out FOLDER"):
        forms_main([str(out), "--repeats", "3", "--rounds", "1", "--threads", "1"])
    assert earlier.read_text() == before
    forms_main([str(out), "--repeats", "3", "--rounds", "1", "--threads", "1", "--out", str(tmp_path / "elsewhere")])
    assert earlier.read_text() == before
    assert set(pd.read_csv(tmp_path / "elsewhere" / "latency_forms-t1.csv")["run"]) == set(frame["run"])
    assert f"--out {tmp_path / 'elsewhere'}" in (tmp_path / "elsewhere" / "latency_forms-t1.md").read_text()
    forms_main([str(out), "--repeats", "3", "--rounds", "1", "--threads", "1", "--replace"])
    assert set(pd.read_csv(earlier)["run"]) == set(frame["run"])


def test_final_passes_of_chosen_policies_are_tabled_with_their_retimed_speedups(bench_run, tmp_path):
    from bench.final_passes import main as final_main
    from bench.latency_forms import main as forms_main

    _, out = bench_run
    final = tmp_path / "final"  # laid out as `prunepilot prune --out <bench>/final/<run>` leaves it
    for name in ("ddpg-m60-s0", "uniform-m40-s1"):
        shutil.copytree(out / "runs" / name, final / name)
    (final / "notes").mkdir()  # a folder that is no pass is passed over
    forms_main([str(final), "--repeats", "3", "--rounds", "1", "--threads", "1"])
    final_main([str(final)])
    table = pd.read_csv(final / "table.csv").set_index("run")
    assert list(table.index) == ["uniform-m40-s1", "ddpg-m60-s0"]  # by MACs target, not by name
    assert table.loc["ddpg-m60-s0", "method"] == "ddpg" and table.loc["uniform-m40-s1", "seed"] == 1
    assert table["macs_target"].tolist() == [0.4, 0.6]  # read from each pass's policy
    for name in table.index:
        summary = json.loads((final / name / "summary.json").read_text())
        row = table.loc[name]
        assert row["test_accuracy"] == pytest.approx(summary["pruned"]["test_accuracy"])
        assert row["drop_pp"] == pytest.approx(summary["accuracy_drop_pp"])
        assert row["latency_timing"] == "alternated"
        assert row["retimed_t1_speedup_b64"] > 0 and row["retimed_t1_fastest_over_macs_reduction_b64"] > 0
    md = (final / "table.md").read_text()
    assert "retimed_t1_speedup_b64" in md and f"python -m bench.final_passes {final}" in md
    forms = pd.read_csv(final / "latency_forms-t1.csv")  # a file re-timed before the fastest passes were recorded
    forms.drop(columns=[c for c in forms.columns if "fastest" in c]).to_csv(final / "latency_forms-t1.csv", index=False)
    final_main([str(final)])
    assert "retimed_t1_fastest_over_macs_reduction_b64" not in pd.read_csv(final / "table.csv").columns
    with pytest.raises(SystemExit, match="no finished final pass"):
        final_main([str(tmp_path / "final" / "notes")])
    with pytest.raises(SystemExit, match="not a folder"):
        final_main([str(tmp_path / "nope")])


def test_conv_layouts_sweeps_both_layouts_and_names_bad_input(tmp_path, capsys):
    from bench.conv_layouts import main as layouts_main

    layouts_main(["--sizes", "8,4", "--channels", "4,16", "--batch", "2", "--repeats", "2", "--rounds", "1",
                  "--threads", "1", "--out", str(tmp_path)])
    frame = pd.read_csv(tmp_path / "conv_layouts-t1.csv")
    assert sorted(zip(frame["size"], frame["channels"])) == [(4, 4), (4, 16), (8, 4), (8, 16)]
    assert (frame[["nchw_ms", "channels_last_ms"]] > 0).all().all()
    assert frame["channels_last_speedup"].to_numpy() == pytest.approx((frame["nchw_ms"] / frame["channels_last_ms"]).to_numpy())
    assert "python -m bench.conv_layouts --sizes 8,4" in (tmp_path / "conv_layouts-t1.md").read_text()
    with pytest.raises(SystemExit, match="--sizes and --channels"):
        layouts_main(["--channels", "16,x"])
    with pytest.raises(SystemExit, match="--threads must be positive"):
        layouts_main(["--threads", "0"])


def test_an_empty_zoo_skips_the_zoo_part(tmp_path):
    config = tmp_path / "no_zoo.yaml"
    config.write_text(TINY_BENCH.replace('zoo: ["tests.fixtures:tiny_cnn"]', "zoo: []"))
    out = tmp_path / "out"
    assert main(["bench", str(config), "--out", str(out), "--quiet", "--parts", "zoo"]) == 0
    assert not (out / "zoo.csv").exists() and "model zoo" not in (out / "summary.md").read_text()


def test_latency_model_compares_the_table_with_measured_models(bench_run, tmp_path, capsys):
    import shutil

    from bench.latency_model import main as latency_model

    config, out = bench_run
    saved = tmp_path / "policies"
    (saved / "evaluations").mkdir(parents=True)
    shutil.copy(out / "runs" / "ddpg-m60-s0" / "best_policy.json", saved / "ddpg-m60-s0.json")
    shutil.copy(out / "runs" / "ddpg-m40-s1" / "evaluations.csv", saved / "evaluations" / "ddpg-m40-s1.csv")
    args = [str(config), "--targets", "0.6,0.4", "--policies-per-target", "3", "--repeats", "3", "--out", str(tmp_path),
            "--policies", str(saved), "--policies", str(out), "--draws", "20"]
    assert latency_model(args) == 0
    frame = pd.read_csv(tmp_path / "latency_model-tests.fixtures_tiny_cnn-t1.csv")
    runs = sorted(p.parent.name for p in (out / "runs").glob("*/best_policy.json"))  # the bench's own runs
    assert len(runs) == 8 and sorted(frame["policy"]) == sorted(
        ["uniform"] * 2 + [f"random {i}" for i in range(3)] * 2 + ["ddpg-m60-s0", "ddpg-m40-s1"] + runs)
    assert set(frame.loc[frame["policy"] == "ddpg-m40-s1", "macs_target"]) == {0.4}
    assert frame.groupby("macs_target")["macs_ratio"].max().le(pd.Series({0.4: 0.4 + 1e-9, 0.6: 0.6 + 1e-9})).all()
    assert (frame[["predicted_ratio", "measured_ratio"]] > 0).all().all()
    assert frame["measured_ratio"].to_numpy() == pytest.approx((frame["pruned_ms"] / frame["dense_ms"]).to_numpy())
    md = (tmp_path / "latency_model-tests.fixtures_tiny_cnn-t1.md").read_text()
    assert "Spearman rho" in md and "20 random policies per target" in md and "| needed for 0.8x |" in md
    assert latency_model([str(config), "--targets", "half"]) == 2
    assert latency_model([str(config), "--table", str(tmp_path / "none.json")]) == 2
    assert "env.latency_table: file not found" in capsys.readouterr().err


def test_latency_model_times_each_layer_in_place_beside_its_table_entry(bench_run, tmp_path):
    from bench.latency_model import main as latency_model
    from pruning.baseline import architecture, build_from_arch
    from pruning.config import load_config
    from pruning.data import load_data
    from pruning.units import discover_units

    config, _ = bench_run
    args = [str(config), "--targets", "0.5", "--policies-per-target", "1", "--repeats", "3", "--out", str(tmp_path),
            "--layers"]
    assert latency_model(args) == 0
    frame = pd.read_csv(tmp_path / "latency_layers-tests.fixtures_tiny_cnn-t1.csv", dtype={"layer": str})
    cfg = load_config(str(config))
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    graph = discover_units(build_from_arch(architecture(cfg, data)), data.input_shape, cfg.prune.mode)
    assert list(frame["policy"].unique()) == ["dense", "uniform (m50)", "random 0 (m50)"]
    dense = frame[frame["policy"] == "dense"]
    assert set(dense["layer"]) == set(graph.shapes)  # every conv and linear, at its dense width
    pruned = frame[frame["policy"] == "uniform (m50)"].set_index("layer")
    assert (pruned["out_channels"] <= dense.set_index("layer").loc[pruned.index, "out_channels"]).all()
    assert (pruned["out_channels"] < dense.set_index("layer").loc[pruned.index, "out_channels"]).any()
    assert (frame[["table_ms", "in_place_ms"]] > 0).all().all()
    assert frame["excess_ms"].to_numpy() == pytest.approx((frame["in_place_ms"] - frame["table_ms"]).to_numpy())
    md = (tmp_path / "latency_model-tests.fixtures_tiny_cnn-t1.md").read_text()
    assert "timed in place" in md and "| worst_layer |" in md


def test_settings_that_pick_runs_may_change_and_the_others_may_not():
    from bench.resume_guard import changed_settings

    recorded = {"bench": {"seeds": [0, 1], "transfer_warm_seeds": [1, 2], "evaluations": 200}}
    assert changed_settings(recorded, {"bench": {"seeds": [0], "transfer_warm_seeds": [], "evaluations": 200}}) == {}
    assert changed_settings(recorded, {"bench": {"seeds": [0, 1], "transfer_warm_seeds": [1, 2], "evaluations": 50}}) \
        == {"bench.evaluations": (200, 50)}


def test_heldout_replays_each_runs_best_policies_and_scores_them_on_unseen_images(tmp_path, capsys):
    """The policies rebuilt from a run's evaluations CSV give the recorded scores again on the search's images,
    and a second score on the validation images after `eval.val_limit`, which no search saw."""
    from bench.heldout import main as heldout

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_BENCH.replace("macs_targets: [0.6, 0.4]", "macs_targets: [0.6]")
                      .replace('{name: "tests.fixtures:tiny_cnn"}', "{name: vgg_small, kwargs: {widths: [8, M, 16, 16]}}")
                      .replace("data: {name: synthetic, options: {size: 10, n_train: 400, n_test: 100}}",
                               "data: {name: digits}").replace("epochs: 3", "epochs: 8"))
    out = tmp_path / "out"
    limit = ["eval.val_limit=100"]  # of the digits' 144 validation images
    assert main(["bench", str(config), "--out", str(out), "--quiet", "--parts", "comparison", *limit]) == 0
    assert heldout([str(out), str(config), *limit, "--top", "3"]) == 0
    frame = pd.read_csv(out / "heldout.csv")
    assert sorted(frame["run"].unique()) == ["ddpg-m60-s0", "ddpg-m60-s1", "uniform-m60-s0", "uniform-m60-s1"]
    assert frame.groupby("run").size().to_dict() == {"ddpg-m60-s0": 3, "ddpg-m60-s1": 3, "uniform-m60-s0": 1,
                                                     "uniform-m60-s1": 1}
    assert (frame["replayed_accuracy"] == frame["search_accuracy"]).all()
    assert ((frame["heldout_accuracy"] * 44).round(4) % 1 == 0).all()  # a count of the 44 held-out images
    assert frame["search_accuracy"].nunique() > 2 and (frame["heldout_accuracy"] != frame["search_accuracy"]).any()
    recorded = pd.read_csv(out / "evaluations" / "ddpg-m60-s0.csv")
    ddpg = frame[frame["run"] == "ddpg-m60-s0"]
    assert ddpg["search_reward"].tolist() == pytest.approx(sorted(recorded["reward"], reverse=True)[:3], abs=1e-6)
    text = (out / "heldout.md").read_text()
    assert "on the search's 100 validation images (a replay) and on the other 44" in text
    assert "| ddpg-m60 | 2 |" in text and "transfer target" not in text
    assert "did not give the recorded accuracy: none" in text
    # every validation image was scored by the searches: none left to hold out
    assert heldout([str(out), str(config), "eval.val_limit=null"]) == 2
    assert "eval.val_limit: the searches scored all 144 validation images" in capsys.readouterr().err
    # evaluations of another model
    assert heldout([str(out), str(config), *limit, "model.kwargs={widths: [8, M, 16, 16, M, 16]}"]) == 2
    assert "ddpg-m60-s0.csv: no ratio column for unit(s)" in capsys.readouterr().err
    assert heldout([str(out), str(config), *limit, "--evaluations", "runs/*.csv"]) == 2
    assert "no evaluations CSV matches" in capsys.readouterr().err


@pytest.mark.parametrize("warm, scratch, met", [(-0.15, -0.15, True), (-0.155, -0.152, True), (-0.16, -0.152, False),
                                                (0.39, 0.40, False), (0.392, 0.40, True)])
def test_heldout_reads_the_transfer_target_on_both_image_sets(warm, scratch, met):
    from bench.heldout import transfer_reading

    groups = pd.DataFrame({"group": ["warm-start", "from-scratch"], "search_reward": [warm, scratch],
                           "heldout_reward": [warm - 1, scratch]})
    reading = transfer_reading(groups)
    assert reading["search_reward"]["met"] is met and reading["heldout_reward"]["met"] is False
    assert transfer_reading(groups.replace({"warm-start": "ddpg-m50"})) is None


def test_transfer_curves_read_each_groups_best_so_far(tmp_path, capsys):
    from bench.transfer_curves import main as curves

    kept = tmp_path / "mybench" / "reuse" / "evaluations"
    kept.mkdir(parents=True)

    def write(name: str, rewards: list[float], states: list[str] | None = None) -> None:
        pd.DataFrame({"state": states or ["COMPLETE"] * len(rewards), "reward": rewards}).to_csv(kept / name, index=False)

    write("warm-start.csv", [-0.5, -0.3, -0.4])
    write("warm-start-s1.csv", [-0.2, -0.6, -0.1], ["COMPLETE", "COMPLETE", "FAIL"])  # a failed one is not read
    write("from-scratch.csv", [-0.9, -0.8, -0.7, -0.1])
    out = tmp_path / "curves.md"
    assert curves([str(kept / "*.csv"), "--at", "1,2,4", "--out", str(out)]) == 0
    text = out.read_text()
    # warm-start: after 1: mean(-0.5, -0.2); after 2: mean(-0.3, -0.2); after 4: both read at their ends
    assert "mybench: warm-start | 2 | 2/3 | -0.35 | -0.25 | -0.25 |" in text
    assert "mybench: from-scratch | 1 | 4 | -0.9 | -0.8 | -0.1 |" in text
    assert curves([str(tmp_path / "none" / "*.csv")]) == 2
    assert "no evaluations CSV matches" in capsys.readouterr().err
    assert curves([str(kept / "*.csv"), "--at", "0"]) == 2
    assert "--at: expected counts of at least 1" in capsys.readouterr().err
    pd.DataFrame({"state": ["COMPLETE"], "value": [1.0]}).to_csv(kept / "other.csv", index=False)
    assert curves([str(kept / "*.csv")]) == 2
    assert "other.csv: lacks the column(s) ['reward']" in capsys.readouterr().err


def test_prior_replay_screens_a_recorded_pool(bench_run, tmp_path, capsys):
    from bench.prior_replay import main as prior_replay

    config, out = bench_run
    source = str(out / "runs" / "ddpg-m60-s0")  # a tiny CNN search, the prior of the VGG searches kept in reuse/
    args = [source, str(config), "model.name=vgg_small", "model.kwargs={widths: [8, M, 16, 16]}",
            "--pool", str(out / "reuse" / "evaluations" / "*.csv"), "--seeds", "2", "--candidates", "3",
            "--budget", "4", "--bins", "2"]
    assert prior_replay([*args, "--out", str(tmp_path / "replay.md")]) == 0
    frame = pd.read_csv(tmp_path / "replay.csv")
    assert frame.groupby("strategy").size().to_dict() == {"random": 2, "target": 2, "prior-2": 2, "rgpe-2": 2}
    pool = pd.concat([pd.read_csv(p) for p in (out / "reuse" / "evaluations").glob("*.csv")])
    assert frame["reward@4"].isin(pool["reward"].round(6)).all() and frame["reward@4"].max() <= pool["reward"].max()
    text = (tmp_path / "replay.md").read_text()
    assert "| random |" in text and "Spearman correlation" in text and "of 1 source search(es)" in text
    # a second search of the source model pools into the prior, every scored policy of it once: a glob that
    # also matches the positional source does not count that search twice
    also = ["--also-source", str(out / "runs" / "ddpg-m60-s?")]
    assert prior_replay([*args, *also, "--out", str(tmp_path / "pooled.md")]) == 0
    single, pooled = (int(re.search(r"Prior: (\d+) evaluations", (tmp_path / f).read_text()).group(1))
                      for f in ("replay.md", "pooled.md"))
    second = pd.read_csv(out / "runs" / "ddpg-m60-s1" / "evaluations.csv").query("state == 'COMPLETE'")
    assert pooled == single + second["reward"].notna().sum() > single
    assert "of 2 source search(es)" in (tmp_path / "pooled.md").read_text()
    assert prior_replay([*args, "--also-source", str(tmp_path / "none*")]) == 2
    assert "--also-source" in capsys.readouterr().err
    assert prior_replay([*args, "--budget", "400"]) == 2
    assert "fewer than --budget + --candidates" in capsys.readouterr().err
    assert prior_replay([str(tmp_path), *args[1:]]) == 2
    assert "evaluations.csv not found" in capsys.readouterr().err


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_running_runs_and_starts_no_more(tmp_path, stop):
    """It used to end only the waiting loop: the pool then started every queued run, one after another. SIGTERM
    (a scheduler's) stops it the same way. A second bench started on the folder meanwhile deleted the running run to
    start it again; it is refused."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_BENCH.replace("evaluations: 6", "evaluations: 100000").replace("seeds: [0, 1]",
                                                                                         "seeds: [0, 1, 2]"))
    out = tmp_path / "out"
    root = str(Path(__file__).parents[1])
    bench = subprocess.Popen([sys.executable, "-m", "search.cli", "bench", str(config), "--out", str(out), "--quiet",
                              "--parts", "comparison", "bench.methods=[random]", "bench.parallel=1"],
                             env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list((out / "runs").glob("*.log")) and time.time() < deadline:  # the first run has started
            time.sleep(0.2)
        time.sleep(3)
        started = sorted(p.name for p in (out / "runs").glob("*.log"))
        assert len(started) == 1, started
        running = out / "runs" / started[0].removesuffix(".log")
        second = subprocess.run(bench.args, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another `prunepilot bench` (pid {bench.pid} on " in second.stderr and running.is_dir()
        bench.send_signal(getattr(signal, stop))
        said, _ = bench.communicate(timeout=90)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert (bench.returncode, stop) in [(130, "SIGINT"), (143, "SIGTERM")], said[-2000:]
    assert {"SIGINT": "prunepilot bench: interrupted", "SIGTERM": "prunepilot bench: terminated (SIGTERM)"}[stop] in said
    assert not (out / ".bench.claim").exists()  # released: the next bench goes on
    assert sorted(p.name for p in (out / "runs").glob("*.log")) == started  # nothing started after the Ctrl-C
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not leftovers, leftovers  # the run that was going stopped too


def test_a_ctrl_c_while_a_table_or_plot_is_rewritten_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """runs.csv is a bench's only record of runs finished elsewhere: a Ctrl-C in its rewrite must not cut it short."""
    import matplotlib.pyplot as plt

    from search.report import save_figure, write_table

    earlier = pd.DataFrame({"run": ["uniform-m50-s0", "ddpg-m50-s0"], "reward": [-0.5, -0.25]})
    write_table(earlier, tmp_path, "runs")
    fig, _ = plt.subplots()
    save_figure(fig, tmp_path / "best_reward.png")
    plot = (tmp_path / "best_reward.png").read_bytes()

    def half_written(path, **kwargs):  # a signal in the middle of the write
        with open(path, "w") as file:
            file.write("run,rew")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda self, path, **kwargs: half_written(path))
    with pytest.raises(KeyboardInterrupt):
        write_table(pd.concat([earlier, earlier]), tmp_path, "runs")
    fig, _ = plt.subplots()
    monkeypatch.setattr(fig, "savefig", lambda path, **kwargs: half_written(path))
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, tmp_path / "best_reward.png")
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "runs.csv"), earlier)
    assert (tmp_path / "best_reward.png").read_bytes() == plot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_reward.png", "runs.csv", "runs.parquet"]  # no temporaries
    assert not plt.get_fignums()  # the interrupted plot was freed too


def test_a_ctrl_c_while_a_tables_parquet_is_written_leaves_its_csv_as_it_was_too(tmp_path, monkeypatch):
    """A table's CSV and parquet are one record: a cut in the second write must not leave a new CSV beside an old
    parquet."""
    from search.report import write_table

    earlier = pd.DataFrame({"run": ["uniform-m50-s0"], "reward": [-0.5]})
    write_table(earlier, tmp_path, "runs")

    def half_written(path):
        Path(path).write_bytes(b"PAR1")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda self, path, **kwargs: half_written(path))
    with pytest.raises(KeyboardInterrupt):
        write_table(pd.concat([earlier, earlier]), tmp_path, "runs")
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "runs.csv"), earlier)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs.parquet"), earlier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv", "runs.parquet"]  # no temporaries
