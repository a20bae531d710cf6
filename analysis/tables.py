"""Final-score tables: IQM return [95% CI] per method and task, plus the aggregate IQM over all tasks and the
probability of improvement over plain SAC (where the experiment has it), as Markdown and LaTeX (booktabs). One table per experiment: `tables/final_<experiment>.{md,tex}`; and per experiment
on states the belief probe's R^2 [95% CI]: `tables/probe_<experiment>.{md,tex}`.

Returns are shown (= 1000 x normalised score); the aggregate column is the IQM over runs x tasks (rliable).
A cell without an interval (fewer than 2 runs: analysis/estimates.py, MIN_RUNS_FOR_CI) says how many runs it
has instead, e.g. `800 (n=1)`; the caption says what was left out (analysis.estimates.coverage_note).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.estimates import coverage_note
from analysis.plan import Experiment, display_name, sort_methods
from rl.io import atomic_write_text
from rl.methods import BASELINE

MISSING = "–"


def interval_cell(estimate: float, ci_low: float, ci_high: float, n_runs: int, fmt: str) -> str:
    """'812 [700, 901]' (fmt ".0f"), or '800 (n=1)' where no interval could be estimated (a bound is NaN)."""
    if pd.isna(ci_low) or pd.isna(ci_high):
        return f"{estimate:{fmt}} (n={int(n_runs)})"
    return f"{estimate:{fmt}} [{ci_low:{fmt}}, {ci_high:{fmt}}]"


def _cell(row) -> str:
    """A return cell on the x1000 scale: '812 [700, 901]' or '800 (n=1)'."""
    return interval_cell(1000 * row["estimate"], 1000 * row["ci_low"], 1000 * row["ci_high"], row["n_runs"], ".0f")


def baseline_column() -> str:
    """Header of the final tables' probability-of-improvement column, e.g. 'P(> SAC)'."""
    return f"P(> {display_name(BASELINE)})"


def _improvement_over_baseline(improvement: pd.DataFrame, exp: Experiment) -> dict[tuple[str, int], str]:
    """(method, context length) -> 'P(method > BASELINE) [95% CI]' cell, from estimates/improvement.csv."""
    if not len(improvement):
        return {}
    imp = improvement[(improvement["experiment"] == exp.name) & (improvement["method_y"] == BASELINE)]
    return {(r.method_x, r.context_length): interval_cell(r.probability, r.ci_low, r.ci_high,
                                                           min(r.n_runs_x, r.n_runs_y), ".2f")
            for r in imp.itertuples()}


def final_table(per_task: pd.DataFrame, aggregate: pd.DataFrame, exp: Experiment,
                improvement: pd.DataFrame | None = None) -> pd.DataFrame:
    """Strings: one row per method (and context length in a context experiment), one column per task, the
    aggregate IQM, and, where the experiment has the baseline (rl.methods.BASELINE, plain SAC), the probability of
    improvement over it: 'P(> SAC)' (over all tasks; rliable)."""
    pt = per_task[per_task["experiment"] == exp.name] if len(per_task) else per_task
    ag = aggregate[(aggregate["experiment"] == exp.name) & (aggregate["metric"] == "IQM")] if len(aggregate) \
        else aggregate
    over = _improvement_over_baseline(improvement if improvement is not None else pd.DataFrame(), exp)
    over_column = baseline_column()
    with_ctx = exp.kind == "context"
    methods = sort_methods(list(pt["method"]) if len(pt) else [])
    rows = []
    for m in methods:
        for ctx in exp.context_lengths:
            row = {"Method": display_name(m)}
            if with_ctx:
                row["Context"] = str(ctx)
            sel = pt[(pt["method"] == m) & (pt["context_length"] == ctx)].set_index("task")
            if sel.empty:
                continue
            for t in exp.tasks:
                row[t] = _cell(sel.loc[t]) if t in sel.index else MISSING
            a = ag[(ag["method"] == m) & (ag["context_length"] == ctx)]
            row["Aggregate IQM"] = _cell(a.iloc[0]) if len(a) else MISSING
            if over:
                row[over_column] = over.get((m, ctx), MISSING)
            rows.append(row)
    columns = ["Method", *(["Context"] if with_ctx else []), *exp.tasks, "Aggregate IQM",
               *([over_column] if over else [])]
    return pd.DataFrame(rows, columns=columns)


def caption(exp: Experiment, note: str = "", without_ci: bool = False, with_baseline: bool = False) -> str:
    """`without_ci`: some cell has too few runs for an interval (it shows n= instead); `with_baseline`: the table
    has the probability-of-improvement column."""
    ctx = ", ".join(str(c) for c in exp.context_lengths)
    n = "; (n=...): too few runs for an interval" if without_ci else ""
    b = display_name(BASELINE)
    p = (f" {baseline_column()}: probability that a run of the method beats a run of {b} on a random task [95% CI]."
         if with_baseline else "")
    return (f"{exp.name}: final return, IQM over runs [95% stratified-bootstrap CI{n}]; context length {ctx}; "
            f"aggregate = IQM over runs x tasks (x 1000).{p}" + (f" ({note})" if note else ""))


def to_markdown(table: pd.DataFrame, title: str = "") -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(table.columns))) + "|")
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("–", "--")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame, title: str, label: str) -> str:
    align = "l" + "r" * (len(table.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{_tex(title)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_tex(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(str(v)) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _r2_cell(row) -> str:
    """'0.97 [0.96, 0.98]', or '0.97 (n=1)' where no interval could be estimated."""
    return interval_cell(row["estimate"], row["ci_low"], row["ci_high"], row["n_runs"], ".2f")


def probe_table(probe: pd.DataFrame, exp: Experiment) -> pd.DataFrame:
    """Strings: one row per method, per task (and all tasks) the belief probe's R^2 from the features and from
    the raw observation, mean over runs [95% CI]."""
    p = probe[probe["experiment"] == exp.name] if len(probe) else probe
    panels = ["aggregate", *exp.tasks] if len(exp.tasks) > 1 else list(exp.tasks)
    rows = []
    for m in sort_methods(list(p["method"]) if len(p) else []):
        row = {"Method": display_name(m)}
        for t in panels:
            for inp, word in (("features", "features"), ("observation", "observation")):
                r = p[(p["method"] == m) & (p["task"] == t) & (p["input"] == inp)]
                row[f"{'all tasks' if t == 'aggregate' else t}: {word}"] = _r2_cell(r.iloc[0]) if len(r) else MISSING
        rows.append(row)
    columns = ["Method"] + [f"{'all tasks' if t == 'aggregate' else t}: {w}" for t in panels
                            for w in ("features", "observation")]
    return pd.DataFrame(rows, columns=columns)


def probe_caption(exp: Experiment, note: str = "") -> str:
    return (f"{exp.name}: belief probe, test-half R^2 of a ridge read-out of the true state from the agent's "
            "features and from the raw observation at the last evaluation, mean over runs [95% stratified-bootstrap "
            "CI] (rl/probe.py)." + (f" ({note})" if note else ""))


def write_tables(results_dir: str | Path, est: dict[str, pd.DataFrame], experiments: list[Experiment]) -> list[Path]:
    out = Path(results_dir) / "tables"
    paths = []
    for exp in experiments:
        note = coverage_note(est.get("coverage", pd.DataFrame()), exp.name)
        table = final_table(est.get("per_task", pd.DataFrame()), est.get("aggregate", pd.DataFrame()), exp,
                            est.get("improvement", pd.DataFrame()))
        without_ci = table.drop(columns=["Method", "Context"], errors="ignore").apply(
            lambda col: col.str.contains("(n=", regex=False)).to_numpy().any()
        title = caption(exp, note, bool(without_ci), with_baseline=baseline_column() in table)
        paths.append(atomic_write_text(out / f"final_{exp.name}.md", to_markdown(table, title)))
        paths.append(atomic_write_text(out / f"final_{exp.name}.tex", to_latex(table, title, f"tab:final_{exp.name}")))
        if exp.probed:
            table, title = probe_table(est.get("probe", pd.DataFrame()), exp), probe_caption(exp, note)
            paths.append(atomic_write_text(out / f"probe_{exp.name}.md", to_markdown(table, title)))
            paths.append(atomic_write_text(out / f"probe_{exp.name}.tex",
                                           to_latex(table, title, f"tab:probe_{exp.name}")))
    return paths
