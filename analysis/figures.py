"""Figures from the estimates (PDF + PNG, sized for one column, ~3.3 in, 6-7 pt text).

One colour per method in every figure (seaborn's colour-blind palette, fixed assignment); published reference
scores (`source = published` in the scores table) use their method's colour, dashed lines / hatched bars, and are
labelled "(published)"; the KalMamba ablations also get dot patterns. Names and panels per experiment (see
analysis/plan.py):
- main experiment (Fig. 3 pixels, Fig. 4 noisy state): `<prefix>_aggregate` (IQM, median, mean, optimality gap
  with 95% CIs), `<prefix>_curves` (IQM return vs env steps: all tasks, then one panel per task),
  `<prefix>_profiles` (score distributions); the same three for `<prefix>_ablations_*` (KalMamba vs its
  ablations: the ablation panel of Fig. 3) when the experiment has ablations; `<prefix>_improvement`
  (P(KalMamba > Y) for every other method Y).
- context experiment (Fig. 5): `<prefix>_env_steps`, `<prefix>_wall_clock` (one panel per context length,
  one line per method, as in the paper), `<prefix>_by_length` (one row per method, return vs env steps and vs
  wall-clock hours, one line per context length), `<prefix>_budget` (env steps reached within the budget),
  `<prefix>_improvement`.
- main experiment on `state` / `noisy_state`: `<prefix>_probe`, the belief probe (rl/probe.py): R^2 of a ridge
  read-out of the true state from each method's features (its colour) and from the raw observation (grey,
  hatched), mean over runs with 95% CIs, one panel per task (and all tasks).
- `fig6_update_step` (Fig. 6): forward and update time vs context length, from bench/update_step.json.
Published curves are DreamerV3's own logs: the return of its *training* episodes (stochastic policy), averaged per
evaluation interval; ours are *evaluation* episodes (deterministic policy). Every figure that shows them says so
(`PUBLISHED_NOTE`).
A figure whose data is missing is still written (the list of files depends on the study config only) and says
so on its canvas; a figure of an incomplete study says "incomplete: k of n runs" in its title (and what was left
out: runs short of the budget, runs without evaluations, published scores unavailable offline). Data without an
interval (fewer than 2 runs) is drawn as its point estimate without a band or bar and labelled "(n=1)".
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from analysis.estimates import METRICS, MIN_RUNS_FOR_CI, Settings, coverage_note  # noqa: E402
from analysis.plan import (PUBLISHED_SUFFIX, UPDATE_STEP_FIGURE, Experiment, display_name,  # noqa: E402
                           expected_figures, is_ablation, sort_methods)
from rl import methods as registry  # noqa: E402
from rl.io import atomic_write_bytes  # noqa: E402

__all__ = ["expected_figures", "build_figures", "write_figures", "method_color"]
log = logging.getLogger(__name__)

COLUMN_WIDTH = 3.3  # inches
HOURS = FuncFormatter(lambda h, _: f"{h:.2g}")  # wall-clock hours, short labels at any scale
# Colours and the ablations' dash patterns: rl/methods.py (seaborn's colour-blind palette, fixed assignment; the
# ablations, drawn next to KalMamba in similar warm colours, get their own dot patterns as well, so that they are
# told apart without colour vision). Lines: our runs solid, published references dashed.
PUBLISHED_DASHES = (4, 2)
EXPERIMENT_TITLES = {"pixels": "Pixels", "state": "State", "noisy_state": "Noisy state", "context": "Noisy state"}
RC = {
    "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6, "ytick.labelsize": 6,
    "legend.fontsize": 6, "figure.titlesize": 7.5, "lines.linewidth": 1.1, "axes.linewidth": 0.6,
    "grid.linewidth": 0.4, "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5,
    "ytick.major.size": 2.5, "legend.frameon": False, "pdf.fonttype": 42, "ps.fonttype": 42,
    "figure.constrained_layout.h_pad": 0.03, "figure.constrained_layout.w_pad": 0.03,
}
PNG_DPI = 200
PUBLISHED_NOTE = "published: training-episode returns, binned per eval interval; ours: evaluation episodes"
OBSERVATION_COLOR = "0.85"   # the probe's reference, a read-out of the raw observation: light grey, hatched


def method_color(method: str) -> str:
    """The method's colour (rl/methods.py); a method without one (or unregistered) gets a spare colour picked by
    a stable hash of its name."""
    base = method.removesuffix(PUBLISHED_SUFFIX)
    color = registry.get(base).color if base in registry.names() else ""
    return color or registry.SPARE_COLORS[sum(base.encode()) % len(registry.SPARE_COLORS)]


def _line_style(method: str) -> dict:
    """Keyword arguments of `ax.plot` for a method's line: colour and dash pattern."""
    if method.endswith(PUBLISHED_SUFFIX):
        dashes = PUBLISHED_DASHES
    else:
        dashes = registry.get(method).dashes if method in registry.names() else ()
    return dict(color=method_color(method), dashes=dashes)


def _n_label(label: str, n) -> str:
    """The label of data without an interval says how many runs it has: 'KalMamba (n=1)'."""
    return f"{label} (n={int(n)})" if pd.notna(n) and n < MIN_RUNS_FOR_CI else label


def _style():
    return plt.rc_context({**sns.axes_style("whitegrid"), **RC})


def _suptitle(fig: Figure, title: str, note: str = "") -> None:
    """Title, then the note in parentheses, broken at its "; " clauses into lines that fit the figure's width (a
    clause is never split, so a phrase stays searchable; one longer than a line gets a line of its own)."""
    lines = [title]
    if note:
        points = matplotlib.font_manager.FontProperties(size=plt.rcParams["figure.titlesize"]).get_size_in_points()
        width = max(20, int(fig.get_figwidth() * 72 / (0.6 * points)))   # characters per line, ~0.6 em each
        clauses = f"({note})".split("; ")
        lines.append(clauses[0])
        for clause in clauses[1:]:
            if len(lines[-1]) + 2 + len(clause) <= width:
                lines[-1] += "; " + clause
            else:
                lines[-1] += ";"
                lines.append(clause)
    fig.suptitle("\n".join(lines))


def _grid(n_panels: int, row_height: float, extra: float = 0.6, sharex=True, sharey=True):
    """(figure, panel axes, ncols, spare): panels in 2 columns (1 if there is one panel); `spare` is the empty slot
    at the bottom right when the panel count is odd (it holds the legend), else None."""
    ncols = 1 if n_panels == 1 else 2
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, extra + row_height * nrows), layout="constrained",
                             squeeze=False, sharex=sharex, sharey=sharey)
    spare = None
    for ax in axes.flat[n_panels:]:
        ax.set_axis_off()
        spare = ax
    return fig, list(axes.flat[:n_panels]), ncols, spare


def _legend_columns(labels: list[str], width_pt: float = 0.92 * COLUMN_WIDTH * 72) -> int:
    """As many legend columns as fit the column width at the legend font size (6 pt; ~0.55 em per character)."""
    col = 0.55 * 6 * max(len(lab) for lab in labels) + 6 * (1.6 + 0.8 + 1.0)
    return max(1, min(len(labels), int(width_pt // col)))


def _return_axis(ax) -> None:
    """DMC returns lie in [0, 1000]: the same y axis in every return plot."""
    ax.set_ylim(0, 1000)
    ax.set_yticks([0, 250, 500, 750, 1000], ["0", "", "500", "", "1000"])


def _legend(fig: Figure, axes, spare=None) -> None:
    """One legend for all panels (each label once): in the empty panel slot if there is one, else below."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if not handles:
        return
    hs = [handles[lab] for lab in labels]
    if spare is not None:
        spare.legend(hs, labels, loc="center", handlelength=1.6)
    else:
        fig.legend(hs, labels, loc="outside lower center", ncol=_legend_columns(labels), handlelength=1.6,
                   columnspacing=1.0)


def message_figure(title: str, message: str) -> Figure:
    """Stand-in for a figure whose data is missing: the file exists and says why it is empty."""
    with _style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 1.2), layout="constrained")
        ax.set_axis_off()
        ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
        _suptitle(fig, title)
    return fig


# ---------------------------------------------------------------- main experiments
def aggregate_figure(aggregate: pd.DataFrame, methods: list[str], title: str, note: str = "") -> Figure:
    """2 x 2 panels (IQM, median, mean, optimality gap): 95% CI bars and the point estimate per method."""
    methods = [m for m in methods if m in set(aggregate["method"])]
    n = len(methods)
    with _style():
        fig, axes = plt.subplots(2, 2, figsize=(COLUMN_WIDTH, 0.75 + 2 * (0.17 * n + 0.42)), layout="constrained",
                                 sharey=True)
        for ax, metric in zip(axes.flat, METRICS):
            d = aggregate[aggregate["metric"] == metric].set_index("method")
            for i, m in enumerate(methods):
                r = d.loc[m]
                if pd.notna(r["ci_low"]):
                    ax.barh(i, r["ci_high"] - r["ci_low"], left=r["ci_low"], height=0.65, color=method_color(m),
                            alpha=0.8, hatch="///" if m.endswith(PUBLISHED_SUFFIX) else None, edgecolor="white",
                            lw=0)
                ax.vlines(r["estimate"], i - 0.36, i + 0.36, color="black", lw=1.0, clip_on=False)
            ax.use_sticky_edges = False   # bars stick to their left end otherwise: the lowest CI would touch the frame
            ax.margins(x=0.05)
            ax.set_title(metric)
            ax.set_yticks(range(n), [_n_label(display_name(m), d.loc[m, "n_runs"]) for m in methods])
            ax.set_ylim(n - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
            ax.xaxis.set_major_locator(MaxNLocator(4))
        for ax in axes[1]:
            ax.set_xlabel("normalised score")
        _suptitle(fig, title, note)
    return fig


def curves_figure(curves: pd.DataFrame, methods: list[str], tasks: list[str], title: str, note: str = "") -> Figure:
    """IQM return vs env steps with 95% CIs: all tasks (IQM over runs x tasks), then one panel per task (only the
    task's panel if there is one task)."""
    panels = ["aggregate", *tasks] if len(tasks) > 1 else list(tasks)
    with _style():
        fig, axes, ncols, spare = _grid(len(panels), row_height=1.15)
        for k, (ax, panel) in enumerate(zip(axes, panels)):
            for m in methods:
                c = curves[(curves["method"] == m) & (curves["task"] == panel)].sort_values("x")
                if c.empty:
                    continue
                ax.plot(c["x"], 1000 * c["iqm"], **_line_style(m),
                        label=_n_label(display_name(m), c["n_runs"].min()))
                ax.fill_between(c["x"], 1000 * c["ci_low"], 1000 * c["ci_high"], color=method_color(m),
                                alpha=0.2, lw=0)
            ax.set_title("all tasks" if panel == "aggregate" else panel)
            _return_axis(ax)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.xaxis.set_major_locator(MaxNLocator(4))
            if k % ncols == 0:
                ax.set_ylabel("IQM return")
            if k >= len(panels) - ncols:
                ax.set_xlabel("env steps")
                ax.xaxis.set_tick_params(labelbottom=True)
        _legend(fig, axes, spare)
        _suptitle(fig, title, note)
    return fig


def profiles_figure(profiles: pd.DataFrame, methods: list[str], title: str, note: str = "") -> Figure:
    """Score distributions: fraction of runs with normalised score > tau, with 95% CIs."""
    with _style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.3), layout="constrained")
        for m in methods:
            p = profiles[profiles["method"] == m].sort_values("tau")
            if p.empty:
                continue
            ax.plot(p["tau"], p["fraction"], **_line_style(m),
                    label=_n_label(display_name(m), p["n_runs"].min() if "n_runs" in p else None))
            ax.fill_between(p["tau"], p["ci_low"], p["ci_high"], color=method_color(m), alpha=0.2, lw=0)
        ax.set_xlabel(r"normalised score $\tau$")
        ax.set_ylabel(r"fraction of runs with score $> \tau$")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        _legend(fig, [ax])
        _suptitle(fig, title, note)
    return fig


def improvement_figure(improvement: pd.DataFrame, title: str, note: str = "", with_context: bool = False) -> Figure:
    """P(KalMamba > Y) per baseline Y (and context length): 95% CI bar, point estimate, 0.5 marked. Rows of
    `improvement` with another method_x (P(Y > SAC): analysis/estimates.py) are in the tables, not here."""
    imp = improvement[improvement["method_x"] == registry.REFERENCE].copy()
    imp["order"] = imp["method_y"].map({m: i for i, m in enumerate(sort_methods(imp["method_y"]))})
    imp = imp.sort_values(["context_length", "order"] if with_context else ["order"])
    labels = [_n_label(display_name(r.method_y) + (f", L={r.context_length}" if with_context else ""),
                       min(r.n_runs_x, r.n_runs_y)) for r in imp.itertuples()]
    n = len(imp)
    with _style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 0.75 + 0.2 * n), layout="constrained")
        for i, r in enumerate(imp.itertuples()):
            if pd.notna(r.ci_low):
                ax.barh(i, r.ci_high - r.ci_low, left=r.ci_low, height=0.65, color=method_color(r.method_y),
                        alpha=0.8, hatch="///" if r.method_y.endswith(PUBLISHED_SUFFIX) else None,
                        edgecolor="white", lw=0)
            ax.vlines(r.probability, i - 0.36, i + 0.36, color="black", lw=1.0, clip_on=False)
        ax.axvline(0.5, color="0.3", ls=":", lw=0.8)
        ax.set_yticks(range(n), labels)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("P(KalMamba > method)")
        _suptitle(fig, title, note)
    return fig


def probe_figure(probe: pd.DataFrame, methods: list[str], tasks: list[str], title: str, note: str = "") -> Figure:
    """Belief probe: per method, test-half R^2 of a ridge read-out of the true state from its features (method
    colour) and from the raw observation (grey, hatched); bar = 95% CI, tick = mean over runs; one panel per task
    (plus all tasks where there are several)."""
    panels = ["aggregate", *tasks] if len(tasks) > 1 else list(tasks)
    n = len(methods)
    with _style():
        fig, axes, ncols, spare = _grid(len(panels), row_height=0.3 + 0.34 * n, sharex=True, sharey=True)
        for k_ax, (ax, panel) in enumerate(zip(axes, panels)):
            d = probe[probe["task"] == panel]
            for i, m in enumerate(methods):
                for k, inp in enumerate(("features", "observation")):
                    r = d[(d["method"] == m) & (d["input"] == inp)]
                    if r.empty:
                        continue
                    r, y = r.iloc[0], i + (k - 0.5) * 0.4
                    ax.barh(y, r["ci_high"] - r["ci_low"], left=r["ci_low"], height=0.36,
                            color=method_color(m) if inp == "features" else OBSERVATION_COLOR, alpha=0.85,
                            hatch=None if inp == "features" else "////", edgecolor="0.45", lw=0)
                    ax.vlines(r["estimate"], y - 0.2, y + 0.2, color="black", lw=1.0, clip_on=False)
            ax.set_title("all tasks" if panel == "aggregate" else panel)
            ax.set_yticks(range(n), [display_name(m) for m in methods])
            ax.set_ylim(n - 0.5, -0.5)
            ax.set_xlim(right=1.02)
            ax.grid(axis="y", visible=False)
            if k_ax >= len(panels) - ncols:
                ax.set_xlabel("R² of the true state")
                ax.xaxis.set_tick_params(labelbottom=True)
        handles = [Patch(facecolor="0.35", label="features (method colour)"),
                   Patch(facecolor=OBSERVATION_COLOR, hatch="////", edgecolor="0.45", label="raw observation")]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, handlelength=1.6)
        _suptitle(fig, title, note)
    return fig


# ---------------------------------------------------------------- context experiment
def context_curves_figure(curves: pd.DataFrame, methods: list[str], context_lengths: list[int], x_kind: str,
                          title: str, note: str = "") -> Figure:
    """IQM return vs env steps (x_kind='env_step') or wall-clock hours ('wall_clock_h'): one panel per context
    length, one line per method."""
    with _style():
        fig, axes, ncols, spare = _grid(len(context_lengths), row_height=1.15)
        for k, (ax, ctx) in enumerate(zip(axes, context_lengths)):
            for m in methods:
                c = curves[(curves["method"] == m) & (curves["context_length"] == ctx)
                           & (curves["x_kind"] == x_kind)].sort_values("x")
                if c.empty:
                    continue
                ax.plot(c["x"], 1000 * c["iqm"], **_line_style(m),
                        label=_n_label(display_name(m), c["n_runs"].min()))
                ax.fill_between(c["x"], 1000 * c["ci_low"], 1000 * c["ci_high"], color=method_color(m),
                                alpha=0.2, lw=0)
            ax.set_title(f"context length {ctx}")
            _return_axis(ax)
            ax.xaxis.set_major_formatter(EngFormatter(sep="") if x_kind == "env_step" else HOURS)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            if k % ncols == 0:
                ax.set_ylabel("IQM return")
            if k >= len(context_lengths) - ncols:
                ax.set_xlabel("env steps" if x_kind == "env_step" else "wall-clock hours")
                ax.xaxis.set_tick_params(labelbottom=True)
        _legend(fig, axes, spare)
        _suptitle(fig, title, note)
    return fig


CONTEXT_DASHES = [(1, 1.2), (3, 1.2, 1, 1.2), (4, 1.5), (6, 1.5, 1, 1.5, 1, 1.5), ()]  # shortest ... longest (solid)


def context_styles(color, context_lengths: list[int]) -> dict[int, dict]:
    """Line style per context length within one method: shades of the method's colour from light (shortest) to
    dark (longest), and dash patterns from dotted (shortest) to solid (longest), so that neither colour vision
    nor print in grey is needed to tell the lengths apart."""
    base = np.array(matplotlib.colors.to_rgb(color))
    n = len(context_lengths)
    out = {}
    for i, ctx in enumerate(context_lengths):
        t = i / (n - 1) if n > 1 else 1.0
        f = t - 0.6  # < 0: towards white, > 0: towards black
        rgb = base + (1 - base) * 0.75 * -f if f < 0 else base * (1 - 0.9 * f)
        out[ctx] = dict(color=tuple(rgb), dashes=CONTEXT_DASHES[len(CONTEXT_DASHES) - n + i]
                        if n <= len(CONTEXT_DASHES) else CONTEXT_DASHES[i % len(CONTEXT_DASHES)])
    return out


def by_length_figure(curves: pd.DataFrame, methods: list[str], context_lengths: list[int], title: str,
                     note: str = "") -> Figure:
    """One row per method, columns: IQM return vs env steps and vs wall-clock hours; one line per context length
    (with its 95% CI band)."""
    kinds = [("env_step", "env steps"), ("wall_clock_h", "wall-clock hours")]
    with _style():
        fig, axes = plt.subplots(len(methods), 2, figsize=(COLUMN_WIDTH, 0.75 + 1.05 * len(methods)),
                                 layout="constrained", squeeze=False, sharex="col", sharey=True)
        for row, m in zip(axes, methods):
            styles = context_styles(method_color(m), context_lengths)
            for ax, (x_kind, xlabel) in zip(row, kinds):
                for ctx in context_lengths:
                    c = curves[(curves["method"] == m) & (curves["context_length"] == ctx)
                               & (curves["x_kind"] == x_kind)].sort_values("x")
                    if c.empty:
                        continue
                    st = styles[ctx]
                    ax.plot(c["x"], 1000 * c["iqm"], color=st["color"], dashes=st["dashes"])
                    ax.fill_between(c["x"], 1000 * c["ci_low"], 1000 * c["ci_high"], color=st["color"], alpha=0.15,
                                    lw=0)
                ax.set_title(_n_label(display_name(m), curves.loc[curves["method"] == m, "n_runs"].min()))
                _return_axis(ax)
                ax.xaxis.set_major_formatter(EngFormatter(sep="") if x_kind == "env_step" else HOURS)
                ax.xaxis.set_major_locator(MaxNLocator(3 if x_kind == "wall_clock_h" else 4))
                if ax is row[0]:
                    ax.set_ylabel("IQM return")
        for ax, (_, xlabel) in zip(axes[-1], kinds):
            ax.set_xlabel(xlabel)
        grey = context_styles("0.45", context_lengths)  # legend: the same shades and dashes, in grey
        handles = [Line2D([], [], color=grey[c]["color"], dashes=grey[c]["dashes"]) for c in context_lengths]
        fig.legend(handles, [f"context {c}" for c in context_lengths], loc="outside lower center",
                   ncol=min(4, len(context_lengths)), handlelength=2.4, columnspacing=1.0)
        _suptitle(fig, title, note)
    return fig


def budget_figure(final: pd.DataFrame, methods: list[str], context_lengths: list[int], env_steps: float | None,
                  title: str, note: str = "") -> Figure:
    """Env steps each run reached within the budget (bar: mean over runs; dots: runs), per context length."""
    with _style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.1), layout="constrained")
        width = 0.8 / max(len(methods), 1)
        for j, m in enumerate(methods):
            for i, ctx in enumerate(context_lengths):
                v = final.loc[(final["method"] == m) & (final["context_length"] == ctx), "env_steps_reached"]
                if v.empty:
                    continue
                x = i + (j - (len(methods) - 1) / 2) * width
                labelled = display_name(m) in ax.get_legend_handles_labels()[1]
                ax.bar(x, v.mean(), width=width * 0.9, color=method_color(m), alpha=0.85,
                       label=None if labelled else display_name(m))
                ax.scatter(np.full(len(v), x), v, s=4, color="black", zorder=3, lw=0)
        if env_steps:
            ax.axhline(env_steps, color="0.3", ls="--", lw=0.8, label="env-step budget", zorder=1)
        ax.set_xticks(range(len(context_lengths)), [str(c) for c in context_lengths])
        ax.set_xlabel("context length")
        ax.set_ylabel("env steps reached")
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(axis="x", visible=False)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] == "env-step budget")
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center",
                   ncol=_legend_columns(labels), handlelength=1.6, columnspacing=1.0)
        _suptitle(fig, title, note)
    return fig


# ---------------------------------------------------------------- Fig. 6
def update_step_figure(bench: dict) -> Figure:
    """Forward and update time vs context length per method (log2 x axis), from the benchmark JSON of
    `benchmarks/update_step.py` (docs/architecture.md, "Benchmark JSON"). Several devices / batch sizes / input
    types in one file get one line style each; cases without a time (status "skipped: ...") are named below."""
    res = pd.DataFrame(bench["results"])
    for col, default in (("obs", ""), ("status", "ok")):
        if col not in res:
            res[col] = default
    res["obs"] = res["obs"].fillna("")
    missing = [c for c in ("method", "context_length", "batch_size", "device", "forward_s", "update_s")
               if c not in res]
    if missing:
        raise ValueError(f"benchmark JSON: results lack key(s) {missing}")
    for col in ("forward_s", "update_s"):  # a time that is not a finite number > 0 is missing ("not timed")
        t = pd.to_numeric(res[col], errors="coerce")
        bad = (t.isna() | ~np.isfinite(t) | (t <= 0)) & res[col].notna()
        if bad.any():
            log.warning("benchmark JSON: results %s: %s is not a finite number > 0 (%s); treated as missing",
                        list(res.index[bad]), col, list(res.loc[bad, col])[:3])
        res[col] = t.where(~bad)
    by = ["device", "batch_size", "obs"]
    combos = list(res.groupby(by).groups)
    multi = len(combos) > 1
    styles = ["-", "--", ":", "-."]
    ctxs = sorted(res["context_length"].unique())
    machine = bench.get("machine") or {}
    devices = set(res["device"].astype(str))
    hw = machine.get("gpu") if any(d.startswith("cuda") for d in devices) and machine.get("gpu") else \
        machine.get("cpu") or ""
    hw = hw if len(hw) <= 40 else hw[:38] + "…"
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 2.1), layout="constrained")
        for ax, col, name in zip(axes, ["forward_s", "update_s"], ["forward pass", "training update"]):
            for m in sort_methods(res["method"]):
                for k, combo in enumerate(combos):
                    g = res[(res["method"] == m) & (res[by] == pd.Series(combo, index=by)).all(axis=1)]
                    g = g.dropna(subset=[col]).sort_values("context_length")
                    if g.empty:
                        continue
                    label = display_name(m) + (" (" + ", ".join(_combo_words(combo)) + ")" if multi else "")
                    ax.plot(g["context_length"], 1000 * g[col], marker="o", ms=2.5, color=method_color(m),
                            ls=styles[k % len(styles)], label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ctxs, [str(c) for c in ctxs])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(name)
            ax.set_xlabel("context length")
            ax.set_ylim(bottom=0)
        axes[0].set_ylabel("time per call (ms)")
        _legend(fig, axes)
        sub = "" if multi else ", ".join(_combo_words(combos[0])) + (f", {hw}" if hw else "")
        skipped = res[res["forward_s"].isna() | res["update_s"].isna()]
        if len(skipped):
            words = [f"{display_name(r.method)} at {r.context_length}" for r in skipped.itertuples()]
            sub += ("\n" if sub else "") + "not timed (skipped): " + ", ".join(words)
        _suptitle(fig, "Time per call vs context length", sub)
    return fig


def _combo_words(combo) -> list[str]:
    device, batch, obs = combo
    return [str(device), f"batch {batch}"] + ([str(obs).replace("_", " ")] if obs else [])


# ---------------------------------------------------------------- assembling
def _of(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    return df[df["experiment"] == experiment] if len(df) else df


def experiment_figures(est: dict[str, pd.DataFrame], exp: Experiment, settings: Settings) -> dict[str, Figure]:
    note = coverage_note(est.get("coverage", pd.DataFrame()), exp.name)
    agg, cur, prof, imp, fin, prb = (_of(est.get(k, pd.DataFrame()), exp.name)
                                     for k in ("aggregate", "curves", "profiles", "improvement", "final", "probe"))
    name = EXPERIMENT_TITLES.get(exp.name, exp.name)
    figs = {}

    def make(fname, title, ok: bool, build, why: str = f"no complete runs for {exp.name}"):
        if ok:
            figs[fname] = build()
        else:
            log.warning("%s: no data yet; writing a placeholder", fname)
            figs[fname] = message_figure(title, f"no data: {why}" + (f"\n({note})" if note else ""))

    present = sort_methods(agg["method"]) if len(agg) else []
    if exp.kind == "main":
        groups = [("", [m for m in present if not is_ablation(m.removesuffix(PUBLISHED_SUFFIX))], "")]
        if exp.ablation_methods:
            groups.append(("_ablations", [m for m in present if m in exp.ablation_methods], ", ablations"))
        for suffix, methods, label in groups:
            p = f"{exp.prefix}{suffix}"
            make(f"{p}_aggregate", f"{name}{label}: final score", bool(methods),
                 lambda: aggregate_figure(agg, methods, f"{name}{label}: final score", note))
            shows_published = any(m.endswith(PUBLISHED_SUFFIX) for m in methods)
            curve_note = "; ".join(t for t in (note, PUBLISHED_NOTE if shows_published else "") if t)
            make(f"{p}_curves", f"{name}{label}: return", bool(methods),
                 lambda: curves_figure(cur, methods, list(exp.tasks), f"{name}{label}: return", curve_note))
            make(f"{p}_profiles", f"{name}{label}: score distributions", bool(methods),
                 lambda: profiles_figure(prof, methods, f"{name}{label}: score distributions", note))
    else:
        ctxs = list(exp.context_lengths)
        task = exp.tasks[0] if len(exp.tasks) == 1 else f"{len(exp.tasks)} tasks"
        title = f"{name} {task}"
        make(f"{exp.prefix}_env_steps", title, bool(present),
             lambda: context_curves_figure(cur, present, ctxs, "env_step", title, note))
        make(f"{exp.prefix}_wall_clock", title, bool(present),
             lambda: context_curves_figure(cur, present, ctxs, "wall_clock_h", title, note))
        make(f"{exp.prefix}_by_length", f"{title}: return per context length", bool(present),
             lambda: by_length_figure(cur, present, ctxs, f"{title}: return per context length", note))
        hours = f" in {settings.wall_clock_hours:g} h" if settings.wall_clock_hours else ""
        make(f"{exp.prefix}_budget", f"{title}: env steps reached{hours}", bool(present),
             lambda: budget_figure(fin, present, ctxs, settings.env_steps,
                                   f"{title}: env steps reached{hours}", note))
    if exp.probed:
        probed = [m for m in sort_methods(prb["method"])] if len(prb) else []
        make(f"{exp.prefix}_probe", f"{name}: belief probe", bool(probed),
             lambda: probe_figure(prb, probed, list(exp.tasks), f"{name}: belief probe", note),
             why=f"no probe results for {exp.name} (complete runs with >= 2 evaluation episodes)")
    if exp.compares_reference:
        make(f"{exp.prefix}_improvement", f"{name}: probability of improvement", len(imp) > 0,
             lambda: improvement_figure(imp, f"{name}: probability of improvement", note,
                                        with_context=exp.kind == "context"))
    return figs


def build_figures(est: dict[str, pd.DataFrame], experiments: list[Experiment], settings: Settings,
                  bench_path: str | Path | None, with_update_step: bool) -> dict[str, Figure]:
    """Every figure, by basename. `with_update_step`: whether Fig. 6 belongs to the outputs."""
    figs = {}
    for exp in experiments:
        figs.update(experiment_figures(est, exp, settings))
    if with_update_step:
        if bench_path is not None and Path(bench_path).exists():
            figs[UPDATE_STEP_FIGURE] = update_step_figure(json.loads(Path(bench_path).read_text()))
        else:
            log.warning("%s: %s missing; writing a placeholder", UPDATE_STEP_FIGURE, bench_path)
            figs[UPDATE_STEP_FIGURE] = message_figure("Time per step vs context length",
                                                      "no data: benchmark JSON missing")
    return figs


def save_figure(fig: Figure, base: str | Path) -> list[Path]:
    """`base`.pdf and `base`.png, each written atomically; deterministic bytes (no timestamps)."""
    paths = []
    for ext, kw in (("pdf", {"metadata": {"CreationDate": None}}), ("png", {"dpi": PNG_DPI, "metadata": {}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **kw)
        paths.append(atomic_write_bytes(f"{os.fspath(base)}.{ext}", buf.getvalue()))
    return paths


def write_figures(results_dir: str | Path, est: dict[str, pd.DataFrame], experiments: list[Experiment],
                  settings: Settings, with_update_step: bool) -> list[Path]:
    results_dir = Path(results_dir)
    figs = build_figures(est, experiments, settings, results_dir / "bench" / "update_step.json", with_update_step)
    paths = []
    for name, fig in figs.items():
        paths += save_figure(fig, results_dir / "figures" / name)
        plt.close(fig)
    return paths
