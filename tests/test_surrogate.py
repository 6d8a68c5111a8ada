"""`python -m bench.surrogate`: a GP fitted to recorded evaluations stands in for the evaluator."""

import json

import numpy as np
import pandas as pd
import pytest

from bench.surrogate import SurrogateEvaluator, fit_surrogate, main, parse_variants, recorded_evaluations, screen
from envs.synthetic import SyntheticEvaluator
from pruning.baseline import architecture, build_from_arch
from pruning.config import load_config
from pruning.data import load_data
from pruning.errors import UserError
from pruning.policy import SparsityPolicy
from pruning.units import discover_units

OVERRIDES = ["data.name=synthetic", "data.options={size: 10, n_train: 200, n_test: 50}", "model.name=vgg_small",
             "model.kwargs={widths: [8, 8, M, 16, 16, M, 32]}", "env.reward=amc_error", "bench.evaluations=12",
             "agent.warmup_episodes=3", "agent.batch_size=8", "agent.net_arch=[16]"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A bench folder whose 'recorded' evaluations are random policies scored by a known function."""
    folder = tmp_path_factory.mktemp("bench")
    cfg = load_config(None, OVERRIDES)
    (folder / "config.json").write_text(cfg.model_dump_json())
    data = load_data(cfg.data.name, None, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    graph = discover_units(build_from_arch(architecture(cfg, data)), data.input_shape)
    truth = SyntheticEvaluator(graph, np.linspace(0.1, 0.6, len(graph.units)))
    rng = np.random.default_rng(0)
    policies = [SparsityPolicy.from_ratios(graph, rng.uniform(0, 0.8, len(graph.units))) for _ in range(160)]
    rows = [{"state": "COMPLETE", "accuracy": truth.evaluate(p).accuracy,
             **{f"ratio:{n}": r for n, r in zip(graph.names, p.vector(graph))}} for p in policies]
    (folder / "evaluations").mkdir()
    pd.DataFrame(rows[:80]).to_csv(folder / "evaluations" / "random-m50-s0.csv", index=False)
    pd.DataFrame(rows[80:]).assign(state=["FAIL"] * 5 + ["COMPLETE"] * 75).to_csv(
        folder / "evaluations" / "tpe-m50-s0.csv", index=False)
    return folder, graph, truth


def test_the_surrogate_learns_the_recorded_accuracy_and_predicts_new_policies(recorded):
    folder, graph, truth = recorded
    frame = recorded_evaluations(folder, 0.5)
    assert len(frame) == 155  # FAIL rows are not evaluations
    gp, r2 = fit_surrogate(frame, graph)
    assert r2 > 0.9
    surrogate = SurrogateEvaluator(graph, gp, round_to=1)
    rng = np.random.default_rng(1)
    unseen = [SparsityPolicy.from_ratios(graph, rng.uniform(0, 0.8, len(graph.units))) for _ in range(50)]
    errors = [abs(surrogate.evaluate(p).accuracy - truth.evaluate(p).accuracy) for p in unseen]
    spread = np.std([truth.evaluate(p).accuracy for p in unseen])
    assert np.mean(errors) < 0.25 * spread
    assert surrogate.evaluate(unseen[0]).macs_ratio == pytest.approx(unseen[0].macs_ratio(graph))


def test_every_searcher_and_variant_gets_the_budget_on_the_surrogate(recorded):
    folder, _, _ = recorded
    variants = parse_variants(["slow-noise=noise_decay:0.99,learn_executed_action:true"])
    assert variants == {"slow-noise": {"noise_decay": 0.99, "learn_executed_action": True}}
    frame, r2, fitted = screen(folder, 0.5, ["random", "tpe", "ddpg", "slow-noise"], 2, variants)
    assert fitted == 155 and r2 > 0.9
    assert len(frame) == 8 and set(frame["method"]) == {"random", "tpe", "ddpg", "slow-noise"}
    assert (frame["evaluations"] == 12).all()
    assert frame["best_accuracy"].between(0, 1).all()


def test_the_command_writes_its_table_and_how_to_rerun_it(recorded, capsys):
    folder, _, _ = recorded
    main([str(folder), "--target", "0.5", "--methods", "random", "--seeds", "2"])
    md = (folder / "surrogate-m50.md").read_text()
    assert "5-fold CV R²" in md and "| random | 2 |" in md
    assert f"python -m bench.surrogate {folder} --target 0.5 --methods random --seeds 2" in md
    assert len(pd.read_csv(folder / "surrogate-m50.csv")) == 2
    main([str(folder), "--target", "0.5", "--methods", "tpe", "--seeds", "1", "--label", "tpe-only"])
    assert "| tpe | 1 |" in (folder / "surrogate-m50-tpe-only.md").read_text()
    assert "| random | 2 |" in (folder / "surrogate-m50.md").read_text()  # a labelled screen leaves the other alone
    assert "flatter" not in (folder / "surrogate-m50.md").read_text()
    main([str(folder), "--target", "0.5", "--methods", "gp", "--seeds", "1", "--variant", "gp=candidates:4",
          "--label", "gp"])
    assert "gp screen(s) proposals with a Gaussian process" in (folder / "surrogate-m50-gp.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--target", "0.25"], "no recorded evaluations at MACs target 0.25"),
    (["--target", "0.5", "--variant", "broken"], "--variant: expected NAME=key:value"),
    (["--target", "0.5", "--variant", "v=noise_decay:2", "--methods", "v"], "--variant v: field `noise_decay`"),
    (["--target", "0.5", "--methods", "gridsearch"], "'gridsearch' is neither"),
    (["--target", "0.5", "--seeds", "0"], "--seeds: expected at least 1, got 0"),
    (["--target", "0.5", "--label", "../x"], "--label: expected letters, digits, - or _, got '../x'"),
])
def test_bad_input_is_a_clear_error(recorded, args, message, capsys):
    folder, _, _ = recorded
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder), *args])
    assert message in str(exit_info.value.code)


def test_a_misspelt_variant_fails_before_the_surrogate_is_fitted(recorded, monkeypatch):
    import bench.surrogate as surrogate

    folder, _, _ = recorded
    monkeypatch.setattr(surrogate, "fit_surrogate", lambda *a: pytest.fail("fitted before the input was checked"))
    with pytest.raises(UserError, match="--variant v: field `noise_decy`: unknown key"):
        screen(folder, 0.5, ["random", "v"], 1, {"v": {"noise_decy": 0.9}})


def test_a_folder_that_is_not_a_bench_result_is_named(tmp_path):
    with pytest.raises(UserError, match="config.json: not found"):
        screen(tmp_path, 0.5, ["random"], 1, {})
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(UserError, match="no recorded evaluations"):
        recorded_evaluations(tmp_path, 0.5)
