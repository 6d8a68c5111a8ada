"""Run-folder outputs: tables (CSV + parquet), PNG plots and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pruning.checkpoint import atomic_write, atomic_write_all, atomic_write_text  # noqa: E402


def write_table(rows: Sequence[dict] | pd.DataFrame, folder: Path, stem: str) -> pd.DataFrame:
    """Write `stem`.csv and `stem`.parquet, each whole, and both renamed into place only once both are written (a
    bench reads its runs.csv back); return the frame."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    atomic_write_all({folder / f"{stem}.csv": lambda tmp: frame.to_csv(tmp, index=False),
                      folder / f"{stem}.parquet": lambda tmp: frame.to_parquet(tmp, index=False)})
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """One CSV table, whole or not at all."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_json(payload: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def save_figure(fig: Figure, path: Path) -> None:
    """Save a plot whole or not at all (format from the suffix, PNG without one), and free it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def plot_unit_ratios(names: list[str], series: dict[str, list[float]], path: Path, title: str) -> None:
    """Per-unit ratios of one or more policies (e.g. best vs uniform), in network order."""
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(names))], values, width=width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("pruning ratio")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_lines(frame: pd.DataFrame, x: str, ys: list[str], path: Path, title: str, xlabel: str | None = None,
               ylabel: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for y in ys:
        ax.plot(frame[x], frame[y], marker="o", label=y)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or ", ".join(ys))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(ys) > 1:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_heatmap(frame: pd.DataFrame, index: str, columns: str, values: str, path: Path, title: str) -> None:
    table = frame.pivot_table(index=index, columns=columns, values=values, sort=False)
    fig, ax = plt.subplots(figsize=(1.2 * len(table.columns) + 3, 0.3 * len(table) + 1.5))
    image = ax.imshow(table.values, aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(table.columns)), [f"{c:g}" for c in table.columns])
    ax.set_yticks(range(len(table.index)), table.index, fontsize=7)
    ax.set_xlabel(columns)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=values)
    fig.tight_layout()
    save_figure(fig, path)
