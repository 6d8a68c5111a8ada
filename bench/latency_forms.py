"""Eager vs BN-folded vs as-deployed vs ONNX Runtime: the speed-up of every finished run's pruned model.

`prunepilot bench` times models as deployed (`pruning.inference.timing_form`: BN folded, channels-last
on a CPU). This tool measures what each step changes, on a quiet machine: for each run with a final
model it times the dense baseline and the pruned model in every form, interleaved in rounds so
that load drift falls on each alike, and writes `latency_forms-t<threads>.{csv,md}` into the results folder.
The opt-in `onnxruntime` form is the exported ONNX file (`pruning.export.export_onnx`) run by onnxruntime with
all graph optimisations and as many threads as torch: the runtime a user who ships the ONNX export gets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.latency import run_models
from pruning.checkpoint import atomic_write_text
from pruning.cost import count_macs, time_forward
from pruning.errors import UserError
from pruning.export import export_onnx
from pruning.inference import inference_form, timing_form
from pruning.runtime import set_threads
from search.report import markdown_table, write_csv


class OnnxRuntimeForm(nn.Module):
    """A model exported to ONNX and run by onnxruntime, callable like the torch forms (`time_forward` times it)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            export_onnx(model, path, input_shape)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # idle onnxruntime workers otherwise spin on the cores the torch forms are timed on next
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"input": np.ascontiguousarray(x.cpu().numpy())})[0])


FORMS = {"eager": lambda model, shape: model, "folded": lambda model, shape: inference_form(model),
         "deployed": lambda model, shape: timing_form(model, shape)}
ONNXRUNTIME = {"onnxruntime": OnnxRuntimeForm}
"""Opt-in (`--onnxruntime`): one run with it timed every torch form slower than an earlier run without it;
whether onnxruntime in the process or the machine did that is not settled, so the default leaves it out."""


def finished_runs(folder: Path) -> list[Path]:
    """The run folders under `folder`: a bench folder's `runs/*`, `folder` itself if it is one `prunepilot prune`
    output, or its sub-folders that are (`results/bench/<name>/final/` holds one prune output per policy)."""
    if (folder / "runs").is_dir():
        return sorted(p for p in (folder / "runs").iterdir() if p.is_dir())
    if (folder / "model.pt").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "model.pt").is_file()) if folder.is_dir() else []


def macs_target(run: Path, recorded: dict[str, float]) -> float | None:
    """The run's MACs target: as the bench's `runs.csv` recorded it, else from the policy the pass applied."""
    if run.name in recorded:
        return recorded[run.name]
    policy = run / "policy.json"
    return json.loads(policy.read_text()).get("meta", {}).get("macs_target") if policy.is_file() else None


def compare_forms(folder: Path, repeats: int, rounds: int, forms: dict = FORMS) -> pd.DataFrame:
    """One row per (run, batch): median ms of dense and pruned in each form, and each form's speed-up."""
    runs = finished_runs(folder)
    targets = {}
    if (folder / "runs.csv").is_file():
        targets = pd.read_csv(folder / "runs.csv").set_index("run")["macs_target"].to_dict()
    dense_models: dict[str, torch.nn.Module] = {}
    rows = []
    for run in runs:
        models = run_models(run, dense_models)
        if models is None:
            continue
        dense, pruned, shape = models
        pairs = {form: (make(dense, shape), make(pruned, shape)) for form, make in forms.items()}
        reduction = count_macs(dense, shape) / count_macs(pruned, shape)
        for batch in (1, 64):
            times: dict[tuple[str, str], list[float]] = {}
            fastest: dict[tuple[str, str], float] = {}
            for _ in range(rounds):
                for form, pair in pairs.items():
                    for which, model in zip(("dense", "pruned"), pair):
                        timed = time_forward(model, shape, batch, max(3, repeats // rounds))
                        times.setdefault((form, which), []).append(timed.median_ms)
                        fastest[(form, which)] = min(fastest.get((form, which), float("inf")), timed.min_ms)
            row = {"run": run.name, "macs_target": macs_target(run, targets), "batch": batch,
                   "macs_reduction": reduction}
            for form in forms:
                dense_ms, pruned_ms = (statistics.median(times[(form, w)]) for w in ("dense", "pruned"))
                ratios = [d / q for d, q in zip(times[(form, "dense")], times[(form, "pruned")])]
                row.update({f"{form}_dense_ms": dense_ms, f"{form}_pruned_ms": pruned_ms,
                            f"{form}_speedup": dense_ms / pruned_ms,
                            f"{form}_speedup_low": min(ratios), f"{form}_speedup_high": max(ratios),
                            f"{form}_speedup_over_macs_reduction": dense_ms / pruned_ms / reduction,
                            f"{form}_speedup_fastest": fastest[(form, "dense")] / fastest[(form, "pruned")],
                            f"{form}_speedup_fastest_over_macs_reduction":
                                fastest[(form, "dense")] / fastest[(form, "pruned")] / reduction})
            rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{folder}: no finished run with a final model (runs/*/model.pt)")
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean speed-up over MACs reduction per MACs target and batch, in each form (of the medians, and of the fastest
    passes)."""
    keys = ["macs_target", "batch"] if frame["macs_target"].notna().all() else ["batch"]
    forms = [c.removesuffix("_speedup") for c in frame.columns if c.endswith("_speedup")]
    columns = [f"{form}_speedup{kind}_over_macs_reduction" for form in forms for kind in ("", "_fastest")]
    return frame.groupby(keys)[["macs_reduction", *[f"{f}_speedup" for f in forms], *columns]].mean().reset_index()


def check_keeps_earlier_runs(earlier: Path, timed: set[str]) -> None:
    """Raise if `earlier` (a timing file this call would overwrite) lists runs this call did not time.

    Final models are not committed, so on another clone or after a clean-up a rerun can time only the runs made
    there: overwriting would silently drop the committed re-timings of the others.
    """
    if not earlier.is_file():
        return
    dropped = sorted(set(pd.read_csv(earlier, usecols=["run"])["run"]) - timed)
    if dropped:
        raise UserError(f"{earlier}: lists runs whose final models are not here ({', '.join(dropped)}); overwriting it "
                        "would drop their re-timing. Give --out FOLDER to write elsewhere, or --replace")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.latency_forms", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a bench results folder with finished runs (e.g. results/bench/resnet20), "
                                             "the output folder of one `prunepilot prune`, or a folder of them")
    p.add_argument("--repeats", type=int, default=40, help="timed forward passes per model, form and batch (>= 3)")
    p.add_argument("--rounds", type=int, default=8, help="alternation rounds the repeats are split into (>= 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--onnxruntime", action="store_true", help="also time the ONNX export in onnxruntime")
    p.add_argument("--out", type=Path, default=None, help="folder for the CSV and Markdown (default: FOLDER)")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an earlier timing that lists runs whose final models are no longer here")
    args = p.parse_args(argv)
    if args.repeats < 3 or args.rounds < 1 or (args.threads is not None and args.threads < 1):
        sys.exit(f"error: --repeats must be >= 3, --rounds and --threads >= 1 (got {args.repeats}, {args.rounds}, "
                 f"{args.threads})")
    threads = set_threads(args.threads)
    stem = f"latency_forms-t{threads}"  # one file per thread count: the figures differ with it
    out = args.out or args.folder
    try:
        if not args.replace:  # before the timing, which takes minutes
            check_keeps_earlier_runs(out / f"{stem}.csv", {run.name for run in finished_runs(args.folder)})
        forms = {**FORMS, **(ONNXRUNTIME if args.onnxruntime else {})}
        frame = compare_forms(args.folder, args.repeats, args.rounds, forms)
    except (UserError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(frame, out / f"{stem}.csv")
    command = f"python -m bench.latency_forms {args.folder} --repeats {args.repeats} --rounds {args.rounds}" + (
        f" --threads {args.threads}" if args.threads else "") + (" --onnxruntime" if args.onnxruntime else "") + (
        f" --out {args.out}" if args.out else "")
    md = (f"# Latency: eager modules vs BatchNorm folded vs as deployed (folded, channels-last on a CPU)"
          f"{' vs the ONNX export in onnxruntime' if args.onnxruntime else ''}, "
          f"`{args.folder}`\n\n"
          f"Each run's dense baseline and final pruned model, timed in each form, interleaved over {args.rounds} rounds "
          f"({args.repeats} passes each), {threads} torch thread(s), {len(frame) // 2} run(s). Speed-up = dense ms / "
          f"pruned ms in the same form, of the medians over rounds; `fastest`: of the fastest passes (other load only ever "
          f"slows a pass down). The target is a speed-up of at "
          f"least 0.8 x the MACs reduction at batch 64.\n\n"
          f"## Mean over runs\n\n{markdown_table(summary_table(frame), '.3g')}\n\n"
          f"## Per run\n\n{markdown_table(frame, '.3g')}\n\nRegenerate: `{command}`\n")
    atomic_write_text(out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
