"""Send a signal to a prunepilot job at each of several delays and tabulate how it ended.

A Ctrl-C or a scheduler's SIGTERM can land anywhere: in an import, inside `ray.init`, in the report's writing, in
Ray's shutdown. This is how the places where one was dropped or crashed the job were found; rerun it after changing
the job's start or end. Each row: the delay, the exit code, whether Python printed "Exception ignored" (an interrupt
dropped), what was left in the run folder, and the job's last line.

    python scripts/interrupt_sweep.py --signal INT --delays 0.5:8:0.25 -- search tests/my.yaml search.evaluations=6

The job runs as `python -m search.cli ARGS --out <tmp>/run`, from the working folder, with the project importable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def delays_of(text: str) -> list[float]:
    """'a:b:step' (b included) or a comma list."""
    if ":" in text:
        start, stop, step = (float(part) for part in text.split(":"))
        return [round(float(d), 3) for d in np.arange(start, stop + step / 2, step)]
    return [float(d) for d in text.split(",")]


def one_run(job: list[str], delay: float, signum: int, folder: Path, timeout_s: float) -> dict:
    out = folder / "run"
    shutil.rmtree(out, ignore_errors=True)
    log = folder / "job.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "search.cli", *job, "--out", str(out)], stdout=sink,
                                   stderr=subprocess.STDOUT, env=env)
        time.sleep(delay)
        process.send_signal(signum)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = f"killed after {timeout_s:g} s"
    said = log.read_text(errors="replace")
    lines = [line for line in said.replace("\r", "\n").splitlines() if line.strip()]
    return {"delay_s": delay, "exit_code": code, "dropped": "Exception ignored" in said,
            "left": " ".join(sorted(p.name for p in out.iterdir())) if out.is_dir() else "",
            "last_line": lines[-1][:120] if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signal", default="INT", choices=["INT", "TERM"])
    parser.add_argument("--delays", default="0.5:8:0.5", help="seconds after the start: a:b:step or a,b,c")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a job may take after the signal")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- then the prunepilot command and its arguments")
    args = parser.parse_args()
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job:
        parser.error("give the job after --, e.g. -- search configs/demo.yaml")
    signum = getattr(signal, f"SIG{args.signal}")
    with tempfile.TemporaryDirectory(prefix="interrupt-sweep-") as tmp:
        rows = []
        for delay in delays_of(args.delays):
            rows.append(one_run(job, delay, signum, Path(tmp), args.timeout))
            print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    table = pd.DataFrame(rows)
    print(table["exit_code"].astype(str).value_counts().to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
