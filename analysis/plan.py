"""The study plan: which runs a study expects, which experiment (figure) each run belongs to, and which files
the analysis writes for it.

An *experiment* is one grid of the study YAML (`experiments: {name: {obs, tasks, methods, context_lengths}}`):
- a "main" experiment (one context length analysed: the study's `main_context_length`) gives aggregate interval
  estimates, per-task curves, performance profiles and probability of improvement (Fig. 3 `pixels`,
  Fig. 4 `noisy_state`); if its methods include KalMamba ablations, these get their own panel set; on `state` or
  `noisy_state` also the belief probe's R^2 (rl/probe.py: `<prefix>_probe`, `tables/probe_<name>`);
- a "context" experiment (`context`, or any grid with >= 2 context lengths) gives return vs env steps and vs
  wall-clock hours (one panel per context length; and one line per context length, one row per method), and the
  env steps reached within the budget (Fig. 5).
Without a study config the experiments are inferred from the runs found (see `infer_experiments`).

Method order, display names and which methods are ablations come from rl/methods.py; a study's plugins
(`plugins:`) register theirs with `register_plugins`.

This module is light (no matplotlib, no rliable, no torch): the workflow imports it to know the outputs in advance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from rl import methods as registry   # the methods: order, display names, ablations (standard library only)

PUBLISHED_SUFFIX = " (published)"
FIGURE_PREFIX = {"pixels": "fig3_pixels", "state": "state", "noisy_state": "fig4_noisy_state", "context": "fig5_context"}
UPDATE_STEP_FIGURE = "fig6_update_step"
DEFAULT_MAIN_CONTEXT = 32
ESTIMATE_FILES = ("final", "aggregate", "per_task", "profiles", "improvement", "curves", "coverage", "probe")
# Observation types whose runs write probe.csv (rl/probe.py; tests/test_analysis.py keeps them in step).
PROBED_OBS = ("state", "noisy_state")

@dataclass(frozen=True)
class Experiment:
    name: str
    obs: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    context_lengths: tuple[int, ...]  # the context lengths analysed (one for a "main" experiment)
    seeds: tuple[int, ...]
    kind: str  # "main" | "context"

    @property
    def prefix(self) -> str:
        return FIGURE_PREFIX.get(self.name, self.name)

    @property
    def ablation_methods(self) -> tuple[str, ...]:
        """The ablated methods (KalMamba) and their ablations, if the experiment has any ablation; else empty."""
        abl = tuple(m for m in self.methods if is_ablation(m))
        return (*dict.fromkeys(registry.model_family(m) for m in abl), *abl) if abl else ()

    @property
    def probed(self) -> bool:
        """A main experiment on states: its runs carry the belief probe (probe figure and table)."""
        return self.kind == "main" and self.obs in PROBED_OBS

    @property
    def compares_reference(self) -> bool:
        """The experiment has the reference method (rl.methods.REFERENCE, KalMamba) and another one to compare it with."""
        return registry.REFERENCE in self.methods and len(self.methods) >= 2

    def expected_runs(self) -> list[tuple[str, str, str, int, int]]:
        """(obs, task, method, context_length, seed) of every run this experiment's analysis uses."""
        return [(self.obs, t, m, c, s) for t in self.tasks for m in self.methods
                for c in self.context_lengths for s in self.seeds]

    def figures(self) -> list[str]:
        p = self.prefix
        if self.kind == "context":
            names = [f"{p}_env_steps", f"{p}_wall_clock", f"{p}_by_length", f"{p}_budget"]
        else:
            names = [f"{p}_aggregate", f"{p}_curves", f"{p}_profiles"]
            if self.ablation_methods:
                names += [f"{p}_ablations_aggregate", f"{p}_ablations_curves", f"{p}_ablations_profiles"]
        if self.compares_reference:
            names.append(f"{p}_improvement")
        if self.probed:
            names.append(f"{p}_probe")
        return names


def _registered(method: str) -> registry.Method | None:
    return registry.get(method) if method in registry.names() else None


def is_ablation(method: str) -> bool:
    m = _registered(method)
    return m is not None and m.ablation


def sort_methods(methods: Iterable[str]) -> list[str]:
    """Canonical order: rl/methods.py's (KalMamba, baselines, ablations, then plugins), published references next
    to their method, unregistered names last, a-z."""
    order = registry.names()

    def key(m: str) -> tuple[int, int, str]:
        base = m.removesuffix(PUBLISHED_SUFFIX)
        rank = order.index(base) if base in order else len(order)
        return (rank, int(m != base), m)

    return sorted(set(methods), key=key)


def display_name(method: str) -> str:
    base = method.removesuffix(PUBLISHED_SUFFIX)
    m = _registered(base)
    return (m.display_name if m else base) + (PUBLISHED_SUFFIX if base != method else "")


def register_plugins(study_cfg: dict[str, Any] | None) -> list[str]:
    """Register the display names and colours of the study's plugin methods (`plugins:`, read without importing
    them). A file that cannot be read is logged and skipped: its method is then drawn under its name, in a spare
    colour. Returns the methods registered."""
    import logging

    names = []
    for path in (study_cfg or {}).get("plugins") or []:
        try:
            names.append(registry.load_plugin(path, execute=False).name)
        except ValueError as e:
            logging.getLogger(__name__).warning("%s (its method is drawn under its name)", e)
    return names


def load_study_config(path: str | Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path) as f:
        return yaml.safe_load(f)


def _as_dict(study_cfg: dict[str, Any] | str | Path) -> dict[str, Any]:
    return study_cfg if isinstance(study_cfg, dict) else load_study_config(study_cfg)


def main_context_length(study_cfg: dict[str, Any]) -> int:
    return int(study_cfg.get("main_context_length", DEFAULT_MAIN_CONTEXT))


def experiments_from_config(study_cfg: dict[str, Any] | str | Path) -> list[Experiment]:
    cfg = _as_dict(study_cfg)
    main_ctx = main_context_length(cfg)
    experiments = []
    for name, grid in (cfg.get("experiments") or {}).items():
        ctx = tuple(int(c) for c in grid["context_lengths"])
        kind = "context" if name == "context" or len(ctx) >= 2 else "main"
        if kind == "main":
            ctx = (main_ctx,) if main_ctx in ctx else ctx[:1]
        experiments.append(Experiment(
            name=name, obs=grid["obs"], tasks=tuple(grid["tasks"]), methods=tuple(sort_methods(grid["methods"])),
            context_lengths=ctx, seeds=tuple(int(s) for s in grid.get("seeds", cfg["seeds"])), kind=kind))
    return experiments


def expected_runs(study_cfg: dict[str, Any] | str | Path) -> set[tuple[str, str, str, int, int]]:
    """The union of the experiment grids x seeds, every context length of each grid included."""
    cfg = _as_dict(study_cfg)
    runs = set()
    for grid in (cfg.get("experiments") or {}).values():
        for s in grid.get("seeds", cfg["seeds"]):
            for t in grid["tasks"]:
                for m in grid["methods"]:
                    for c in grid["context_lengths"]:
                        runs.add((grid["obs"], t, m, int(c), int(s)))
    return runs


def infer_experiments(runs) -> list[Experiment]:
    """Experiments from the runs found (a DataFrame with obs, task, method, context_length, seed), no config:
    each observation type at the main context length (32 if present, else the most common) is a "main"
    experiment named after it (pixels -> Fig. 3, noisy_state -> Fig. 4); the tasks run with >= 2 context lengths
    and methods run with >= 2 context lengths form a "context" experiment (Fig. 5; named `context` for noisy_state,
    `context_<obs>` otherwise)."""
    import pandas as pd  # here: the workflow imports this module only for the functions of the config

    runs = runs.dropna(subset=["context_length"])
    if runs.empty:
        return []
    ctx_counts = runs["context_length"].astype(int).value_counts()
    main_ctx = DEFAULT_MAIN_CONTEXT if DEFAULT_MAIN_CONTEXT in ctx_counts.index else int(ctx_counts.idxmax())
    experiments = []
    for obs in sorted(runs["obs"].unique()):
        r = runs[runs["obs"] == obs]
        at_main = r[r["context_length"].astype(int) == main_ctx]
        if not at_main.empty:
            experiments.append(_inferred(obs, obs, at_main, (main_ctx,), "main"))
        n_ctx = r.groupby(["task", "method"])["context_length"].nunique()
        ctx_pairs = n_ctx[n_ctx >= 2].index  # (task, method) run at >= 2 context lengths
        if len(ctx_pairs):
            rc = r[pd.MultiIndex.from_frame(r[["task", "method"]]).isin(ctx_pairs)]
            name = "context" if obs == "noisy_state" else f"context_{obs}"
            ctx = tuple(sorted(int(c) for c in rc["context_length"].unique()))
            experiments.append(_inferred(name, obs, rc, ctx, "context"))
    return experiments


def _inferred(name, obs, runs, ctx, kind) -> Experiment:
    return Experiment(name=name, obs=obs, tasks=tuple(sorted(runs["task"].unique())),
                      methods=tuple(sort_methods(runs["method"].unique())), context_lengths=ctx,
                      seeds=tuple(sorted(int(s) for s in runs["seed"].unique())), kind=kind)


def expected_figures(study_cfg: dict[str, Any] | str | Path) -> list[str]:
    """Basenames of the figures `python -m analysis figures` writes for this study (each as .pdf and .png).

    Depends on the study config only: an experiment the config does not have gives no figure; an experiment
    it has always gives its figures (a figure whose data is missing at run time says so on its canvas)."""
    cfg = _as_dict(study_cfg)
    names = [f for e in experiments_from_config(cfg) for f in e.figures()]
    if "benchmark" in cfg:
        names.append(UPDATE_STEP_FIGURE)
    return names


def expected_tables(study_cfg: dict[str, Any] | str | Path) -> list[str]:
    """Basenames of the tables `python -m analysis tables` writes (each as .md and .tex): final returns per
    experiment, belief-probe R^2 per probed experiment."""
    exps = experiments_from_config(_as_dict(study_cfg))
    return [f"final_{e.name}" for e in exps] + [f"probe_{e.name}" for e in exps if e.probed]


def expected_outputs(study_cfg: dict[str, Any] | str | Path) -> list[str]:
    """Every file `python -m analysis all` writes, relative to `--results`."""
    cfg = _as_dict(study_cfg)
    return (["scores.csv", "incomplete.csv", "runs.csv", "published.csv", "probe.csv"]
            + [f"estimates/{n}.csv" for n in ESTIMATE_FILES]
            + [f"figures/{f}.{ext}" for f in expected_figures(cfg) for ext in ("pdf", "png")]
            + [f"tables/{t}.{ext}" for t in expected_tables(cfg) for ext in ("md", "tex")])
