"""Analysis on SYNTHETIC run directories (tests/analysis_fixtures.py): collect lists every run (incomplete ones
included), the estimates equal rliable called directly on score arrays built here from the fixture's ground truth,
every figure is written with the expected panels, and the tables parse.

The whole pipeline runs once per module (`python -m analysis all`, few bootstrap reps); the reference estimates
are computed here from the fixture's ground truth, without the analysis package's own selection code."""
from __future__ import annotations

import io
import logging
import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml
from rliable import library, metrics

from analysis import collect, estimates, figures, plan
from analysis.__main__ import main
from tests.analysis_fixtures import (BUDGET, EVAL_EVERY, MISSING, PAST_BUDGET, PROBE_LEVEL, PUBLISHED_EVERY, RUNNING,
                                     SLOW, SMALL_BUDGET, make_published, make_study, ramp, small_study,
                                     write_small_run)

REPS, SEED = 50, 3
METRIC_FUNCS = (metrics.aggregate_iqm, metrics.aggregate_median, metrics.aggregate_mean,
                lambda s: metrics.aggregate_optimality_gap(s, 1.0))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The synthetic study, analysed once with `python -m analysis all` (config, published rows, fixed seed)."""
    root = tmp_path_factory.mktemp("study")
    cfg, truth = make_study(root)
    published = make_published(root / "published.csv")
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    written = main(["all", "--results", str(root), "--study-config", str(root / "study.yaml"),
                    "--reps", str(REPS), "--seed", str(SEED), "--published", str(root / "published.csv")])
    return dict(root=root, cfg=cfg, truth=truth, published=published, written=written,
                est=estimates.read_estimates(root), experiments=plan.experiments_from_config(cfg))


@pytest.fixture(scope="module")
def figs(study):
    """The figures as matplotlib objects (the same code path as the files); all open at once, on purpose."""
    matplotlib.rcParams["figure.max_open_warning"] = 0
    out = figures.build_figures(study["est"], study["experiments"], estimates.Settings.from_config(study["cfg"]),
                                study["root"] / "bench" / "update_step.json", with_update_step=True)
    yield out
    for f in out.values():
        matplotlib.pyplot.close(f)
    matplotlib.rcParams["figure.max_open_warning"] = matplotlib.rcParamsDefault["figure.max_open_warning"]


# ---------------------------------------------------------------- independent references from the ground truth
def final_score(ev: pd.DataFrame) -> float:
    """Last evaluation at or before the budget (the synthetic evaluations land exactly on multiples of 1000)."""
    return float(ev.loc[ev["env_step"] <= BUDGET, "return"].iloc[-1]) / 1000.0


def published_final(pub: pd.DataFrame) -> dict[tuple[str, int], float]:
    """Published rows onto our evaluation grid by hand: the mean of the points in (B - eval_every, B]."""
    last = pub[(pub["env_step"] > BUDGET - EVAL_EVERY) & (pub["env_step"] <= BUDGET)]
    assert len(last) == (EVAL_EVERY // PUBLISHED_EVERY) * pub.groupby(["task", "seed"]).ngroups
    return {k: v / 1000.0 for k, v in last.groupby(["task", "seed"])["return"].mean().items()}


def runs_of(study, exp, method, ctx):
    """{task: {seed: eval DataFrame}} of the complete runs of one method in one experiment."""
    return {t: {k[4]: ev for k, ev in study["truth"].items() if k[:4] == (exp.obs, t, method, ctx)}
            for t in exp.tasks}


def matrix(study, exp, method, ctx) -> np.ndarray | None:
    """(runs x tasks): per task its n lowest seeds, n = the fewest complete runs of any task (rliable needs a
    rectangle); None if a task has no complete run."""
    if method.endswith(plan.PUBLISHED_SUFFIX):
        fin = published_final(study["published"])
        per_task = {t: [fin[(t, s)] for s in sorted(s for (tt, s) in fin if tt == t)] for t in exp.tasks}
    else:
        runs = runs_of(study, exp, method, ctx)
        per_task = {t: [final_score(runs[t][s]) for s in sorted(runs[t])] for t in exp.tasks}
    n = min(len(v) for v in per_task.values())
    if n == 0:
        return None
    return np.array([[per_task[t][i] for t in exp.tasks] for i in range(n)])


def seeded(fn, *args, **kwargs):
    np.random.seed(SEED)
    return fn(*args, **kwargs)


def exp_named(study, name):
    return next(e for e in study["experiments"] if e.name == name)


def assert_matches(row_values, ref_point, ref_ci):
    np.testing.assert_allclose(row_values, [ref_point, ref_ci[0], ref_ci[1]], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- collect
def test_scores_table_holds_every_evaluation(study):
    scores = pd.read_csv(study["root"] / "scores.csv")
    assert list(scores.columns) == collect.SCORE_COLUMNS
    runs = scores[scores["source"] == "run"]
    for key, ev in study["truth"].items():
        obs, task, method, ctx, seed = key
        got = runs[(runs["obs"] == obs) & (runs["task"] == task) & (runs["method"] == method)
                   & (runs["context_length"] == ctx) & (runs["seed"] == seed)]
        np.testing.assert_array_equal(got["env_step"], ev["env_step"])
        np.testing.assert_allclose(got["score"], ev["return"] / 1000.0, rtol=1e-12)
        assert got["complete"].all()
    # the running run's evaluations are in the table, marked incomplete, not dropped
    obs, task, method, ctx, seed = RUNNING
    running = runs[(runs["task"] == task) & (runs["method"] == method) & (runs["seed"] == seed)
                   & (runs["obs"] == obs)]
    assert list(running["env_step"]) == [0, 1000, 2000, 3000, 4000, 5000] and not running["complete"].any()
    assert len(runs) == sum(len(ev) for ev in study["truth"].values()) + len(running)
    pub = scores[scores["source"] == "published"]
    assert len(pub) == len(study["published"]) and pub["complete"].all() and pub["context_length"].isna().all()


def test_incomplete_and_missing_runs_are_listed(study):
    inc = pd.read_csv(study["root"] / "incomplete.csv")
    got = {tuple(r[k] for k in collect.RUN_KEY): r["status"] for _, r in inc.iterrows()}
    assert got == {RUNNING: "running", MISSING: "missing"}
    runs = pd.read_csv(study["root"] / "runs.csv")
    assert len(runs) == len(study["truth"]) + 2 and (runs["status"] == "complete").sum() == len(study["truth"])
    # without the study config a missing run cannot be known, a running one still is
    scores, found = collect.collect(study["root"])
    assert set(found.loc[found["status"] != "complete", "seed"]) == {RUNNING[4]}
    assert (found["status"] == "running").sum() == 1 and len(found) == len(study["truth"]) + 1


def test_unreadable_run_config_is_a_warning(tmp_path, caplog):
    d = collect.run_path(tmp_path / "runs", "pixels", "walker-walk", "rssm", 32, 0)
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"method": "rssm", "se')  # torn
    with caplog.at_level("WARNING"):
        _, runs = collect.collect(tmp_path)
    assert runs["status"].tolist() == ["running"] and "config.json: not JSON" in caplog.text


def test_run_directory_disagreeing_with_its_config_is_an_error(tmp_path):
    d = collect.run_path(tmp_path / "runs", "pixels", "walker-walk", "rssm", 32, 0)
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"method": "vrkn", "seed": 0}')
    with pytest.raises(ValueError, match="method='vrkn'"):
        collect.collect(tmp_path)


def test_published_rows_are_checked():
    good = pd.DataFrame({"method": ["dreamerv3"], "obs": ["pixels"], "task": ["walker-walk"], "env_step": [1000],
                         "return": [500.0]})
    rows = collect.check_published(good)
    assert rows["score"].iloc[0] == 0.5 and rows["complete"].iloc[0] and rows["source"].iloc[0] == "published"
    with pytest.raises(ValueError, match="return"):
        collect.check_published(good.drop(columns="return"))
    with pytest.raises(ValueError, match="'run'"):
        collect.check_published(good.assign(source="run"))


# ---------------------------------------------------------------- estimates vs rliable called directly
def test_aggregate_estimates_equal_rliable(study):
    agg = study["est"]["aggregate"]
    checked = 0
    for exp in study["experiments"]:
        for (method, ctx), rows in agg[agg["experiment"] == exp.name].groupby(["method", "context_length"]):
            m = matrix(study, exp, method, ctx)
            point, ci = seeded(library.get_interval_estimates, {"m": m},
                               lambda s: np.array([f(s) for f in METRIC_FUNCS]), reps=REPS)
            rows = rows.set_index("metric")
            for i, metric in enumerate(estimates.METRICS):
                assert_matches(rows.loc[metric, ["estimate", "ci_low", "ci_high"]].to_numpy(float),
                               point["m"][i], ci["m"][:, i])
            assert rows["n_runs"].iloc[0] == m.shape[0] and rows["n_tasks"].iloc[0] == m.shape[1]
            assert (rows["reps"] == REPS).all() and (rows["seed"] == SEED).all()
            checked += 1
    # pixels 5 methods + published DreamerV3, noisy_state 4, context 3 methods x 3 lengths
    assert checked == 6 + 4 + 9
    # SAC on noisy_state: cheetah-run has 2 complete runs, so 2 runs per task enter the aggregate
    sac = agg[(agg["experiment"] == "noisy_state") & (agg["method"] == "sac")]
    assert (sac["n_runs"] == 2).all()


def test_per_task_estimates_equal_rliable(study):
    pt = study["est"]["per_task"]
    for exp in study["experiments"]:
        for r in pt[pt["experiment"] == exp.name].itertuples():
            if r.method.endswith(plan.PUBLISHED_SUFFIX):
                fin = published_final(study["published"])
                scores = np.array([[v] for (t, s), v in sorted(fin.items()) if t == r.task])
            else:
                runs = runs_of(study, exp, r.method, r.context_length)[r.task]
                scores = np.array([[final_score(runs[s])] for s in sorted(runs)])
            point, ci = seeded(library.get_interval_estimates, {"m": scores},
                               lambda s: np.array([metrics.aggregate_iqm(s)]), reps=REPS)
            assert_matches([r.estimate, r.ci_low, r.ci_high], point["m"][0], ci["m"][:, 0])
            assert r.n_runs == len(scores)


def test_final_score_is_the_last_evaluation_within_the_budget(study):
    final = study["est"]["final"]
    obs, task, method, ctx, seed = PAST_BUDGET
    r = final[(final["experiment"] == obs) & (final["task"] == task) & (final["method"] == method)
              & (final["seed"] == seed)].iloc[0]
    assert r["env_step"] == BUDGET and r["score"] == pytest.approx(final_score(study["truth"][PAST_BUDGET]))
    assert r["score"] < 0.999  # not the 999 evaluated past the budget
    # the wall-clock-limited runs: scored at their last evaluation, env steps reached from DONE
    slow = final[(final["experiment"] == "context") & (final["method"] == SLOW[0])
                 & (final["context_length"] == SLOW[1])]
    assert len(slow) == 3 and (slow["env_step"] == 6000).all() and (slow["env_steps_reached"] == 6500).all()


def test_performance_profiles_equal_rliable(study):
    prof = study["est"]["profiles"]
    for exp in (e for e in study["experiments"] if e.kind == "main"):
        for method, rows in prof[prof["experiment"] == exp.name].groupby("method"):
            m = matrix(study, exp, method, exp.context_lengths[0])
            taus = np.linspace(0, 1, 101)
            p, ci = seeded(library.create_performance_profile, {"m": m}, taus, reps=REPS)
            rows = rows.sort_values("tau")
            np.testing.assert_allclose(rows["tau"], taus, atol=1e-12)
            np.testing.assert_allclose(rows["fraction"], p["m"], atol=1e-12)
            np.testing.assert_allclose(rows[["ci_low", "ci_high"]].to_numpy().T, ci["m"], atol=1e-12)


def test_probability_of_improvement_equals_rliable(study):
    imp = study["est"]["improvement"]
    n = 0
    for r in imp.itertuples():
        exp = exp_named(study, r.experiment)
        x, y = matrix(study, exp, r.method_x, r.context_length), matrix(study, exp, r.method_y, r.context_length)
        point, ci = seeded(library.get_interval_estimates, {"p": (x, y)}, metrics.probability_of_improvement,
                           reps=REPS)
        assert_matches([r.probability, r.ci_low, r.ci_high], point["p"], np.ravel(ci["p"]))
        assert (r.n_runs_x, r.n_runs_y) == (x.shape[0], y.shape[0])
        n += 1
    # P(KalMamba > Y): pixels 4 others (rssm, sac, 2 ablations) + published DreamerV3; noisy_state 3; context
    # 2 x 3 lengths. P(Y > SAC): pixels rssm and the 2 ablations (never the published one); noisy_state rssm, vrkn.
    assert n == (5 + 3 + 6) + (3 + 2)
    pixels = imp[imp["experiment"] == "pixels"]
    assert set(pixels.loc[pixels["method_x"] == "kalmamba", "method_y"]) == {
        "rssm", "sac", "kalmamba_no_mamba", "kalmamba_no_reg", "dreamerv3" + plan.PUBLISHED_SUFFIX}
    assert set(pixels.loc[pixels["method_x"] != "kalmamba", "method_x"]) == {
        "rssm", "kalmamba_no_mamba", "kalmamba_no_reg"}
    assert (pixels.loc[pixels["method_x"] != "kalmamba", "method_y"] == "sac").all()
    assert set(imp.loc[(imp["experiment"] == "context") & (imp["method_x"] != "kalmamba"), "method_x"]) == set()


def test_sample_efficiency_curves_equal_rliable(study):
    cur = study["est"]["curves"]
    exp = exp_named(study, "pixels")
    grid = np.arange(0, BUDGET + 1, EVAL_EVERY)
    for method in ("kalmamba", "rssm"):
        runs = runs_of(study, exp, method, 32)
        seeds = min((sorted(v) for v in runs.values()), key=len)
        arr = np.array([[runs[t][s].set_index("env_step").loc[grid, "return"].to_numpy() / 1000.0
                         for t in exp.tasks] for s in seeds])
        point, ci = seeded(library.get_interval_estimates, {"m": arr},
                           lambda s: np.array([metrics.aggregate_iqm(s[..., i]) for i in range(s.shape[-1])]),
                           reps=REPS)
        c = cur[(cur["experiment"] == "pixels") & (cur["method"] == method) & (cur["task"] == "aggregate")]
        np.testing.assert_allclose(c["x"], grid)
        np.testing.assert_allclose(c["iqm"], point["m"], rtol=1e-12)
        np.testing.assert_allclose(c[["ci_low", "ci_high"]].to_numpy().T, ci["m"], rtol=1e-12)
    # the context experiment also has wall-clock curves, in hours
    wc = cur[(cur["experiment"] == "context") & (cur["x_kind"] == "wall_clock_h")]
    assert set(wc["context_length"]) == {32, 64, 128} and wc["x"].max() < 2.0 + 1e-9


def test_vectorised_iqm_equals_rliable_per_point():
    rng = np.random.default_rng(0)
    for shape in [(5, 4, 7), (3, 1, 2), (10, 3, 5)]:
        s = rng.random(shape)
        ref = [metrics.aggregate_iqm(s[..., i]) for i in range(shape[-1])]
        np.testing.assert_allclose(estimates.iqm_per_point(s), ref, rtol=1e-13)


def test_estimates_are_reproducible_for_a_fixed_seed(study):
    scores = collect.read_scores(study["root"] / "scores.csv")
    runs = collect.read_runs(study["root"] / "runs.csv")
    exp = exp_named(study, "noisy_state")

    def run(seed):
        s = estimates.Settings.from_config(study["cfg"], reps=20, seed=seed)
        return estimates.estimate_experiment(scores, runs, exp, s, from_config=True)["aggregate"]

    a, b, c = run(5), run(5), run(6)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"], c["ci_low"])


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="reps"):
        estimates.Settings(reps=0)
    with pytest.raises(ValueError, match="eval_every"):
        estimates.Settings(eval_every=-5)


# ---------------------------------------------------------------- figures
def test_every_expected_figure_file_is_written(study):
    names = plan.expected_figures(study["cfg"])
    assert "fig6_update_step" in names and "fig5_context_by_length" in names
    for name in names:
        pdf, png = (study["root"] / "figures" / f"{name}.{ext}" for ext in ("pdf", "png"))
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 3000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 3000, name
    produced = {p.stem for p in (study["root"] / "figures").iterdir()}
    assert produced == set(names)
    expected = {study["root"] / p for p in plan.expected_outputs(study["cfg"])}
    assert expected == set(study["written"])


def titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.axison]


def test_figure_panels(figs, study):
    assert set(figs) == set(plan.expected_figures(study["cfg"]))
    assert titles(figs["fig3_pixels_aggregate"]) == list(estimates.METRICS)
    assert titles(figs["fig3_pixels_curves"]) == ["all tasks", "cartpole-swingup", "walker-walk"]
    assert titles(figs["fig4_noisy_state_curves"]) == ["all tasks", "walker-walk", "cheetah-run"]
    assert titles(figs["fig3_pixels_ablations_aggregate"]) == list(estimates.METRICS)
    assert titles(figs["fig5_context_env_steps"]) == [f"context length {c}" for c in (32, 64, 128)]
    assert titles(figs["fig5_context_wall_clock"]) == [f"context length {c}" for c in (32, 64, 128)]
    assert titles(figs["fig5_context_by_length"]) == [m for m in ("KalMamba", "RSSM", "VRKN") for _ in range(2)]
    assert titles(figs["fig6_update_step"]) == ["forward pass", "training update"]
    assert len(figs["fig3_pixels_profiles"].axes) == 1 and len(figs["fig5_context_budget"].axes) == 1
    # y tick labels name the methods of the aggregate panels: main methods vs ablations
    ylabels = [t.get_text() for t in figs["fig3_pixels_aggregate"].axes[0].get_yticklabels()]
    assert ylabels == ["KalMamba", "RSSM", "SAC", "DreamerV3 (published)"]
    ylabels = [t.get_text() for t in figs["fig3_pixels_ablations_aggregate"].axes[0].get_yticklabels()]
    assert ylabels == ["KalMamba", "KalMamba w/o Mamba", "KalMamba w/o reg."]
    ylabels = [t.get_text() for t in figs["fig4_noisy_state_improvement"].axes[0].get_yticklabels()]
    assert ylabels == ["RSSM", "VRKN", "SAC"]


def test_incomplete_study_says_so_in_the_title(figs):
    def suptitle(name):
        return figs[name]._suptitle.get_text()

    assert "incomplete: 23 of 24 runs" in suptitle("fig4_noisy_state_curves")
    assert "incomplete: 26 of 27 runs" in suptitle("fig5_context_env_steps")
    assert "incomplete" not in suptitle("fig3_pixels_curves")


def test_colours_per_method_are_consistent_and_published_is_dashed(figs):
    seen = {}
    for name, fig in figs.items():
        for ax in fig.axes:
            for line in ax.get_lines():
                label = line.get_label()
                if label.startswith("_") or name == "fig5_context_by_length":
                    continue
                seen.setdefault(label, set()).add(matplotlib.colors.to_hex(line.get_color()))
    assert all(len(c) == 1 for c in seen.values()), seen
    assert seen["KalMamba"] == {figures.method_color("kalmamba")}
    assert seen["DreamerV3 (published)"] == seen.get("DreamerV3", seen["DreamerV3 (published)"])
    lines = {ln.get_label(): ln for ln in figs["fig3_pixels_curves"].axes[0].get_lines()}
    assert lines["KalMamba"].get_linestyle() == "-" and lines["DreamerV3 (published)"].get_linestyle() == "--"
    # a curve figure with published references says what their return is; one without says nothing about it
    assert "training-episode returns" in figs["fig3_pixels_curves"]._suptitle.get_text()
    assert "training-episode" not in figs["fig4_noisy_state_curves"]._suptitle.get_text()


def test_update_step_figure_names_skipped_cases():
    bench = {"machine": {"cpu": "test cpu", "gpu": "test gpu"}, "config": {},
             "results": [{"method": m, "context_length": L, "batch_size": 4, "device": "cpu", "obs": "noisy_state",
                          "forward_s": None if (m, L) == ("vrkn", 64) else 0.001 * L,
                          "update_s": None if (m, L) == ("vrkn", 64) else 0.003 * L, "peak_mem_mb": None,
                          "status": "skipped: out of memory" if (m, L) == ("vrkn", 64) else "ok"}
                         for m in ("kalmamba", "vrkn") for L in (16, 32, 64)]}
    fig = figures.update_step_figure(bench)
    text = fig._suptitle.get_text()
    assert "VRKN at 64" in text and "test cpu" in text and "test gpu" not in text
    vrkn = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "VRKN"][0]
    np.testing.assert_allclose(vrkn.get_xdata(), [16, 32])
    np.testing.assert_allclose(vrkn.get_ydata(), [48, 96])
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="update_s"):
        figures.update_step_figure({"results": [{"method": "kalmamba", "context_length": 8, "batch_size": 1,
                                                 "device": "cpu", "forward_s": 1.0}]})


def test_experiment_without_runs_gives_a_placeholder(study):
    exp = plan.Experiment(name="pixels_extra", obs="pixels", tasks=("finger-spin",), methods=("kalmamba", "rssm"),
                          context_lengths=(32,), seeds=(0,), kind="main")
    figs = figures.experiment_figures(study["est"], exp, estimates.Settings())
    assert set(figs) == set(exp.figures())
    buf = io.BytesIO()
    figs["pixels_extra_aggregate"].savefig(buf, format="png")
    assert "no data" in figs["pixels_extra_aggregate"].axes[0].texts[0].get_text()
    for f in figs.values():
        matplotlib.pyplot.close(f)


# ---------------------------------------------------------------- tables
def test_tables_parse_and_hold_the_estimates(study):
    pt = study["est"]["per_task"]
    for exp in study["experiments"]:
        md = (study["root"] / "tables" / f"final_{exp.name}.md").read_text().splitlines()
        rows = [ln for ln in md if ln.startswith("|")]
        header, body = rows[0], rows[2:]
        assert re.fullmatch(r"\|(:?-+:?\|)+", rows[1])
        n_methods = pt[pt["experiment"] == exp.name].groupby(["method", "context_length"]).ngroups
        assert len(body) == n_methods
        ncols = header.count("|") - 1
        assert all(r.count("|") - 1 == ncols for r in body)
        tex = (study["root"] / "tables" / f"final_{exp.name}.tex").read_text()
        for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{table}"):
            assert cmd in tex
        assert tex.count(r"\\") == n_methods + 1
    # a cell: KalMamba on walker-walk (pixels) = 1000 x per-task IQM [CI]
    r = pt[(pt["experiment"] == "pixels") & (pt["method"] == "kalmamba") & (pt["task"] == "walker-walk")].iloc[0]
    cell = f"{1000 * r.estimate:.0f} [{1000 * r.ci_low:.0f}, {1000 * r.ci_high:.0f}]"
    md = (study["root"] / "tables" / "final_pixels.md").read_text()
    assert f"| KalMamba | " in md and cell in md
    assert "incomplete: 23 of 24 runs" in (study["root"] / "tables" / "final_noisy_state.md").read_text()


def test_final_table_has_the_probability_of_improvement_over_sac(study):
    """The 'P(> SAC)' column: rliable's P(method > SAC) [95% CI] over the experiment's tasks, per method row, '–'
    for SAC itself; absent where the experiment has no SAC (context)."""
    md = (study["root"] / "tables" / "final_noisy_state.md").read_text()
    header, *_ = [ln for ln in md.splitlines() if ln.startswith("| Method")]
    assert header.endswith("| Aggregate IQM | P(> SAC) |") and "probability that a run of the method beats" in md
    exp = exp_named(study, "noisy_state")
    for method, name in (("kalmamba", "KalMamba"), ("rssm", "RSSM"), ("vrkn", "VRKN")):
        x, y = matrix(study, exp, method, 32), matrix(study, exp, "sac", 32)
        point, ci = seeded(library.get_interval_estimates, {"p": (x, y)}, metrics.probability_of_improvement,
                           reps=REPS)
        lo, hi = np.ravel(ci["p"])
        cell = f"{float(np.ravel(point['p'])[0]):.2f} [{lo:.2f}, {hi:.2f}]"
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
        assert row.endswith(f"| {cell} |"), (row, cell)
    assert next(ln for ln in md.splitlines() if ln.startswith("| SAC |")).endswith("| – |")
    assert "P(> SAC)" not in (study["root"] / "tables" / "final_context.md").read_text()


# ---------------------------------------------------------------- belief probe
def test_probe_table_and_estimates_equal_rliable_on_the_last_row_within_the_budget(study):
    """Known structure (analysis_fixtures): features_r2 = level - 0.02 seed + step / 1e6 at the last evaluation within
    the budget (10000; the past-budget rows of the pixel run do not matter: pixels have no probe)."""
    from rl.probe import PROBED_OBS

    assert plan.PROBED_OBS == PROBED_OBS
    table = collect.read_probe(study["root"] / "probe.csv")
    assert list(table.columns) == collect.PROBE_COLUMNS and set(table["obs"]) == {"noisy_state"}
    assert not table.loc[table["method"].eq("sac") & table["seed"].eq(1) & table["task"].eq("cheetah-run"),
                         "complete"].any()   # the running run's rows are there, marked incomplete
    pr = study["est"]["probe"]
    assert set(pr["experiment"]) == {"noisy_state"}   # main experiments on states only (not `context`)
    for method in ("kalmamba", "rssm", "vrkn", "sac"):
        for task in ("walker-walk", "cheetah-run", "aggregate"):
            complete = {t: [s for s in (0, 1, 2) if (t, method, s) != ("cheetah-run", "sac", 1)]
                        for t in ("walker-walk", "cheetah-run")}
            tasks = list(complete) if task == "aggregate" else [task]
            n = min(len(complete[t]) for t in tasks)   # a rectangular matrix: each task's n lowest seeds
            for inp in ("features", "observation"):
                value = {"features": lambda s: PROBE_LEVEL[method] - 0.02 * s + BUDGET / 1e6,
                         "observation": lambda s: 0.55 + 0.01 * s}[inp]
                m = np.array([[value(complete[t][i]) for t in tasks] for i in range(n)])
                point, ci = seeded(library.get_interval_estimates, {"m": m}, metrics.aggregate_mean, reps=REPS)
                row = pr[(pr["method"] == method) & (pr["task"] == task) & (pr["input"] == inp)]
                assert len(row) == 1, (method, task, inp)
                assert_matches(row.iloc[0][["estimate", "ci_low", "ci_high"]].to_numpy(float), point["m"],
                               np.ravel(ci["m"]))
                assert row.iloc[0]["n_runs"] == n
    md = (study["root"] / "tables" / "probe_noisy_state.md").read_text()
    r = pr[(pr["method"] == "kalmamba") & (pr["task"] == "aggregate") & (pr["input"] == "features")].iloc[0]
    assert f"| KalMamba | {r.estimate:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] |" in md


# ---------------------------------------------------------------- plan
def test_experiments_inferred_without_a_config(study):
    runs = collect.read_runs(study["root"] / "runs.csv")
    found = runs[runs["status"] != "missing"]
    exps = {e.name: e for e in plan.infer_experiments(found)}
    assert set(exps) == {"pixels", "noisy_state", "context"}
    assert exps["context"].context_lengths == (32, 64, 128) and exps["context"].tasks == ("walker-walk",)
    assert exps["pixels"].methods == ("kalmamba", "rssm", "sac", "kalmamba_no_mamba", "kalmamba_no_reg")
    assert exps["noisy_state"].kind == "main" and exps["noisy_state"].context_lengths == (32,)
    assert exps["context"].methods == ("kalmamba", "rssm", "vrkn")  # SAC ran at one context length only
    # without a config the budget is what the runs stopped at (DONE), not the evaluation past it (12000)
    scores = collect.read_scores(study["root"] / "scores.csv")
    done = runs[runs["status"] == "complete"]
    assert estimates.budget(scores[scores["obs"] == "pixels"], estimates.Settings(), done) == BUDGET


def test_cli_rejects_bad_reps(study, capsys):
    with pytest.raises(ValueError, match="reps"):
        main(["estimates", "--results", str(study["root"]), "--reps", "0"])


# ---------------------------------------------------------------- real-world inputs (issue 13)
def analyse(root, cfg, *extra):
    """`python -m analysis all` on a small study; returns the estimates."""
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    main(["all", "--results", str(root), "--study-config", str(root / "study.yaml"), "--reps", str(REPS),
          "--seed", str(SEED), *extra])
    return estimates.read_estimates(root)


def iqm_interval(scores: np.ndarray):
    """rliable's IQM interval estimate of a (runs x tasks) matrix, seeded like the analysis."""
    point, ci = seeded(library.get_interval_estimates, {"m": scores},
                       lambda s: np.array([metrics.aggregate_iqm(s)]), reps=REPS)
    return point["m"][0], ci["m"][:, 0]


@pytest.fixture(scope="module")
def short_study(tmp_path_factory):
    """Noisy walker-walk, budget 100k, eval every 20k (tests/analysis_fixtures.py, small_study):
    - kalmamba seeds 0, 1 reach 100k (return 900); seed 2 is stopped by the wall clock at 40k (return 360);
    - rssm seeds 0-2 reach 100k (700, 650, 750); seed 0's eval.csv has `inf` at 40k, seed 1's its last row
      (100k) `inf`: scored at 80k, one evaluation interval before the budget;
    - vrkn seed 0 reaches 100k (800); seed 1's DONE says 100k but its rows at 80k and 100k are `inf` and `nan`
      (its last evaluation, 60k, is more than one interval short: short); seed 2 has DONE but no eval.csv;
    - context experiment: kalmamba at context 32 (the runs above) and 64 (3 full runs of 850)."""
    root = tmp_path_factory.mktemp("short")
    cfg = small_study([0, 1, 2], dict(obs="noisy_state", tasks=["walker-walk"], methods=["kalmamba", "rssm", "vrkn"]),
                      dict(obs="noisy_state", tasks=["walker-walk"], methods=["kalmamba"], context_lengths=[32, 64]))
    key = ("noisy_state", "walker-walk")
    for seed in (0, 1):
        write_small_run(root, (*key, "kalmamba", 32, seed), ramp(900))
    write_small_run(root, (*key, "kalmamba", 32, 2), ramp(900, upto=40_000), reached=40_000, reason="wall_clock")
    rssm = {s: ramp(level) for s, level in enumerate((700, 650, 750))}
    rssm[0].loc[rssm[0]["env_step"] == 40_000, "return_mean"] = np.inf
    rssm[1].loc[rssm[1]["env_step"] == 100_000, "return_mean"] = np.inf
    for seed, ev in rssm.items():
        write_small_run(root, (*key, "rssm", 32, seed), ev)
    write_small_run(root, (*key, "vrkn", 32, 0), ramp(800))
    vrkn1 = ramp(800).astype({"return_mean": object})
    vrkn1.loc[vrkn1["env_step"] == 80_000, "return_mean"] = "-inf"
    vrkn1.loc[vrkn1["env_step"] == 100_000, "return_mean"] = "nan"
    write_small_run(root, (*key, "vrkn", 32, 1), vrkn1)
    write_small_run(root, (*key, "vrkn", 32, 2), None)
    for seed in (0, 1, 2):
        write_small_run(root, (*key, "kalmamba", 64, seed), ramp(850))
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("analysis").addHandler(handler)  # module scope: no caplog
    try:
        est = analyse(root, cfg)
    finally:
        logging.getLogger("analysis").removeHandler(handler)
    return dict(root=root, cfg=cfg, est=est, log="\n".join(r.getMessage() for r in records))


def test_short_run_is_left_out_of_env_step_estimates(short_study):
    est = short_study["est"]
    of = {k: v[v["experiment"] == "noisy_state"] for k, v in est.items()}
    fin = of["final"]
    assert sorted(fin.loc[fin["method"] == "kalmamba", "seed"]) == [0, 1]
    assert sorted(fin.loc[fin["method"] == "vrkn", "seed"]) == [0]
    pt = of["per_task"].set_index("method")
    point, ci = iqm_interval(np.array([[0.9], [0.9]]))
    assert_matches(pt.loc["kalmamba", ["estimate", "ci_low", "ci_high"]].to_numpy(float), point, ci)
    assert pt.loc["kalmamba", "n_runs"] == 2 and point == pytest.approx(0.9)
    agg = of["aggregate"]
    assert (agg.loc[agg["method"] == "kalmamba", "n_runs"] == 2).all()
    assert (of["profiles"].loc[of["profiles"]["method"] == "kalmamba", "n_runs"] == 2).all()
    imp = of["improvement"].set_index("method_y")
    assert imp.loc["rssm", "n_runs_x"] == 2
    # curves: over the two full runs up to the budget, not cut at the short run's 40k
    cur = of["curves"]
    k = cur[(cur["method"] == "kalmamba") & (cur["task"] == "aggregate")]
    assert k["x"].max() == SMALL_BUDGET and (k["n_runs"] == 2).all()


def test_short_runs_are_counted_named_and_warned(short_study):
    cov = short_study["est"]["coverage"].set_index("experiment")
    c = cov.loc["noisy_state"]
    assert (c["expected_runs"], c["complete_runs"], c["short_runs"], c["no_eval_runs"]) == (9, 9, 2, 1)
    assert "kalmamba walker-walk ctx32 seed2 (stopped wall_clock at 40000 env steps" in c["left_out"]
    assert "vrkn walker-walk ctx32 seed1 (stopped env_steps at 100000 env steps, last evaluation at 60000)" \
        in c["left_out"]
    assert "vrkn walker-walk ctx32 seed2 (no evaluation)" in c["left_out"]
    note = estimates.coverage_note(short_study["est"]["coverage"], "noisy_state")
    assert note == "2 runs short of the budget, left out; 1 run without evaluations, left out"
    assert "short of the env-step budget" in short_study["log"] and "kalmamba walker-walk ctx32 seed2" in \
        short_study["log"]
    table = (short_study["root"] / "tables" / "final_noisy_state.md").read_text()
    assert note in table
    # the wall-clock experiment: the run stopped by the wall clock has reached its budget
    assert cov.loc["context", "short_runs"] == 0


def test_short_run_still_appears_in_wall_clock_figures(short_study):
    est = short_study["est"]
    fin = est["final"][(est["final"]["experiment"] == "context") & (est["final"]["context_length"] == 32)]
    assert sorted(fin["seed"]) == [0, 1, 2]
    slow = fin[fin["seed"] == 2].iloc[0]
    assert slow["env_steps_reached"] == 40_000 and slow["score"] == pytest.approx(0.36)
    wc = est["curves"][(est["curves"]["experiment"] == "context") & (est["curves"]["x_kind"] == "wall_clock_h")
                       & (est["curves"]["context_length"] == 32)]
    assert len(wc) and (wc["n_runs"] == 3).all()


def test_non_finite_values_never_become_numbers(short_study):
    est = short_study["est"]
    fin = est["final"][est["final"]["experiment"] == "noisy_state"].set_index(["method", "seed"])
    # rssm seed 1: its final row (100k) is inf; scored at 80k, one evaluation interval before the budget
    assert fin.loc[("rssm", 1), "env_step"] == 80_000 and fin.loc[("rssm", 1), "score"] == pytest.approx(0.52)
    assert fin.loc[("rssm", 0), "score"] == pytest.approx(0.7)
    for name in ("final", "aggregate", "per_task", "profiles", "improvement", "curves"):
        values = est[name].select_dtypes("number").drop(columns=["ci_low", "ci_high"], errors="ignore")
        assert np.isfinite(values.to_numpy(float)).all(), name
    tables = "".join(p.read_text() for p in (short_study["root"] / "tables").glob("*.md"))
    assert "inf" not in tables and "nan" not in tables
    scores = pd.read_csv(short_study["root"] / "scores.csv")
    assert np.isfinite(scores[["env_step", "return", "score"]].to_numpy(float)).all()
    runs = short_study["root"] / "runs" / "noisy_state" / "walker-walk"
    assert f"{runs / 'rssm' / 'ctx32' / 'seed1' / 'eval.csv'}: line 7: return is not a finite number" \
        in short_study["log"]
    assert f"{runs / 'vrkn' / 'ctx32' / 'seed1' / 'eval.csv'}: lines 6, 7: return is not a finite number" \
        in short_study["log"]


def test_short_runs_without_a_study_config(short_study):
    """Without the config the budget comes from the DONE files (most runs stopped at 100k): the same runs are
    short."""
    scores = collect.read_scores(short_study["root"] / "scores.csv")
    runs = collect.read_runs(short_study["root"] / "runs.csv")
    exp = next(e for e in plan.experiments_from_config(short_study["cfg"]) if e.name == "noisy_state")
    out = estimates.estimate_experiment(scores, runs, exp, estimates.Settings(reps=REPS, seed=SEED),
                                        from_config=False)
    assert out["coverage"]["short_runs"].iloc[0] == 2
    assert sorted(out["final"].loc[out["final"]["method"] == "kalmamba", "seed"]) == [0, 1]


EVAL_HEADER = "env_step,wall_clock_s,return_mean,return_std,episodes\n"


@pytest.mark.parametrize("rows, expected, warned", [
    ("0,5,10,1,5\n1000,6,inf,1,5\n2000,7,30,1,5\n", [(0, 5, 10), (2000, 7, 30)], ["line 3: return"]),
    ("0,5,-inf,1,5\n1000,6,nan,1,5\n2000,7,abc,1,5\n3000,8,40,1,5\n", [(3000, 8, 40)], ["lines 2, 3, 4: return"]),
    ("0,5,10,1\n1000,6,20,1,5,9\n2000,7,30,1,5\n", [(2000, 7, 30)], ["lines 2, 3: 5 fields expected"]),
    ("0,5,10,1,5\n,6,20,1,5\n-1000,6,20,1,5\nNaN,6,20,1,5\n", [(0, 5, 10)], ["lines 3, 4, 5: env_step"]),
    ("0,5,10,1,5\n1000,-6,20,1,5\n2000,inf,30,1,5\n3000,,40,1,5\n", [(0, 5, 10), (1000, None, 20),
                                                                    (2000, None, 30), (3000, None, 40)],
     ["lines 3, 4: wall_clock_s"]),
    ("0,5,10,1,5\n1000,6,1500,1,5\n2000,7,-3,1,5\n", [(0, 5, 10)], ["lines 3, 4: return is not a finite number in [0"]),
    ("0,5,10,1,5\n1000,6,20,1,5\n1000,6,25,1,5\n500,6,5,1,5\n2000,7,30,1,5\n",
     [(0, 5, 10), (1000, 6, 20), (2000, 7, 30)], ["lines 4, 5: env_step does not increase"]),
    ("0,5,10,1,5\n1000,9,20,1,5\n2000,7,30,1,5\n3000,10,40,1,5\n",
     [(0, 5, 10), (1000, 9, 20), (2000, None, 30), (3000, 10, 40)], ["line 4: wall_clock_s goes back"]),
    ("", [], []),
    ("\n\n", [], []),
], ids=["inf", "nan-text", "field-count", "bad-step", "bad-wall-clock", "out-of-range", "repeated-step",
        "wall-clock-back", "header-only", "blank-lines"])
def test_malformed_eval_rows_are_missing_data(tmp_path, caplog, rows, expected, warned):
    (tmp_path / "eval.csv").write_text(EVAL_HEADER + rows)
    with caplog.at_level("WARNING"):
        ev = collect.read_evals(tmp_path)
    got = [(r.env_step, None if np.isnan(r.wall_clock_s) else r.wall_clock_s, r._3) for r in ev.itertuples()]
    assert got == expected
    for w in warned:
        assert f"{tmp_path / 'eval.csv'}: {w}" in caplog.text
    if not warned:
        assert "eval.csv" not in caplog.text


def test_malformed_eval_files_are_missing_data(tmp_path, caplog):
    (tmp_path / "eval.csv").write_text("")
    assert collect.read_evals(tmp_path).empty  # an empty file: not evaluated yet
    (tmp_path / "eval.csv").write_text("env_step,wall_clock_s,score\n0,1,0.5\n")
    with caplog.at_level("WARNING"):
        assert collect.read_evals(tmp_path).empty
    assert "line 1: header" in caplog.text and "'return'" in caplog.text


@pytest.mark.parametrize("done, kept", [
    ('{"env_steps": NaN, "wall_clock_s": Infinity, "reason": "env_steps"}', {"reason": "env_steps"}),
    ('{"env_steps": "100000", "wall_clock_s": -5, "reason": 3}', {}),
    ('{"env_steps": true, "wall_clock_s": null}', {}),
    ('[1, 2]', {}),
    ('not json', {}),
    ('{"env_steps": 100000, "wall_clock_s": 12.5, "reason": "wall_clock"}',
     {"env_steps": 100000.0, "wall_clock_s": 12.5, "reason": "wall_clock"}),
])
def test_done_values_that_are_not_finite_numbers_are_missing(tmp_path, done, kept):
    (tmp_path / "DONE").write_text(done)
    assert collect.read_done(tmp_path) == kept


def test_published_csv_with_non_finite_values(tmp_path, caplog):
    path = tmp_path / "pub.csv"
    path.write_text("source,method,obs,task,context_length,seed,env_step,wall_clock_s,return,score,complete\n"
                    "published,dreamerv3,pixels,walker-walk,,0,1000,,500,,True\n"
                    "published,dreamerv3,pixels,walker-walk,,0,2000,,inf,,True\n"
                    "published,dreamerv3,pixels,walker-walk,,0,3000,,x,,True\n"
                    "published,dreamerv3,pixels,walker-walk,,0,4000,,700,,True,extra\n")
    with caplog.at_level("WARNING"):
        rows, status = collect.load_published([path])
    assert list(rows["env_step"]) == [1000] and rows["score"].iloc[0] == 0.5
    assert f"{path}: lines 3, 4: return" in caplog.text and f"{path}: line 5: 11 fields" in caplog.text
    assert status.iloc[0]["status"] == "loaded" and status.iloc[0]["rows"] == 1


def test_hand_edited_scores_table_with_non_finite_values(tmp_path, caplog):
    rows = pd.DataFrame({"source": "run", "method": "rssm", "obs": "pixels", "task": "walker-walk",
                         "context_length": 32, "seed": 0, "env_step": [0, 1000, 2000], "wall_clock_s": 1.0,
                         "return": [1.0, np.inf, 3.0], "score": [0.001, np.inf, 0.003], "complete": True})
    rows.to_csv(tmp_path / "scores.csv", index=False)
    with caplog.at_level("WARNING"):
        back = collect.read_scores(tmp_path / "scores.csv")
    assert list(back["env_step"]) == [0, 2000] and "line 3" in caplog.text


# one seed
@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """seeds: [0]; pixels, kalmamba (800 and 600 on two tasks) vs rssm (500, 400)."""
    root = tmp_path_factory.mktemp("one_seed")
    cfg = small_study([0], dict(obs="pixels", tasks=["walker-walk", "cartpole-swingup"], methods=["kalmamba", "rssm"]))
    for method, levels in (("kalmamba", (800, 600)), ("rssm", (500, 400))):
        for task, level in zip(("walker-walk", "cartpole-swingup"), levels):
            write_small_run(root, ("pixels", task, method, 32, 0), ramp(level))
    est = analyse(root, cfg)
    matplotlib.rcParams["figure.max_open_warning"] = 0
    figs = figures.build_figures(est, plan.experiments_from_config(cfg), estimates.Settings.from_config(cfg),
                                 None, with_update_step=False)
    yield dict(root=root, cfg=cfg, est=est, figs=figs)
    for f in figs.values():
        matplotlib.pyplot.close(f)


def test_one_seed_has_no_interval(one_seed):
    est = one_seed["est"]
    pt = est["per_task"].set_index(["method", "task"])
    assert pt.loc[("kalmamba", "walker-walk"), "estimate"] == pytest.approx(0.8)
    for name in ("per_task", "aggregate", "profiles", "improvement", "curves"):
        assert len(est[name]) and est[name][["ci_low", "ci_high"]].isna().all().all(), name
    assert (est["per_task"]["n_runs"] == 1).all() and (est["aggregate"]["n_runs"] == 1).all()
    # the point estimates are rliable's
    x, y = np.array([[0.8, 0.6]]), np.array([[0.5, 0.4]])
    point, _ = seeded(library.get_interval_estimates, {"p": (x, y)}, metrics.probability_of_improvement, reps=REPS)
    assert est["improvement"]["probability"].iloc[0] == pytest.approx(float(np.ravel(point["p"])[0]))
    agg = est["aggregate"][est["aggregate"]["metric"] == "IQM"].set_index("method")
    assert agg.loc["kalmamba", "estimate"] == pytest.approx(metrics.aggregate_iqm(x))


def test_one_seed_tables_say_n_1(one_seed):
    md = (one_seed["root"] / "tables" / "final_pixels.md").read_text()
    assert "| KalMamba | 800 (n=1) | 600 (n=1) | 700 (n=1) |" in md
    assert "[800, 800]" not in md and "too few runs for an interval" in md


def test_one_seed_figures_say_n_1_and_draw_no_interval(one_seed):
    figs = one_seed["figs"]
    agg = figs["fig3_pixels_aggregate"].axes[0]
    assert [t.get_text() for t in agg.get_yticklabels()] == ["KalMamba (n=1)", "RSSM (n=1)"]
    assert len(agg.patches) == 0 and len(agg.collections) == 2  # no CI bar, the point estimates only
    imp = figs["fig3_pixels_improvement"].axes[0]
    assert [t.get_text() for t in imp.get_yticklabels()] == ["RSSM (n=1)"] and len(imp.patches) == 0
    for name in ("fig3_pixels_curves", "fig3_pixels_profiles"):
        labels = {ln.get_label() for ax in figs[name].axes for ln in ax.get_lines()}
        assert {"KalMamba (n=1)", "RSSM (n=1)"} <= labels, name
        bands = [c for ax in figs[name].axes for c in ax.collections if len(c.get_paths())
                 and np.isfinite(c.get_paths()[0].vertices).all() and len(c.get_paths()[0].vertices)]
        assert not bands, name


def closed_port_url() -> str:
    """An http URL on this machine that refuses connections (a port just released): no traffic leaves it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_figures_without_published_scores_when_offline(tmp_path, caplog):
    from analysis import published

    note = tmp_path / "published" / "dmc_vision-dreamerv3.json.gz"
    url = closed_port_url() + "dmc_vision-dreamerv3.json.gz"
    with pytest.raises(published.PublishedUnavailable, match="127.0.0.1"):
        published.main([url, "--out", str(note)])
    assert not note.exists()
    assert published.main([url, "--out", str(note), "--note-if-unavailable"]) == 0
    cfg = small_study([0, 1], dict(obs="pixels", tasks=["walker-walk"], methods=["kalmamba", "rssm"]))
    for method, level in (("kalmamba", 800), ("rssm", 600)):
        for seed in (0, 1):
            write_small_run(tmp_path, ("pixels", "walker-walk", method, 32, seed), ramp(level + 10 * seed))
    with caplog.at_level("WARNING"):
        est = analyse(tmp_path, cfg, "--published", str(note))
    status = pd.read_csv(tmp_path / "published.csv")
    assert status[["file", "obs", "status", "rows"]].values.tolist() == [
        ["dmc_vision-dreamerv3.json.gz", "pixels", "unavailable", 0]]
    assert estimates.coverage_note(est["coverage"], "pixels") == "without published scores: unavailable offline"
    assert "without published scores" in (tmp_path / "tables" / "final_pixels.md").read_text()
    assert "unavailable" in caplog.text and "dmc_vision-dreamerv3.json.gz" in caplog.text
    assert not est["aggregate"]["method"].str.contains("published").any()


def test_update_step_times_that_are_not_finite_are_not_timed(caplog):
    bench = {"machine": {"cpu": "test cpu"}, "config": {},
             "results": [{"method": "kalmamba", "context_length": L, "batch_size": 4, "device": "cpu",
                          "forward_s": {16: 0.016, 32: float("inf"), 64: "x"}[L],
                          "update_s": {16: 0.048, 32: 0.096, 64: float("nan")}[L]} for L in (16, 32, 64)]}
    with caplog.at_level("WARNING"):
        fig = figures.update_step_figure(bench)
    fwd = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(fwd.get_xdata(), [16])
    assert "KalMamba at 32" in fig._suptitle.get_text() and "KalMamba at 64" in fig._suptitle.get_text()
    assert "forward_s is not a finite number" in caplog.text
    matplotlib.pyplot.close(fig)


def test_probe_table_shows_n_where_a_single_run_gives_no_interval():
    """A method probed by one run only (rliable's bootstrap of one run has no interval): '0.97 (n=1)', as the final
    table does, never 'nan'."""
    from analysis import tables

    exp = plan.Experiment(name="noisy_state", obs="noisy_state", tasks=("cartpole-swingup",),
                          methods=("kalmamba", "vrkn"), context_lengths=(32,), seeds=(0, 1, 2), kind="main")
    rows = [dict(experiment="noisy_state", method=m, context_length=32, task="cartpole-swingup", input=i,
                 estimate=e, ci_low=lo, ci_high=hi, n_runs=n, env_step=100000)
            for m, n, lo, hi in (("kalmamba", 1, np.nan, np.nan), ("vrkn", 3, 0.96, 0.98))
            for i, e in (("features", 0.97), ("observation", 0.9))]
    table = tables.probe_table(pd.DataFrame(rows), exp)
    cells = table.set_index("Method").to_dict("index")
    assert cells["KalMamba"]["cartpole-swingup: features"] == "0.97 (n=1)"
    assert cells["VRKN"]["cartpole-swingup: features"] == "0.97 [0.96, 0.98]"
    assert "nan" not in tables.to_markdown(table)


def test_suptitle_note_fits_the_figure_width():
    """The published-curve note and an incompleteness note, at the column width: the rendered title lies inside the
    figure (it was clipped at both sides), and the note is broken only between its '; ' clauses."""
    note = figures.PUBLISHED_NOTE + "; incomplete: 23 of 24 runs (missing: kalmamba seed 2)"
    with figures._style():
        fig, _ = matplotlib.pyplot.subplots(figsize=(figures.COLUMN_WIDTH, 2.0), layout="constrained")
        figures._suptitle(fig, "State: return", note)
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width
        lines = fig._suptitle.get_text().split("\n")
        assert lines[0] == "State: return" and len(lines) > 2
        assert " ".join(lines[1:]) == f"({note})"                           # nothing lost, nothing reordered
        assert all(line.endswith(";") for line in lines[1:-1])              # breaks only after a clause
        matplotlib.pyplot.close(fig)
