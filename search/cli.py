"""`prunepilot` command line: one sub-command per job; user errors exit 2 with a message, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from pruning.errors import UserError
from search.termination import interrupts_deferred, sigterm_received, stop_on_signals

log = logging.getLogger("prunepilot")


def port_number(text: str) -> int:
    """argparse type of --port: a TCP port, so a typo is a usage error, not a bind() traceback."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return int(text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--out", help="run folder (default results/<config name>/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunepilot", description=__doc__,
                                     epilog="Any config value can be overridden after the config: dotted.key=value "
                                            "(e.g. prune.steps=6 train.epochs=10).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or load the cached) dense baseline")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", metavar="FILE.pt", help="also write the baseline's checkpoint here (e.g. to keep it beside "
                                                    "results and pin it with model.checkpoint); it is always cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--retrain", action="store_true", help="train again even when a cached baseline exists")

    p = sub.add_parser("prune", help="progressive prune-finetune to a policy, a MACs target or a uniform ratio")
    _common(p)
    p.add_argument("--policy", help="SparsityPolicy JSON; without it prune.macs_target or prune.uniform_ratio is used")

    p = sub.add_parser("search", help="the main job: search a per-unit policy, then the final progressive pass")
    _common(p)
    p.add_argument("--backend", choices=["local", "ray"], help="override search.backend")
    p.add_argument("--address",
                   help="join an existing Ray cluster at its head's GCS address (e.g. 10.0.0.5:6379, or auto)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<run>/study.db; e.g. postgresql://...)")
    p.add_argument("--storage-path", help="Ray Tune experiment folder shared by the cluster (default <run>/ray)")
    p.add_argument("--resume", metavar="RUN", help="continue the interrupted search in run folder RUN")
    p.add_argument("--agent", help="warm-start the agent from a saved agent.zip (policy reuse across models)")
    p.add_argument("--policy", action="append", metavar="FILE",
                   help="seed the search with a saved policy (this model's, or another model's, resampled by unit "
                        "kind and depth onto this one and its MACs target): evaluated first, the agent learns from "
                        "it; repeatable; ddpg, td3, sac")
    p.add_argument("--prior", metavar="RUN",
                   help="a search run folder of another model (its evaluations.csv and best_policy.json), or a bench's "
                        "evaluations/<run>.csv (policies/<run>.json beside it): a reward "
                        "model of its scores, ranking-weighted against this search's own, screens this search's "
                        "proposals from the first one on; needs agent.candidates > 1")

    p = sub.add_parser("transfer", help="zero-shot: a saved agent or policy proposes a policy for another model")
    _common(p)
    p.add_argument("--agent", help="agent.zip written by `prunepilot search`")
    p.add_argument("--policy", action="append", metavar="FILE",
                   help="a saved policy (e.g. another model's best_policy.json), resampled onto this model by unit "
                        "kind and depth and shifted onto its MACs target; repeatable")

    p = sub.add_parser("dashboard", help="optuna-dashboard on a search run's study (bound to 127.0.0.1)")
    p.add_argument("run", help="run folder written by `prunepilot search`")
    p.add_argument("--port", type=port_number, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--storage", help="a storage URL instead of the run's")

    p = sub.add_parser("sweep", help="accuracy (adaptive BN) vs uniform ratio and MACs")
    _common(p)

    p = sub.add_parser("bench", help="every method at the same budgets, side by side, into results/bench/<name>/")
    _common(p)
    p.add_argument("--parts", help="comma-separated subset of comparison,transfer,efficiency,zoo (default: all)")
    p.add_argument("--collect-only", action="store_true",
                   help="comparison: tabulate the runs already finished (here or copied from other machines) and "
                        "time their latency here; start no run")

    p = sub.add_parser("latency-table", help="time every layer at every channel count a policy can give it "
                                             "(for env.latency_weight); model shapes only, no training")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", help="JSON file (default results/<config name>-latency/latency_table.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("sensitivity", help="per-unit accuracy drop at a few ratios")
    _common(p)
    return parser


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from bench import runner
    from search import dashboard, jobs, search_job

    return {"train": jobs.train_job, "prune": jobs.prune_job, "sweep": jobs.sweep_job,
            "sensitivity": jobs.sensitivity_job, "search": search_job.search_job,
            "dashboard": dashboard.dashboard_job, "transfer": search_job.transfer_job,
            "bench": runner.bench_job, "latency-table": jobs.latency_table_job}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides are written dotted.key=value)")
    args.overrides = [e for e in extra if e not in unknown]
    if args.command == "dashboard" and args.overrides:
        parser.error(f"unrecognized arguments: {' '.join(args.overrides)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_from_working_folder()
    # the dashboard keeps nothing to save, and its server (Bottle) swallows the interrupt and could hang after it
    restore_signals = stop_on_signals() if args.command != "dashboard" else (lambda: None)
    try:
        with interrupts_deferred("loading"):  # a Ctrl-C inside a C extension's import failed it with a traceback
            command = _commands()[args.command]
        return command(args)
    except UserError as exc:
        print(f"prunepilot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if sigterm_received():
            print(f"prunepilot {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"prunepilot {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        shut_ray_down()
        restore_signals()


def shut_ray_down() -> None:
    """Stop the Ray this job started or joined now, a Ctrl-C held until it is done: left to Ray's exit hook, a Ctrl-C
    that landed in it (pressed as the job finished) printed a traceback and the job exited with code 1."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(KeyboardInterrupt), interrupts_deferred("Ray's shutdown"):
            ray.shutdown()


def import_from_working_folder() -> None:
    """A `module:factory` (model.name, data.name) beside the config imports as it would under `python -m`: the
    console script's sys.path lacked the working folder, so `mymodels:net` failed with 'No module named'. Appended,
    so a file there never shadows an installed package; Ray's workers get the driver's sys.path with the job."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def run_folder(args: argparse.Namespace, name: str) -> Path:
    """--out, else results/<name>: checked before any work, so a file in its place is a message, not a traceback."""
    return output_folder(Path(args.out) if args.out else Path("results") / name)


def output_folder(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out: {path} is a file; expected a folder (new, or one this command wrote) for the results")
    check_can_create(path)
    return path


def output_file(path: Path, suffix: str) -> Path:
    """A file the command writes at its end (`--out`), checked before the work: the write would fail after it."""
    if path.suffix != suffix:
        raise UserError(f"--out: expected a {suffix} file, got {path}")
    if path.is_dir():
        raise UserError(f"--out: {path} is a folder; expected a {suffix} file")
    check_can_create(path)
    return path


def check_can_create(path: Path) -> None:
    """The folder `path` goes in can be made and written: its nearest existing ancestor is a writable folder."""
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"--out: cannot make {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out: cannot make {path}: no permission to write in {ancestor}")


if __name__ == "__main__":
    sys.exit(main())
