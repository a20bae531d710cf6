"""analysis/leads.py on synthetic run directories: the IQM and CI equal rliable called directly, unfinished runs
are listed (never silently dropped), the diagnostics are the per-run last rows averaged, and the CLI writes the
Markdown file."""
import json

import numpy as np
import pandas as pd
import pytest
from rliable import library, metrics

from analysis import leads


def write_run(run, returns_by_step, done=True, diag=None):
    run.mkdir(parents=True)
    pd.DataFrame({"env_step": list(returns_by_step), "wall_clock_s": 1.0, "return_mean": list(returns_by_step.values()),
                  "return_std": 0.0, "episodes": 10}).to_csv(run / "eval.csv", index=False)
    rows = [{"env_step": s, "wall_clock_s": 1.0, "updates": 1, "train_return": 0.0, "fps": 1.0}
            for s in returns_by_step]
    if diag is not None:
        rows[0].update({k: 999.0 for k in diag})          # an earlier row: must not be used
        rows[-1].update(diag)
    pd.DataFrame(rows).to_csv(run / "train.csv", index=False)
    if done:
        (run / "DONE").write_text(json.dumps({"env_steps": max(returns_by_step)}))


def diag(recon, reward, kl, reg=None, kl_active=0.5, obs_var=1.0, gain=0.2, feat_std=0.5):
    d = {"diag_grad_recon": recon, "diag_grad_reward": reward, "diag_grad_kl": kl, "diag_kl_active": kl_active,
         "diag_obs_var_median": obs_var, "diag_gain_median": gain, "diag_feat_std": feat_std}
    if reg is not None:
        d["diag_grad_reg"] = reg
    return d


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "leads"
    finals = {0: 600.0, 1: 420.0, 2: 700.0, 3: 50.0}
    for s, final in finals.items():
        write_run(root / "new_defaults" / "state" / f"seed{s}", {50_000: 100.0, 100_000: final},
                  diag=diag(1.0, 1.0, 2.0, 0.0 if s else 4.0, kl_active=0.1 * s, obs_var=s, gain=0.1, feat_std=1.0))
    write_run(root / "old_defaults" / "state" / "seed0", {50_000: 150.0, 100_000: 140.0},
              diag=diag(3.0, 6.0, 1.0, 10.0))
    write_run(root / "old_defaults" / "state" / "seed1", {50_000: 150.0}, done=False)          # still running
    write_run(root / "old_defaults" / "noisy_state" / "seed0", {40_000: 90.0}, done=True)      # stopped short
    write_run(root / "sac" / "noisy_state" / "seed0", {100_000: 250.0, 101_000: 260.0, 110_000: 990.0})
    return root


def test_iqm_and_ci_equal_rliable_called_directly(root):
    table = leads.leads_table(root, budget=100_000, reps=300, seed=3).set_index(["variant", "obs"])
    scores = np.array([600.0, 420.0, 700.0, 50.0]).reshape(-1, 1) / 1000
    np.random.seed(3)
    point, ci = library.get_interval_estimates({"m": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=300)
    expected = f"{1000 * point['m'][0]:.0f} [{1000 * ci['m'][0, 0]:.0f}, {1000 * ci['m'][1, 0]:.0f}]"
    row = table.loc[("new_defaults", "state")]
    assert row["final return IQM [95% CI]"] == expected and point["m"][0] == pytest.approx(0.51)  # mean of 420, 600
    assert row["seeds"] == "4 (0, 1, 2, 3)" and row["not counted"] == ""


def test_unfinished_runs_are_listed_and_budget_slack_is_honoured(root):
    table = leads.leads_table(root, budget=100_000, reps=50).set_index(["variant", "obs"])
    old = table.loc[("old_defaults", "state")]
    assert old["seeds"] == "1 (0)" and old["not counted"] == "seed1 running (50k)"
    assert old["final return IQM [95% CI]"] == "140 (n=1)"          # one seed: no interval, never '[nan, nan]'
    short = table.loc[("old_defaults", "noisy_state")]
    assert short["final return IQM [95% CI]"] == "running" and short["not counted"] == "seed0 short (40k)"
    # the last evaluation within 1.01 x budget (101k), not the one at 110k
    assert table.loc[("sac", "noisy_state")]["final return IQM [95% CI]"].startswith("260 ")
    assert list(table.index.get_level_values(0)) == ["old_defaults", "old_defaults", "new_defaults", "sac"]


def test_diagnostics_are_last_rows_averaged_with_gradient_shares(root):
    table = leads.leads_table(root, budget=100_000, reps=50).set_index(["variant", "obs"])
    old = table.loc[("old_defaults", "state")]
    assert old["grad share recon/reward/kl/reg (%)"] == "15/30/5/50"                  # 3, 6, 1, 10 of 20
    new = table.loc[("new_defaults", "state")]
    # seed 0: 1, 1, 2, 4 of 8 -> 12.5/12.5/25/50; seeds 1-3: 1, 1, 2, 0 of 4 -> 25/25/50/0; mean over 4 seeds
    assert new["grad share recon/reward/kl/reg (%)"] == "22/22/44/12"
    assert new["KL active"] == "0.15" and new["σ²_w median"] == "1.50" and new["gain median"] == "0.100"
    assert new["feature std"] == "1.00"
    assert table.loc[("sac", "noisy_state")]["KL active"] == leads.MISSING     # a run without diagnostics


def test_cli_prints_and_writes_markdown(root, tmp_path, capsys):
    out = tmp_path / "t.md"
    assert leads.main([str(root), "--out", str(out), "--reps", "50"]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text() and text.count("\n| ") == 1 + 4 and "| new_defaults | state |" in text
    assert leads.main([str(root), "--reps", "50"]) == 0 and (root / "leads.md").exists()
    with pytest.raises(SystemExit) as e:
        leads.main([str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "nowhere" in capsys.readouterr().err
