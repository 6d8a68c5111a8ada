"""The engine's jobs behind the CLI: train, prune, sweep, sensitivity."""

from __future__ import annotations

import argparse
import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from pruning.analysis import largest_ratio_above, sensitivity, uniform_sweep
from pruning.baseline import Baseline, architecture, build_from_arch, get_baseline
from pruning.bn import recalibrate_batchnorm
from pruning.checkpoint import atomic_copy, atomic_write_text
from pruning.config import RunConfig, load_config
from pruning.cost import compare_latency, count_macs, count_params
from pruning.data import DataBundle, load_data
from pruning.errors import UserError
from pruning.evaluate import EvalSettings, Evaluator
from pruning.export import export_onnx, export_torchscript, load_pruned, save_pruned
from pruning.latency_table import LatencyTable, measure_latency_table
from pruning.policy import SparsityPolicy, uniform_for_macs
from pruning.progressive import ProgressiveSettings, progressive_prune
from pruning.runtime import resolve_device, seed_everything, set_threads
from pruning.training import evaluate_accuracy
from pruning.units import UnitGraph, configured_units
from search.cli import output_file, run_folder
from search.report import markdown_table, plot_heatmap, plot_lines, plot_unit_ratios, write_json, write_table

log = logging.getLogger("prunepilot")


@dataclass
class Context:
    cfg: RunConfig
    device: torch.device
    generator: torch.Generator
    data: DataBundle
    show_progress: bool


def prepare(args: argparse.Namespace) -> Context:
    """Validate the config, then set device, seed and threads and load the data once."""
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    generator = seed_everything(cfg.seed)
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    log.info("%s | device %s | %d threads", data.summary(), device, torch.get_num_threads())
    return Context(cfg, device, generator, data.to(device), not getattr(args, "quiet", False))


def baseline_of(ctx: Context, retrain: bool = False) -> Baseline:
    base = get_baseline(ctx.cfg, ctx.data, ctx.device, ctx.generator, retrain=retrain, show_progress=ctx.show_progress)
    log.info("dense %s: val %.4f test %.4f (%s%s)", ctx.cfg.model.name, base.val_accuracy, base.test_accuracy,
             "trained now, cached at " if base.trained_now else "loaded from ", base.checkpoint)
    return base


def train_job(args: argparse.Namespace) -> int:
    out = output_file(Path(args.out), ".pt") if args.out else None  # checked before the training, not after it
    base = baseline_of(prepare(args), retrain=args.retrain)
    if out is not None and out.resolve() != Path(base.checkpoint).resolve():
        atomic_copy(Path(base.checkpoint), out)  # a copy cut short never sits under the final name
        log.info("checkpoint written to %s (use it with model.checkpoint=%s)", out, out)
    return 0


def measure_table(cfg: RunConfig, model: torch.nn.Module, graph: UnitGraph) -> LatencyTable:
    """A latency table for this config's model, channel rounding and ratio range, timed on this machine now."""
    log.info("timing every layer of %s at every channel count a policy can give it (batch %d, %d threads)",
             cfg.model.name, cfg.env.latency_batch, torch.get_num_threads())
    table = measure_latency_table(model, graph, cfg.env.latency_batch, cfg.prune.round_to, 0.0,
                                  max(cfg.env.r_max, cfg.prune.max_ratio))
    log.info("latency table: %d entries; dense model %.2f ms, outside convs and linears %.2f ms fixed + %.2f ms "
             "x activations kept", sum(len(v) for v in table.entries.values()), table.dense_ms, table.rest_fixed_ms,
             table.rest_activation_ms)
    return table


def latency_table_job(args: argparse.Namespace) -> int:
    """Measure a latency table (`env.latency_table`) for the config's model; shapes only, so no training."""
    ctx = prepare(args)
    # not results/<config name>/, a search's folder, whose own table prices its policies (a resume reuses it)
    out = output_file(Path(args.out) if args.out else Path("results") / f"{ctx.cfg.name}-latency" / "latency_table.json",
                      ".json")
    if (out.parent / "search.json").is_file():
        raise UserError(f"--out: {out.parent} holds a search, which prices its policies with its own latency table "
                        "(a resume reuses it); write this one elsewhere")
    model = build_from_arch(architecture(ctx.cfg, ctx.data)).to(ctx.device).eval()
    path = measure_table(ctx.cfg, model, unit_graph(ctx, model)).save(out)
    log.info("latency table saved: %s (use it with env.latency_table=%s env.latency_weight=W)", path, path)
    return 0


# ------------------------------------------------------------------------------------ shared pieces
def unit_graph(ctx: Context, model: torch.nn.Module) -> UnitGraph:
    graph = configured_units(model, ctx.data.input_shape, ctx.cfg.prune)
    if graph.grouped_whole:
        log.info("channels shared with a grouped (not depthwise) conv are kept whole, since pruning would break it; "
                 "%d layer(s) have such channels: %s", len(graph.grouped_whole), ", ".join(sorted(graph.grouped_whole)))
    if ctx.cfg.env.remove_blocks:  # say what the setting can do here: a model may have no block to remove
        log.info("env.remove_blocks: %d residual block(s) of %s can be removed%s", len(graph.removable),
                 ctx.cfg.model.name, f" ({', '.join(sorted(set(graph.removable.values())))})" if graph.removable
                 else " (in structured mode, blocks with an identity shortcut only): the setting has no effect")
    return graph


def policy_from_args(ctx: Context, graph: UnitGraph, policy_path: str | None) -> SparsityPolicy:
    """The policy file if given, else the uniform policy for prune.macs_target or prune.uniform_ratio."""
    p = ctx.cfg.prune
    if policy_path:
        policy = SparsityPolicy.load(policy_path).validate(graph, p.max_ratio, source=policy_path)
        left_out = [name for name in graph.names if name not in policy.ratios]
        if left_out:  # a hand-written policy may name only the units it prunes; say what that means
            log.info("%s: %d unit(s) not in the policy are kept whole: %s%s", policy_path, len(left_out),
                     ", ".join(left_out[:8]), ", ..." if len(left_out) > 8 else "")
        return policy
    if p.macs_target is not None:
        policy = uniform_for_macs(graph, p.macs_target, p.round_to, p.max_ratio)
        reached = policy.macs_ratio(graph, p.round_to)
        if reached > p.macs_target:  # pruned to the closest reachable without a word, the report then showed more
            raise UserError(f"prune.macs_target: {p.macs_target:g} cannot be reached: every unit pruned at "
                            f"prune.max_ratio {p.max_ratio:g} keeps {reached:.1%} of dense MACs (the layers outside any "
                            f"prunable unit, such as the classifier, stay whole); raise the target or prune.max_ratio")
        return policy
    if p.uniform_ratio is not None:
        return SparsityPolicy.uniform(graph, p.uniform_ratio, uniform_ratio=p.uniform_ratio)
    raise UserError("prune: give --policy FILE, or set prune.macs_target (e.g. 0.5) or prune.uniform_ratio")


def measure_model(model: torch.nn.Module, ctx: Context, sparse: bool) -> dict[str, float]:
    """Test and validation accuracy, MACs and params, for the side-by-side report."""
    shape = ctx.data.input_shape
    return {"test_accuracy": evaluate_accuracy(model, ctx.data.x_test, ctx.data.y_test),
            "val_accuracy": evaluate_accuracy(model, ctx.data.x_val, ctx.data.y_val),
            "macs": count_macs(model, shape, dense=not sparse), "params": count_params(model, nonzero=sparse)}


def measure_speedups(dense: torch.nn.Module, pruned: torch.nn.Module, ctx: Context, dense_row: dict,
                     pruned_row: dict) -> dict[str, float | list[float]]:
    """Latency at batch 1 and 64 into both rows, dense and pruned alternated in rounds (`compare_latency`), so that
    drift in the machine's speed falls on both alike. Returns each speed-up (of the medians), its range over the
    rounds, and the speed-up of the fastest passes."""
    speedups: dict[str, float | list[float]] = {}
    for batch in (1, 64):
        timed = compare_latency(dense, pruned, ctx.data.input_shape, batch, ctx.cfg.eval.latency_repeats)
        dense_row[f"latency_b{batch}_ms"], pruned_row[f"latency_b{batch}_ms"] = timed.dense_ms, timed.pruned_ms
        speedups[f"speedup_b{batch}"] = timed.speedup
        speedups[f"speedup_b{batch}_range"] = [timed.speedup_low, timed.speedup_high]
        speedups[f"speedup_b{batch}_fastest"] = timed.speedup_fastest
    speedups["latency_rounds"] = timed.rounds
    return speedups


def save_and_export(ctx: Context, base: Baseline, graph: UnitGraph, model: torch.nn.Module, pruned_row: dict,
                    out: Path) -> dict[str, float]:
    """Save the pruned model, reload it, export TorchScript and ONNX; return each form's largest output difference
    from the model in memory, so the report shows that what is handed back computes what was measured."""
    save_pruned(out / "model.pt", model, graph, base.arch, ctx.data.fingerprint,
                metrics={k: float(v) for k, v in pruned_row.items()})
    reloaded = load_pruned(out / "model.pt").to(ctx.device)
    with torch.no_grad():
        probe = ctx.data.x_test[:64]
        reload_diff = float((reloaded(probe) - model.eval()(probe)).abs().max())
    ts_diff = export_torchscript(model, out / "model.torchscript.pt", ctx.data.input_shape)
    onnx_diff = export_onnx(model, out / "model.onnx", ctx.data.input_shape)
    model.to(ctx.device)
    return {"checkpoint": reload_diff, "torchscript": ts_diff, "onnx": onnx_diff}


def final_pass(ctx: Context, base: Baseline, graph: UnitGraph, policy: SparsityPolicy, out: Path, seed: int,
               extra_report: str = "", evaluator: Evaluator | None = None) -> dict:
    """Progressive prune-finetune to `policy`, then measure, export and report into `out`.

    Its data order and augmentation start from `seed` itself, so that the pruned model does not depend on what ran
    before it (training the baseline drew from the run's generator; loading it from the cache did not)."""
    cfg = ctx.cfg
    out.mkdir(parents=True, exist_ok=True)
    policy.save(out / "policy.json")
    evaluator = evaluator or Evaluator(base.model, ctx.data, graph, EvalSettings.from_config(cfg))
    oneshot = evaluator.evaluate(policy)
    oneshot_model, _ = evaluator.prune_copy(policy)
    recalibrate_batchnorm(oneshot_model, evaluator.bn_batches)
    oneshot_test = evaluate_accuracy(oneshot_model, ctx.data.x_test, ctx.data.y_test)
    log.info("policy: predicted %.1f%% of dense MACs; one-shot + adaptive BN: val %.4f, test %.4f",
             100 * oneshot.macs_ratio, oneshot.accuracy, oneshot_test)

    model = copy.deepcopy(base.model)
    teacher = base.model if cfg.prune.distill > 0 else None
    report_step = lambda r: log.info(  # noqa: E731
        "step %d/%d: %.1f%% MACs, val %.4f after pruning, %.4f after %.2g epochs of fine-tuning (%.0fs)",
        r.step, cfg.prune.steps, 100 * r.macs_ratio, r.val_accuracy_pruned, r.val_accuracy_finetuned,
        r.finetune_epochs, r.seconds)
    model, steps = progressive_prune(model, ctx.data, graph, policy, ProgressiveSettings.from_config(cfg),
                                     seed_everything(seed), teacher, ctx.show_progress, report_step)
    steps_frame = write_table([s.as_dict() for s in steps], out, "steps")

    sparse = graph.mode == "unstructured"
    dense_row = measure_model(base.model, ctx, sparse=False)
    pruned_row = measure_model(model, ctx, sparse=sparse)
    speedups = measure_speedups(base.model, model, ctx, dense_row, pruned_row)
    export_diffs = save_and_export(ctx, base, graph, model, pruned_row, out)

    summary = {
        "config": cfg.name, "model": cfg.model.name, "mode": graph.mode, "criterion": cfg.prune.importance,
        "round_to": cfg.prune.round_to,
        "dense": dense_row, "pruned": pruned_row,
        "oneshot": {"val_accuracy": oneshot.accuracy, "test_accuracy": oneshot_test},
        "macs_ratio": pruned_row["macs"] / dense_row["macs"],
        "params_ratio": pruned_row["params"] / dense_row["params"],
        "compression_ratio": dense_row["params"] / max(1, pruned_row["params"]),
        **speedups,
        "accuracy_drop_pp": 100 * (dense_row["test_accuracy"] - pruned_row["test_accuracy"]),
        "threads": torch.get_num_threads(), "device": str(ctx.device),
        "export_max_abs_diff": export_diffs,
        "baseline_checkpoint": str(base.checkpoint),
    }
    plot_unit_ratios(graph.names, {"policy": list(policy.vector(graph))}, out / "unit_ratios.png",
                     f"{cfg.model.name}: per-unit pruning ratios")
    atomic_write_text(out / "report.md", render_prune_report(summary, steps_frame, policy, graph) + extra_report)
    write_json(summary, out / "summary.json")  # last: its presence says the pass finished (resume, bench)
    log.info("dense %.4f -> pruned %.4f test accuracy (%.2f pp); MACs %.1f%% of dense; params x%.2f smaller; "
             "speed-up x%.2f at batch 64; report: %s", dense_row["test_accuracy"], pruned_row["test_accuracy"],
             summary["accuracy_drop_pp"], 100 * summary["macs_ratio"], summary["compression_ratio"],
             summary["speedup_b64"], out / "report.md")
    return summary


def _speedup_spread(summary: dict) -> str:
    """How far the speed-ups moved between the timing rounds, or why there is no range (older summaries)."""
    if "speedup_b64_range" not in summary:
        return "dense and pruned timed one after the other"
    (l1, h1), (l64, h64) = summary["speedup_b1_range"], summary["speedup_b64_range"]
    fastest = (f"; fastest passes x{summary['speedup_b1_fastest']:.2f} at batch 1, "
               f"x{summary['speedup_b64_fastest']:.2f} at batch 64" if "speedup_b64_fastest" in summary else "")
    return (f"dense and pruned alternated over {summary['latency_rounds']} rounds; per-round speed-ups "
            f"x{l1:.2f}-x{h1:.2f} at batch 1, x{l64:.2f}-x{h64:.2f} at batch 64{fastest}")


def render_prune_report(summary: dict, steps: pd.DataFrame, policy: SparsityPolicy, graph: UnitGraph) -> str:
    d, p = summary["dense"], summary["pruned"]
    side = pd.DataFrame([
        {"": "test accuracy", "dense": d["test_accuracy"], "pruned": p["test_accuracy"]},
        {"": "validation accuracy", "dense": d["val_accuracy"], "pruned": p["val_accuracy"]},
        {"": "test accuracy, one-shot + adaptive BN (before fine-tuning)", "dense": d["test_accuracy"],
         "pruned": summary["oneshot"]["test_accuracy"]},
        {"": "MACs (conv + linear)", "dense": f"{d['macs'] / 1e6:.2f} M", "pruned": f"{p['macs'] / 1e6:.2f} M"},
        {"": "parameters" + (" (non-zero)" if summary["mode"] == "unstructured" else ""),
         "dense": f"{d['params']:,}", "pruned": f"{p['params']:,}"},
        {"": "latency batch 1 (ms, median, as deployed)", "dense": d["latency_b1_ms"], "pruned": p["latency_b1_ms"]},
        {"": "latency batch 64 (ms, median, as deployed)", "dense": d["latency_b64_ms"], "pruned": p["latency_b64_ms"]},
    ])
    exports = summary["export_max_abs_diff"]
    lines = [
        f"# Pruning report: {summary['model']} ({summary['config']})", "",
        f"Mode **{summary['mode']}**, importance **{summary['criterion']}**, {len(steps)} progressive steps; "
        f"device {summary['device']}, {summary['threads']} threads; dense and pruned measured in the same run.", "",
        markdown_table(side), "",
        f"- MACs: **{100 * summary['macs_ratio']:.1f}%** of dense; parameters {100 * summary['params_ratio']:.1f}% "
        f"(compression ratio **{summary['compression_ratio']:.2f}x**)",
        f"- accuracy drop: **{summary['accuracy_drop_pp']:.2f} pp** (test)",
        f"- measured speed-up: x{summary['speedup_b1']:.2f} at batch 1, **x{summary['speedup_b64']:.2f}** at batch 64 "
        f"({_speedup_spread(summary)})",
        f"- exports (max |Δlogit| vs eager): checkpoint {exports['checkpoint']:.1e}, TorchScript "
        f"{exports['torchscript']:.1e}, ONNX/onnxruntime {exports['onnx']:.1e}", "",
        "## Progressive steps", "", markdown_table(steps), "",
        "## Policy", "", "![per-unit ratios](unit_ratios.png)", "",
        markdown_table(pd.DataFrame({"unit": graph.names, "ratio": policy.vector(graph),
                                     "kept": list(policy.kept(graph, summary["round_to"]).values())})), "",
    ]
    if graph.grouped_whole:
        lines += [f"Channels shared with a grouped (not depthwise) conv are kept whole, since pruning would break it: "
                  f"{', '.join(sorted(graph.grouped_whole))}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- commands
def prune_job(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    out = run_folder(args, ctx.cfg.name)
    if (out / "search.json").is_file():  # results/<config name>/ is also a search's default folder
        raise UserError(f"--out: {out} holds a search (its search.json); a prune there would replace the search's report "
                        "and model: give another --out")
    if args.policy:  # fail on a bad policy file before any training or writing
        SparsityPolicy.load(args.policy)
    base = baseline_of(ctx)
    graph = unit_graph(ctx, base.model)
    policy = policy_from_args(ctx, graph, args.policy)
    final_pass(ctx, base, graph, policy, out, ctx.cfg.seed)
    return 0


def evaluator_job(args: argparse.Namespace, suffix: str) -> tuple[Context, Path, Evaluator]:
    """Shared start of the analysis commands: config, baseline, run folder and the shared evaluator."""
    ctx = prepare(args)
    out = run_folder(args, f"{ctx.cfg.name}-{suffix}")
    base = baseline_of(ctx)
    evaluator = Evaluator(base.model, ctx.data, unit_graph(ctx, base.model), EvalSettings.from_config(ctx.cfg))
    return ctx, out, evaluator


@contextmanager
def evaluation_bar(description: str, show: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for the analyses' `progress(done, total)` callback, hidden by `--quiet` like training's."""
    bar: tqdm | None = None

    def advance(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit="eval", disable=not show, leave=False)
        bar.update(done - bar.n)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.close()


def sweep_job(args: argparse.Namespace) -> int:
    ctx, out, evaluator = evaluator_job(args, "sweep")
    with evaluation_bar("sweep", ctx.show_progress) as advance:
        rows = uniform_sweep(evaluator, ctx.cfg.sweep.ratios, advance)
    frame = write_table(rows, out, "sweep")
    plot_lines(frame, "ratio", ["accuracy"], out / "sweep_ratio.png", "adaptive-BN accuracy vs uniform ratio")
    plot_lines(frame, "macs_ratio", ["accuracy"], out / "sweep_macs.png", "adaptive-BN accuracy vs MACs",
               xlabel="fraction of dense MACs")
    summary = {"dense_val_accuracy": evaluator.dense_accuracy, "rows": rows}
    floor = ctx.cfg.sweep.accuracy_floor
    if floor is not None:
        chosen = largest_ratio_above(rows, floor)
        summary["accuracy_floor"] = floor
        summary["chosen"] = chosen
        log.info("largest uniform ratio with accuracy >= %.4f: %s", floor,
                 f"{chosen['ratio']:g} ({100 * chosen['macs_ratio']:.1f}% MACs)" if chosen else "none")
    write_json(summary, out / "summary.json")
    print(markdown_table(frame))
    return 0


def sensitivity_job(args: argparse.Namespace) -> int:
    ctx, out, evaluator = evaluator_job(args, "sensitivity")
    with evaluation_bar("sensitivity", ctx.show_progress) as advance:
        rows = sensitivity(evaluator, ctx.cfg.sweep.sensitivity_ratios, advance)
    frame = write_table(rows, out, "sensitivity")
    plot_heatmap(frame, "unit", "ratio", "drop", out / "sensitivity.png", "accuracy drop when one unit is pruned")
    print(markdown_table(frame.pivot_table(index="unit", columns="ratio", values="drop", sort=False).reset_index()))
    return 0
