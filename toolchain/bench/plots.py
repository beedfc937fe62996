"""PNG plots of an ablation (matplotlib, no display): accuracy vs memory, vs rank, vs frame budget K."""

from __future__ import annotations

from pathlib import Path

PLOTS = {"accuracy_vs_memory.png": ("train_peak_mb", "training peak memory (MB)"),
         "accuracy_vs_rank.png": ("rank", "LoRA rank"),
         "accuracy_vs_frames.png": ("frames", "frames per clip (K)")}
SHORT = {"quant": "", "rank": "r", "placement": "", "frames": "K"}
AXIS_COLUMN = {"quant": "quant", "rank": "rank", "placement": "placement", "frames": "frames"}


def series(rows: list[dict], x_col: str, group_axes: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """Rows grouped by the values of the other grid axes -> sorted (x, t2v, v2t) points."""
    out: dict[str, list] = {}
    for r in rows:
        name = " ".join(f"{a}={r[AXIS_COLUMN[a]]}" for a in group_axes) or "recipe"
        out.setdefault(name, []).append((float(r[x_col]), float(r["t2v_r1"]), float(r["v2t_r1"])))
    return {k: sorted(v) for k, v in out.items()}


def annotate(ax, rows: list[dict], x_col: str, axes: list[str]) -> None:
    """Name each point by its other grid axes (the memory plot has no line to follow)."""
    varying = [a for a in axes if len({r[AXIS_COLUMN[a]] for r in rows}) > 1]
    for r in rows:
        text = " ".join(f"{SHORT[a]}{r[AXIS_COLUMN[a]]}" for a in varying)
        ax.annotate(text, (float(r[x_col]), float(r["t2v_r1"])), fontsize=6, xytext=(3, 3), textcoords="offset points")


def plot_one(rows: list[dict], x_col: str, x_label: str, group_axes: list[str], path: Path, lines: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for i, (name, pts) in enumerate(series(rows, x_col, group_axes).items()):
        xs, t2v, v2t = zip(*pts)
        color = f"C{i % 10}"
        style = "-o" if lines else "o"
        ax.plot(xs, t2v, style, color=color, label=f"{name} t2v")
        ax.plot(xs, v2t, style.replace("-", "--"), color=color, mfc="none", label=f"{name} v2t")
    if not lines:
        annotate(ax, rows, x_col, [a for a in AXIS_COLUMN if a != "quant"])
    ax.set_xlabel(x_label)
    ax.set_ylabel("R@1 on the eval split")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(rows: list[dict], grid_axes: list[str], out: Path) -> list[Path]:
    """One PNG per plot; a line joins cells that differ only in the plotted axis."""
    if not rows:
        return []
    written = []
    for name, (x_col, x_label) in PLOTS.items():
        swept = {"rank": "rank", "frames": "frames"}.get(x_col)
        group = [a for a in grid_axes if a != swept]
        if swept is None:  # memory: colour by bit width, name points by the other axes
            group = [a for a in grid_axes if a == "quant"]
        plot_one(rows, x_col, x_label, group, out / name, lines=swept is not None)
        written.append(out / name)
    return written
