"""The "KalMamba learns" leads table (issue 10; runs from `scripts/kalmamba-leads.sh`).

    python -m analysis.leads results/kalmamba-leads [--out FILE.md] [--budget 100000] [--reps 2000] [--seed 0]

Reads `<root>/<variant>/<obs>/seed<S>/{eval.csv,train.csv,DONE}` and prints (and writes, default
`<root>/leads.md`) one Markdown row per (variant, observation type):
- final return at the budget: IQM over seeds [95% stratified-bootstrap CI], from rliable exactly as
  `analysis.estimates` computes it (normalised score = return / 1000, shown x 1000). A run counts once it has
  DONE and an evaluation at the budget (the last evaluation with env_step <= 1.01 x budget, as in
  analysis/estimates.py); the others are listed as running (or as stopped short of the budget), never dropped;
- why: the mean over those seeds of each run's last logged train.csv diagnostics (`diag_*`, docs/architecture.md):
  the share of each loss term in the sum of the per-term gradient norms (recon / reward / kl / reg, %), the
  fraction of (b, t) with the KL above the free nats, the median latent-observation variance σ²_w, the median
  Kalman gain, and the per-dimension std of the features SAC sees. "–" where a run did not log it (a model
  without that term, or a run written before the diagnostics existed).
Exit status 2 on a missing root or bad argument.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from rliable import metrics

from analysis.estimates import BUDGET_SLACK, REPS, SEED, interval_estimate
from analysis.tables import interval_cell
from rl.io import atomic_write_text

VARIANT_ORDER = ("old_defaults", "reg_mean", "reg_detach", "free_nats_1", "reward_x1", "no_reg", "new_defaults", "sac",
                 "vrkn", "vrkn_reward_x10", "mc_features", "vrkn_mc_features", "no_dropout", "vrkn_lr", "no_mamba",
                 "new_no_reg", "features_with_m")
OBS_ORDER = ("state", "noisy_state")
PARTS = ("recon", "reward", "kl", "reg")
MISSING = "–"
COLUMNS = ["variant", "obs", "final return IQM [95% CI]", "seeds", "grad share recon/reward/kl/reg (%)",
           "KL active", "σ²_w median", "gain median", "feature std", "not counted"]


def _order(values, preferred) -> list[str]:
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def read_run(run: Path, budget: int) -> dict:
    """One seed's directory -> {status: complete|running|short, score (return at the budget), env_step,
    diag: the last logged diag_* values}."""
    evals = pd.read_csv(run / "eval.csv") if (run / "eval.csv").exists() else pd.DataFrame(columns=["env_step"])
    within = evals[evals["env_step"] <= BUDGET_SLACK * budget]
    last_step = int(evals["env_step"].max()) if len(evals) else 0
    if not (run / "DONE").exists():
        status = "running"
    elif not len(within) or within["env_step"].iloc[-1] < budget:
        status = "short"
    else:
        status = "complete"
    diag = {}
    if (run / "train.csv").exists():
        train = pd.read_csv(run / "train.csv")
        cols = [c for c in train.columns if c.startswith("diag_")]
        if cols and len(train):
            last = train[cols].dropna(how="all")
            diag = last.iloc[-1].to_dict() if len(last) else {}
    score = float(within["return_mean"].iloc[-1]) if status == "complete" else None
    return {"status": status, "score": score, "env_step": last_step, "diag": diag}


def collect(root: Path, budget: int) -> dict[tuple[str, str], dict[int, dict]]:
    """{(variant, obs): {seed: read_run(...)}} for every `<variant>/<obs>/seed<S>` under root."""
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for run in sorted(root.glob("*/*/seed*")):
        if not run.is_dir() or not run.name[4:].isdigit():
            continue
        runs.setdefault((run.parent.parent.name, run.parent.name), {})[int(run.name[4:])] = read_run(run, budget)
    return runs


def iqm_with_ci(returns: list[float], reps: int, seed: int) -> tuple[float, float, float]:
    """IQM over seeds of the final returns and its 95% stratified-bootstrap CI (rliable, one task)."""
    scores = np.asarray(returns, dtype=float).reshape(-1, 1) / 1000.0
    point, ci = interval_estimate(scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps, seed)
    return 1000 * point[0], 1000 * ci[0, 0], 1000 * ci[1, 0]


def mean_diagnostics(diags: list[dict]) -> dict[str, float]:
    """Mean over runs of each diagnostic, with the gradient norms turned into shares of their sum (per run)."""
    rows = []
    for d in diags:
        row = {k[len("diag_"):]: v for k, v in d.items()}
        norms = {p: row.get(f"grad_{p}") for p in PARTS if pd.notna(row.get(f"grad_{p}", np.nan))}
        total = sum(norms.values())
        for p, v in norms.items():
            row[f"share_{p}"] = 100 * v / total if total > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows).mean(numeric_only=True).to_dict() if rows else {}


def _fmt(value, spec: str) -> str:
    return MISSING if value is None or not np.isfinite(value) else format(value, spec)


def leads_table(root: Path, budget: int = 100_000, reps: int = REPS, seed: int = SEED) -> pd.DataFrame:
    runs = collect(root, budget)
    rows = []
    for variant in _order({v for v, _ in runs}, VARIANT_ORDER):
        for obs in _order({o for v, o in runs if v == variant}, OBS_ORDER):
            seeds = runs[(variant, obs)]
            done = {s: r for s, r in seeds.items() if r["status"] == "complete"}
            pending = [f"seed{s} {r['status']} ({r['env_step'] // 1000}k)" for s, r in sorted(seeds.items())
                       if r["status"] != "complete"]
            if done:
                iqm, lo, hi = iqm_with_ci([r["score"] for r in done.values()], reps, seed)
                result = interval_cell(iqm, lo, hi, len(done), ".0f")
            else:
                result = "running"
            d = mean_diagnostics([r["diag"] for r in done.values() if r["diag"]])
            shares = [d.get(f"share_{p}") for p in PARTS]
            rows.append({
                "variant": variant, "obs": obs, "final return IQM [95% CI]": result,
                "seeds": f"{len(done)} ({', '.join(str(s) for s in sorted(done))})" if done else "0",
                "grad share recon/reward/kl/reg (%)": (MISSING if all(v is None for v in shares)
                                                       else "/".join(_fmt(v, ".0f") for v in shares)),
                "KL active": _fmt(d.get("kl_active"), ".2f"), "σ²_w median": _fmt(d.get("obs_var_median"), ".2f"),
                "gain median": _fmt(d.get("gain_median"), ".3f"), "feature std": _fmt(d.get("feat_std"), ".2f"),
                "not counted": "; ".join(pending) if pending else "",
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame, budget: int) -> str:
    head = (f"Final return at {budget // 1000}k env steps, IQM over seeds [95% stratified-bootstrap CI]; "
            "diagnostics: mean over those seeds of each run's last train.csv row.\n\n")
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.leads", description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="results/kalmamba-leads (holds <variant>/<obs>/seed<S>/)")
    p.add_argument("--out", type=Path, default=None, help="Markdown file (default <root>/leads.md)")
    p.add_argument("--budget", type=int, default=100_000, help="env steps at which runs are scored")
    p.add_argument("--reps", type=int, default=REPS, help="bootstrap replications")
    p.add_argument("--seed", type=int, default=SEED, help="numpy seed before each rliable call")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        p.error(f"root {str(args.root)!r} is not a directory")
    if args.budget < 1 or args.reps < 1:
        p.error(f"--budget and --reps must be >= 1, got {args.budget}, {args.reps}")
    table = leads_table(args.root, args.budget, args.reps, args.seed)
    if table.empty:
        p.error(f"no run directories <variant>/<obs>/seed<S> under {str(args.root)!r}")
    text = to_markdown(table, args.budget)
    atomic_write_text(args.out or args.root / "leads.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
