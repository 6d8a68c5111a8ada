"""How well a latency table (`pruning.latency_table`) predicts the measured latency of pruned models.

For random policies on each MACs target (drawn through the environment, so each lands on the target
as a searcher's would), the uniform policy and the runs' chosen policies (`--policies FOLDER`), it prunes the
model to each policy's shape, times dense and pruned as deployed in alternating rounds, and compares
the measured latency ratio with the table's prediction. At one MACs target the MACs ratio is the same
for every policy, so the question is whether the table ranks policies of equal MACs by latency:
Spearman's rho within each target. Latency depends on shapes only, so an untrained model serves.
Writes `latency_model-<model>-t<threads>.{csv,md}` into --out (a ':' in the model name becomes '_').
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.comparison import target_tag
from bench.latency_layers import in_place_ms, layer_rows, summarise_layers
from envs.factory import env_kwargs
from envs.layer_pruning import LayerPruningEnv
from pruning.apply import channel_rankings, prune_structured
from pruning.baseline import architecture, build_from_arch
from pruning.checkpoint import atomic_write_text
from pruning.config import load_config
from pruning.cost import paired_latency
from pruning.data import load_data
from pruning.errors import UserError
from pruning.latency_table import LatencyTable
from pruning.policy import SparsityPolicy, uniform_for_macs
from pruning.runtime import set_threads
from search.review import policy_of_row
from pruning.units import configured_units
from search.jobs import measure_table
from search.search_report import best_evaluation
from search.report import markdown_table, write_csv


def sample_policies(env: LayerPruningEnv, count: int, seed: int) -> list[tuple[str, SparsityPolicy]]:
    """`count` policies from uniformly random actions, clamped onto the env's MACs target."""
    rng = np.random.default_rng(seed)
    return [(f"random {i}", env.rollout(lambda _obs, _t: rng.uniform(-1, 1, 1))[0]) for i in range(count)]


def saved_policies(folder: Path, graph, targets: list[float], max_ratio: float) -> list[tuple[str, float, SparsityPolicy]]:
    """The chosen policy of each run in a folder, at the given targets: policy files (`*.json`, a bench's
    `policies/`), finished runs (`runs/*/best_policy.json`) and recorded searches (the best COMPLETE row of
    `evaluations/*.csv`). A run's target is read from its name (`ddpg-m25-s0`: 25%)."""
    found: dict[str, tuple[Path, str]] = {p.stem: (p, "json") for p in sorted(folder.glob("*.json"))}
    found.update({p.stem: (p, "json") for p in sorted((folder / "policies").glob("*.json"))})
    found.update({p.parent.name: (p, "json") for p in sorted((folder / "runs").glob("*/best_policy.json"))})
    found.update({p.stem: (p, "csv") for p in sorted((folder / "evaluations").glob("*.csv"))})
    policies = []
    for name, (path, kind) in sorted(found.items()):
        target = next((t for t in targets if f"-{target_tag(t)}-" in f"-{name}-"), None)
        if target is None:
            continue
        if kind == "json":
            policy = SparsityPolicy.load(path).validate(graph, max_ratio, source=str(path))
        else:
            best = best_evaluation(pd.read_csv(path))
            policy = policy_of_row(best, graph)
        policies.append((name, target, policy))
    return policies


def compare(model: torch.nn.Module, table: LatencyTable, named: list[tuple[str, float, SparsityPolicy]],
            graph, round_to: int, batch: int, repeats: int, layers: list[dict] | None = None) -> pd.DataFrame:
    """One row per policy: MACs ratio, predicted and measured latency ratio (dense timed beside each).

    With `layers` (a list), each pruned model's layers are also timed in place and their rows appended to it
    (`bench.latency_layers`), the dense model's first.
    """
    rankings = channel_rankings(model, graph, "l1")
    if layers is not None:
        layers += layer_rows("dense", table, {}, in_place_ms(model, graph.input_shape, batch, repeats))
    rows = []
    for name, target, policy in named:
        kept = policy.kept(graph, round_to)
        pruned = prune_structured(copy.deepcopy(model), graph, kept, "l1", rankings).eval()
        if layers is not None:
            layers += layer_rows(f"{name} ({target_tag(target)})", table, kept,
                                 in_place_ms(pruned, graph.input_shape, batch, repeats))
        dense_ms, pruned_ms = paired_latency(model, pruned, graph.input_shape, batch, repeats)
        rows.append({"policy": name, "macs_target": target, "macs_ratio": graph.macs(kept) / graph.dense_macs,
                     "predicted_ratio": table.ratio(kept), "measured_ratio": pruned_ms / dense_ms,
                     "dense_ms": dense_ms, "pruned_ms": pruned_ms})
    frame = pd.DataFrame(rows)
    frame["error"] = frame["predicted_ratio"] - frame["measured_ratio"]
    return frame


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for target, group in frame.groupby("macs_target"):
        rows.append({"MACs target": target, "policies": len(group),
                     "measured ratio (min-max)": f"{group['measured_ratio'].min():.3f}-{group['measured_ratio'].max():.3f}",
                     "Spearman rho (predicted vs measured)": group["predicted_ratio"].corr(group["measured_ratio"],
                                                                                         method="spearman"),
                     "mean error (predicted - measured)": group["error"].mean(),
                     "mean abs error": group["error"].abs().mean()})
    return pd.DataFrame(rows)


def predicted_floor(graph, table: LatencyTable, envs: dict[float, LayerPruningEnv], draws: int, seed: int,
                    round_to: int, max_ratio: float) -> pd.DataFrame:
    """Per target: the least and median predicted latency ratio over `draws` random policies (no timing), the
    uniform policy's, and the ratio a speed-up of 0.8x the MACs reduction needs (target / 0.8)."""
    rows = []
    for target, env in envs.items():
        ratios = [table.ratio(policy.kept(graph, round_to)) for _, policy in sample_policies(env, draws, seed)]
        uniform = table.ratio(uniform_for_macs(graph, target, round_to, max_ratio).kept(graph, round_to))
        rows.append({"MACs target": target, "random policies": draws, "least predicted ratio": min(ratios),
                     "median": float(np.median(ratios)), "uniform": uniform, "needed for 0.8x": target / 0.8})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_model", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    parser.add_argument("--targets", default="0.5,0.25", help="comma-separated MACs targets")
    parser.add_argument("--policies-per-target", type=int, default=20)
    parser.add_argument("--policies", action="append", default=[], metavar="FOLDER",
                        help="include the chosen policies found in FOLDER (see `saved_policies`), e.g. a bench results "
                             "folder; repeatable")
    parser.add_argument("--table", help="a latency table to check (default: measure one now)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=0,
                        help="also price this many random policies per target from the table alone (no timing): the "
                             "least latency ratio any policy reaches")
    parser.add_argument("--layers", action="store_true",
                        help="also time each layer of each pruned model in place beside its table entry "
                             "(latency_layers-<model>-t<threads>.csv; see bench.latency_layers)")
    parser.add_argument("--out", default="results/bench", help="folder for the CSV and Markdown")
    args = parser.parse_args(argv)
    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        print(f"--targets: expected comma-separated numbers, got {args.targets!r}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        set_threads(args.threads)
        torch.manual_seed(args.seed)
        data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
        model = build_from_arch(architecture(cfg, data)).eval()
        graph = configured_units(model, data.input_shape, cfg.prune)
        table = LatencyTable.load(args.table) if args.table else measure_table(cfg, model, graph)
        table.check(graph, cfg.prune.round_to)
        named: list[tuple[str, float, SparsityPolicy]] = []
        envs = {target: LayerPruningEnv(graph, deferred=True, **{**env_kwargs(cfg), "macs_target": target})
                for target in targets}
        for target, env in envs.items():
            named.append(("uniform", target, uniform_for_macs(graph, target, cfg.prune.round_to, cfg.prune.max_ratio)))
            named += [(name, target, policy) for name, policy in sample_policies(env, args.policies_per_target, args.seed)]
        for folder in args.policies:
            named += saved_policies(Path(folder), graph, targets, cfg.prune.max_ratio)
    except UserError as exc:
        print(f"bench.latency_model: error: {exc}", file=sys.stderr)
        return 2
    layers: list[dict] | None = [] if args.layers else None
    frame = compare(model, table, named, graph, cfg.prune.round_to, table.batch_size, args.repeats, layers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"latency_model-{cfg.model.name.replace(':', '_')}-t{torch.get_num_threads()}"
    write_csv(frame, out / f"{stem}.csv")
    if layers is not None:
        write_csv(pd.DataFrame(layers), out / f"{stem.replace('latency_model', 'latency_layers')}.csv")
    lines = [f"# Latency table vs measured latency: {cfg.model.name}, batch {table.batch_size}, "
             f"{torch.get_num_threads()} thread(s)", "",
             f"`python -m bench.latency_model {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "Ratios are pruned / dense latency as deployed (BN folded; channels-last on a CPU), dense timed beside "
             "each policy in alternating rounds. Table: dense model "
             f"{table.dense_ms:.2f} ms; outside convs and linears {table.rest_fixed_ms:.2f} ms fixed + "
             f"{table.rest_activation_ms:.2f} ms x the fraction of activations kept.", "",
             markdown_table(summarise(frame)), ""]
    if args.draws > 0:
        lines += [f"Predicted by the table alone, {args.draws} random policies per target (seed {args.seed}):", "",
                  markdown_table(predicted_floor(graph, table, envs, args.draws, args.seed, cfg.prune.round_to,
                                                 cfg.prune.max_ratio)), ""]
    if layers is not None:
        lines += ["Each conv/linear layer timed in place (forward hooks inside whole passes; the hooks add a little to "
                  "every layer alike) against its table entry, summed per policy; the per-layer rows are in "
                  f"`{stem.replace('latency_model', 'latency_layers')}.csv`:", "",
                  markdown_table(summarise_layers(pd.DataFrame(layers))), ""]
    lines += [markdown_table(frame), ""]
    atomic_write_text(out / f"{stem}.md", "\n".join(lines))
    print("\n".join(lines[4:-2]))  # the summary and the floor, without the per-policy rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
