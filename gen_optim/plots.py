"""Pictures of a GeNAdamW run: the PPI heatmap, APPI curves and the Pareto frontier.

Each function draws from the plain records the optimizer keeps (``opt.history``,
``state["appi"]``) or from a run directory's JSON files, so users can draw their own runs:

    python -m gen_optim.plots RUN_DIR     # redraws RUN_DIR/*.png from RUN_DIR/*.json

A run directory holds ``ppi_history.json`` (``opt.history``), ``frontier.json``
(``{"greedy": [...], "exact": [...]}`` of frontier points) and optionally ``metrics.json``
with ``{"runs": [{"name", "fraction", "perplexity"}, ...]}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("gen_optim.plots needs matplotlib: pip install 'genadamw[plots]'") from err
    return plt


def group_names(history: list[dict[str, Any]]) -> list[str]:
    """The groups probed in ``history``, in the order they first appear."""
    return list(dict.fromkeys(name for record in history for name in record["groups"]))


def ppi_matrix(history: list[dict[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Group names, probe steps, and PPI per (group, round); NaN where a group was not probed."""
    names = group_names(history)
    steps = np.array([record["step"] for record in history])
    ppi = np.full((len(names), len(history)), np.nan)
    for j, record in enumerate(history):
        for i, name in enumerate(names):
            entry = record["groups"].get(name)
            if entry is not None and entry["accepted"]:
                ppi[i, j] = entry["ppi"]
    return names, steps, ppi


def clean(row: np.ndarray, smoothing: float = 0.9) -> np.ndarray:
    """The paper's outlier removal (drop values outside [Q1 - 3 IQR, Q3 + 3 IQR]), then an EMA."""
    out = np.full_like(row, np.nan)
    finite = row[np.isfinite(row)]
    if finite.size == 0:
        return out
    q1, q3 = np.percentile(finite, [25, 75])
    low, high = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
    ema = None
    for j, value in enumerate(row):
        if np.isfinite(value) and low <= value <= high:
            ema = value if ema is None else smoothing * ema + (1 - smoothing) * value
        out[j] = np.nan if ema is None else ema
    return out


def ppi_heatmap(history: list[dict[str, Any]], path: str | Path, reference: str = "others") -> None:
    """Cleaned PPI of each group over the probe rounds, divided by the ``reference`` row, log scale."""
    plt = _pyplot()
    names, steps, ppi = ppi_matrix(history)
    smooth = np.vstack([clean(row) for row in ppi])
    if reference in names:
        smooth = smooth / smooth[names.index(reference)]
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.log10(smooth)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.8))
    image = ax.imshow(logged, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(names)), names)
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 10)).round().astype(int))
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
    ax.set_xlabel("optimizer step of the probe round (one column per round; blank: no accepted fit)")
    ax.set_title(f"PPI per group (outliers removed, EMA 0.9), relative to '{reference}'" if reference in names
                 else "PPI per group (outliers removed, EMA 0.9)")
    fig.colorbar(image, ax=ax, label=f"log10(PPI / PPI[{reference}])" if reference in names else "log10(PPI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def appi_series(history: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """The steps of group ``name``'s rounds and its APPI after each, as each record keeps it (a
    thinned history loses no APPI); records of earlier versions kept none, and their APPI is the
    running sum of their PPI."""
    steps, appi, total = [], [], 0.0
    for record in history:
        entry = record["groups"].get(name)
        if entry is not None:
            total = entry["appi"] if "appi" in entry else total + entry["ppi"]
            steps.append(record["step"])
            appi.append(total)
    return steps, appi


def appi_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """APPI (accumulated PPI) of each group over the probe rounds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in group_names(history):
        ax.plot(*appi_series(history, name), marker=".", label=name)
    ax.set_yscale("symlog", linthresh=1e-12)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("APPI (PPI x steps since the group's last round)")
    ax.set_title("Accumulated per-parameter influence")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frontier_plot(frontiers: dict[str, list[dict[str, Any]]], path: str | Path, runs: list[dict[str, Any]] | None = None) -> None:
    """Predicted value vs trainable fraction of each frontier; measured perplexities beside it."""
    plt = _pyplot()
    ncols = 2 if runs else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5), squeeze=False)
    ax = axes[0, 0]
    for (method, points), style in zip(frontiers.items(), ("o-", "s--")):
        xs = [p["fraction"] for p in points]
        ax.step(xs, [p["value"] for p in points], style, where="post", label=method, alpha=0.8)
    ax.set_xlabel("trainable fraction |A| / |w|")
    ax.set_ylabel("value: sum of APPI x |w| (accumulated A^2/B)")
    ax.set_title("Pareto frontier of the selection")
    ax.legend()
    if runs:
        ax = axes[0, 1]
        for run in runs:
            ax.scatter(run["fraction"], run["perplexity"], marker="*" if run["name"] == "selected" else "o", s=90)
            ax.annotate(run["name"], (run["fraction"], run["perplexity"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_xlabel("trainable fraction of the large model")
        ax.set_ylabel("test perplexity (reference tokens)")
        ax.set_title("Selected mask vs fixed PEFT masks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_run(run_dir: str | Path) -> list[Path]:
    """Draw every picture a run directory's JSON files allow; returns the PNG paths."""
    run_dir = Path(run_dir)
    history = json.loads((run_dir / "ppi_history.json").read_text())
    if not history:
        raise ValueError(f"{run_dir / 'ppi_history.json'} holds no probe rounds")
    paths = [run_dir / "ppi_heatmap.png", run_dir / "appi.png", run_dir / "frontier.png"]
    ppi_heatmap(history, paths[0])
    appi_curves(history, paths[1])
    metrics = run_dir / "metrics.json"
    runs = json.loads(metrics.read_text()).get("runs") if metrics.exists() else None
    frontier_plot(json.loads((run_dir / "frontier.json").read_text()), paths[2], runs)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Redraw a gen_optim run directory's pictures from its JSON files.")
    parser.add_argument("run_dir")
    for path in draw_run(parser.parse_args().run_dir):
        print(path)


if __name__ == "__main__":
    main()
