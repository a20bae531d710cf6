"""DreamerV3 integration (issue 7): log adapter, published-score loader, launcher CLI, Snakemake rule, container.

CPU and offline. Fixtures are real DreamerV3 log lines, written by `elements.logger.JSONLOutput` (elements 3.22.0,
the logger DreamerV3's `dreamerv3/main.py:make_logger` sets up at commit e3f02248693a79dc8b0ebd62c93683888ddaccfe):
- LAUNCHER_*: `python -m integrations.dreamerv3.launch --task walker-walk --obs noisy_state --seed 0 --env-steps 1600
  --eval-every 400 --eval-episodes 2 --episode-length 100 --device cpu --configs dmc_proprio debug`, stopped by
  SIGTERM at env step 1072 and resumed (lines of metrics.jsonl at steps 394, 400, 504, 1072, 1200; scores.jsonl).
- OWN_*: DreamerV3's unmodified training script, `python dreamerv3/main.py --configs debug --task dummy_cont
  --run.steps 600 --run.log_every 1 --logger.outputs jsonl --jax.platform cpu` (metrics.jsonl at steps 396, 401,
  408; all of scores.jsonl).
The end-to-end test runs DreamerV3 itself where $KALBENCH_DREAMERV3_PYTHON names a Python with DreamerV3's
requirements and $KALBENCH_DREAMERV3_SRC a checkout of it.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import collect
from analysis import published
from integrations import dreamerv3 as dv3pkg
from integrations.dreamerv3 import adapter, launch, tasks

REPO = Path(__file__).resolve().parents[1]
SHARED_SCORES = REPO.parent / "shared" / "reference-scores"

LAUNCHER_METRICS = (
    '{"step": 394, "episode/score": 7.638273751363158, "episode/length": 51.0}\n'
    '{"step": 400, "episode/score": 5.047603767365217, "episode/length": 51.0, "kalbench/eval/return_mean": 4.8574881124077365, "kalbench/eval/return_std": 1.088061807793565, "kalbench/eval/episodes": 2.0, "kalbench/eval/wall_clock_s": 61.960288997999896, "kalbench/fps": 86.7576498565346, "train/adv": 0.0, "train/adv_mag": 0.0, "train/adv_std": 0.0, "train/con": 0.45204272866249084, "train/dyn_ent": 2.738118529319763, "train/ent/action": 7.824795782566071, "train/loss/con": 0.8139703273773193, "train/loss/dyn": 1.0, "train/loss/policy": -0.00013075452443445101, "train/loss/rep": 1.0, "train/loss/repval": 3.2188724279403687, "train/loss/rew": 1.6094358265399933, "train/loss/state": 37.233118534088135, "train/loss/value": 0.17930627055466175, "train/opt/grad_norm": 22.226088285446167, "train/opt/grad_rms": 0.527698926627636, "train/opt/loss": 41.90135908126831, "train/opt/param_count": 1774.0, "train/opt/param_rms": 0.32594823837280273, "train/opt/update_rms": 1.249111170054107e-07, "train/opt/updates": 4.5, "train/rep_ent": 2.5802109837532043, "train/ret": 0.0, "train/ret_max": 0.0, "train/ret_min": 0.0, "train/ret_rate": 0.0, "train/rew": 0.0, "train/slowval": 0.0, "train/tar": 0.0, "train/val": 0.0, "train/weight": 0.052223332691937685, "kalbench/wall_clock_s": 64.91165196299994, "kalbench/updates": 9.0, "kalbench/train_return": 5.398220295493957}\n'
    '{"step": 504, "kalbench/fps": 263.7394723063433, "train/adv": 0.0, "train/adv_mag": 0.0, "train/adv_std": 0.0, "train/con": 0.4571065306663513, "train/dyn_ent": 2.739847707748413, "train/ent/action": 7.824979496002197, "train/loss/con": 0.8088891863822937, "train/loss/dyn": 1.0, "train/loss/policy": -0.0001332923740847036, "train/loss/rep": 1.0, "train/loss/repval": 3.174153232574463, "train/loss/rew": 1.609423828125, "train/loss/state": 37.321343994140626, "train/loss/value": 0.18281553983688353, "train/opt/grad_norm": 108.2993221282959, "train/opt/grad_rms": 2.5712773978710173, "train/opt/loss": 41.9745849609375, "train/opt/param_count": 1774.0, "train/opt/param_rms": 0.3259481906890869, "train/opt/update_rms": 3.88173924648072e-07, "train/opt/updates": 11.0, "train/rep_ent": 2.5640098094940185, "train/ret": 0.0, "train/ret_max": 0.0, "train/ret_min": 0.0, "train/ret_rate": 0.0, "train/rew": 0.0, "train/slowval": 0.0, "train/tar": 0.0, "train/val": 0.0, "train/weight": 0.05324567034840584, "kalbench/wall_clock_s": 65.30598049900004, "kalbench/updates": 14.0, "kalbench/train_return": NaN}\n'
    '{"step": 1072, "kalbench/fps": 0.0, "kalbench/wall_clock_s": 145.04908804899992, "kalbench/updates": 44.0, "kalbench/train_return": NaN}\n'
    '{"step": 1200, "kalbench/eval/return_mean": 9.954116076231003, "kalbench/eval/return_std": 3.3280035257339478, "kalbench/eval/episodes": 2.0, "kalbench/eval/wall_clock_s": 146.08468549799989, "kalbench/fps": 29.482479788548176, "train/adv": 0.0, "train/adv_mag": 0.0, "train/adv_std": 0.0, "train/con": 0.45688338081041974, "train/dyn_ent": 2.7520970503489175, "train/ent/action": 7.824814001719157, "train/loss/con": 0.815720001856486, "train/loss/dyn": 1.0, "train/loss/policy": -0.0001334798701767189, "train/loss/rep": 1.0, "train/loss/repval": 3.2036132415135703, "train/loss/rew": 1.6091483632723491, "train/loss/state": 36.08753903706869, "train/loss/value": 0.1830162579814593, "train/opt/grad_norm": 63.00430043538412, "train/opt/grad_rms": 1.4958683550357819, "train/opt/loss": 40.75637435913086, "train/opt/param_count": 1774.0, "train/opt/param_rms": 0.3259471505880356, "train/opt/update_rms": 1.8872290941847798e-06, "train/opt/updates": 46.5, "train/rep_ent": 2.5647895336151123, "train/ret": 0.0, "train/ret_max": 0.0, "train/ret_min": 0.0, "train/ret_rate": 0.0, "train/rew": 0.0, "train/slowval": 0.0, "train/tar": 0.0, "train/val": 0.0, "train/weight": 0.05330993980169296, "kalbench/wall_clock_s": 149.39064957699998, "kalbench/updates": 50.0, "kalbench/train_return": NaN}\n'
)
LAUNCHER_SCORES = (
    '{"step": 394, "episode/score": 7.638273751363158}\n'
    '{"step": 396, "episode/score": 4.431337877875194}\n'
    '{"step": 398, "episode/score": 4.475665785372257}\n'
    '{"step": 400, "episode/score": 5.047603767365217}\n'
    '{"step": 794, "episode/score": 24.118761502206326}\n'
    '{"step": 796, "episode/score": 6.037542176432908}\n'
    '{"step": 798, "episode/score": 4.72621164098382}\n'
    '{"step": 800, "episode/score": 8.104205621406436}\n'
    '{"step": 1466, "episode/score": 4.218253368511796}\n'
    '{"step": 1468, "episode/score": 7.123421434313059}\n'
    '{"step": 1470, "episode/score": 5.346528712660074}\n'
    '{"step": 1472, "episode/score": 3.995921980589628}\n'
)
OWN_METRICS = (
    '{"step": 396, "train/adv": 0.0, "train/adv_mag": 0.0, "train/adv_std": 0.0, "train/con": 0.5925261378288269, "train/dyn_ent": 2.561814785003662, "train/ent/act_cont": 7.829324722290039, "train/ent/act_disc": 1.6094228029251099, "train/loss/con": 0.5521425008773804, "train/loss/count": 6.459544658660889, "train/loss/dyn": 1.0, "train/loss/float2d": 25.054147720336914, "train/loss/image": 3833.259033203125, "train/loss/int2d": 8.257896423339844, "train/loss/policy": -0.0002806639240588993, "train/loss/rep": 1.0, "train/loss/repval": 3.2187108993530273, "train/loss/rew": 1.6093839406967163, "train/loss/token": 6.507456302642822, "train/loss/value": 0.31898751854896545, "train/loss/vector": 5.002253532409668, "train/opt/grad_norm": 8532.2666015625, "train/opt/grad_rms": 65.1773910522461, "train/opt/loss": 3889.086181640625, "train/opt/param_count": 17137.0, "train/opt/param_rms": 0.20993821322917938, "train/opt/update_rms": 9.183126508105488e-07, "train/opt/updates": 27.0, "train/rand/act_disc": 0.9999905228614807, "train/rep_ent": 2.58613920211792, "train/ret": 0.0, "train/ret_max": 0.0, "train/ret_min": 0.0, "train/ret_rate": 0.0, "train/rew": 0.0, "train/slowval": 0.0, "train/tar": 0.0, "train/val": 0.0, "train/weight": 0.09292668104171753, "replay/items": 356.0, "replay/chunks": 32.0, "replay/streams": 4.0, "replay/ram_gb": 0.382904052734375, "replay/inserts": 12.0, "replay/samples": 8.0, "replay/updates": 80.0, "replay/replay_ratio": 7.333333333333333, "usage/psutil/proc_cpu_usage": 0.28300000000000003, "usage/psutil/proc_ram_frac": 0.030055146448165888, "usage/psutil/proc_ram_gb": 0.7075157165527344, "usage/psutil/total_cpu_count": 2.0, "usage/psutil/total_cpu_frac": 1.0, "usage/psutil/total_ram_frac": 0.344, "usage/psutil/total_ram_total_gb": 23.540584564208984, "usage/psutil/total_ram_used_gb": 8.105579376220703, "usage/psutil/total_ram_avail_gb": 15.435005187988281, "fps/policy": 2.2480496139426145, "fps/train": 14.986995418113654}\n'
    '{"step": 401, "episode/score": 100.0, "episode/length": 101.0}\n'
    '{"step": 408, "train/adv": 0.0, "train/adv_mag": 0.0, "train/adv_std": 0.0, "train/con": 0.5946786999702454, "train/dyn_ent": 2.603266716003418, "train/ent/act_cont": 7.8295087814331055, "train/ent/act_disc": 1.6094236373901367, "train/loss/con": 0.5191182494163513, "train/loss/count": 6.258280277252197, "train/loss/dyn": 1.0, "train/loss/float2d": 25.165691375732422, "train/loss/image": 3832.068115234375, "train/loss/int2d": 8.543997764587402, "train/loss/policy": -0.00029299064772203565, "train/loss/rep": 1.0, "train/loss/repval": 3.218703508377075, "train/loss/rew": 1.609378695487976, "train/loss/token": 6.63873291015625, "train/loss/value": 0.33298489451408386, "train/loss/vector": 4.974861145019531, "train/opt/grad_norm": 8407.4208984375, "train/opt/grad_rms": 64.22370910644531, "train/opt/loss": 3888.176513671875, "train/opt/param_count": 17137.0, "train/opt/param_rms": 0.209938183426857, "train/opt/update_rms": 9.569968142386642e-07, "train/opt/updates": 28.0, "train/rand/act_disc": 0.9999910593032837, "train/rep_ent": 2.586082696914673, "train/ret": 0.0, "train/ret_max": 0.0, "train/ret_min": 0.0, "train/ret_rate": 0.0, "train/rew": 0.0, "train/slowval": 0.0, "train/tar": 0.0, "train/val": 0.0, "train/weight": 0.0970061868429184, "epstats/reward_rate": 0.01, "replay/items": 368.0, "replay/chunks": 32.0, "replay/streams": 4.0, "replay/ram_gb": 0.382904052734375, "replay/inserts": 12.0, "replay/samples": 8.0, "replay/updates": 80.0, "replay/replay_ratio": 7.333333333333333, "usage/psutil/proc_cpu_usage": 0.326, "usage/psutil/proc_ram_frac": 0.03005530849585231, "usage/psutil/proc_ram_gb": 0.70751953125, "usage/psutil/total_cpu_count": 2.0, "usage/psutil/total_cpu_frac": 1.0, "usage/psutil/total_ram_frac": 0.313, "usage/psutil/total_ram_total_gb": 23.540584564208984, "usage/psutil/total_ram_used_gb": 7.367671966552734, "usage/psutil/total_ram_avail_gb": 16.17291259765625, "fps/policy": 3.4392875270494216, "fps/train": 22.928588213966332}\n'
)
OWN_SCORES = (
    '{"step": 401, "episode/score": 100.0}\n'
    '{"step": 402, "episode/score": 100.0}\n'
    '{"step": 403, "episode/score": 100.0}\n'
    '{"step": 404, "episode/score": 100.0}\n'
)


def write_logdir(path: Path, metrics: str, scores: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text(metrics)
    (path / "scores.jsonl").write_text(scores)
    return path


# ---------------------------------------------------------------- adapter on the launcher's logs
def test_eval_table_from_launcher_logs():
    table = adapter.eval_table(adapter.read_jsonl_text(LAUNCHER_METRICS))
    assert list(table.columns) == adapter.EVAL_COLUMNS
    assert table["env_step"].tolist() == [400, 1200]
    # the numbers of the log lines, as written
    assert table["return_mean"].tolist() == [4.8574881124077365, 9.954116076231003]
    assert table["return_std"].tolist() == [1.088061807793565, 3.3280035257339478]
    assert table["wall_clock_s"].tolist() == [61.960288997999896, 146.08468549799989]
    assert table["episodes"].tolist() == [2, 2]


def test_train_table_from_launcher_logs():
    table = adapter.train_table(adapter.read_jsonl_text(LAUNCHER_METRICS), action_repeat=2)
    assert table["env_step"].tolist() == [400, 504, 1200]  # the lines with DreamerV3's train/loss/* terms
    assert {"loss_dyn", "loss_rep", "loss_rew", "loss_con", "loss_state", "loss_policy", "loss_value",
            "loss_repval"} <= set(table.columns)
    row = table.set_index("env_step").loc[504]
    assert row["loss_con"] == 0.8088891863822937
    assert row["fps"] == 263.7394723063433  # the launcher's own env-step rate, not DreamerV3's agent-step fps
    assert list(table.columns[:3]) == ["env_step", "wall_clock_s", "updates"]
    assert list(table.columns[-2:]) == ["train_return", "fps"]


def test_run_directory_is_read_by_collect(tmp_path):
    """A run directory written by the adapter is a run of `dreamerv3` to analysis.collect, like any method's."""
    logdir = write_logdir(tmp_path / "dv3", LAUNCHER_METRICS, LAUNCHER_SCORES)
    run = tmp_path / "results" / "runs" / "noisy_state" / "walker-walk" / "dreamerv3" / "ctx32" / "seed0"
    config = {"method": "dreamerv3", "task": "walker-walk", "obs": "noisy_state", "context_length": 32, "seed": 0}
    adapter.write_config(run, config, adapter.provenance(0, "jax:cpu", {}))
    evals = adapter.write_logs(logdir, run, action_repeat=2)
    adapter.write_done(run, evals, 1600, 152.1, "env_steps")
    scores, runs = collect.collect(tmp_path / "results", expected=[("noisy_state", "walker-walk", "dreamerv3", 32, 0)])
    assert runs["status"].tolist() == ["complete"]
    assert scores["method"].unique().tolist() == ["dreamerv3"]
    # through eval.csv (pandas' CSV float round trip may move the last digit)
    assert scores["return"].tolist() == pytest.approx([4.8574881124077365, 9.954116076231003], rel=1e-14)
    np.testing.assert_allclose(scores["score"], scores["return"] / 1000)
    done = json.loads((run / "DONE").read_text())
    assert done == {"final_return": 9.954116076231003, "env_steps": 1600, "wall_clock_s": 152.1,
                    "reason": "env_steps"}
    assert json.loads((run / "config.json").read_text())["provenance"]["seed"] == 0


def test_read_jsonl_torn_and_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(LAUNCHER_METRICS + '{"step": 1300, "kalbench/ev')  # the process died while appending
    assert [r["step"] for r in adapter.read_jsonl(path)] == [394, 400, 504, 1072, 1200]
    lines = LAUNCHER_METRICS.splitlines()
    path.write_text("\n".join([lines[0], "not json", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        adapter.read_jsonl(path)
    path.write_text('[1, 2]\n{"step": 1}\n')
    with pytest.raises(ValueError, match="object with a 'step'"):
        adapter.read_jsonl(path)
    assert adapter.read_jsonl(tmp_path / "absent.jsonl") == []


def test_truncate_jsonl_for_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(LAUNCHER_METRICS + '{"step": 1300, "kalb')
    assert adapter.truncate_jsonl(path, 1072) == 1  # the 1200 line goes; the torn line is dropped too
    assert [r["step"] for r in adapter.read_jsonl(path)] == [394, 400, 504, 1072]
    assert path.read_text().endswith("\n")
    before = path.read_text()
    assert adapter.truncate_jsonl(path, 5000) == 0 and path.read_text() == before
    assert adapter.truncate_jsonl(tmp_path / "absent.jsonl", 0) == 0


def test_adapter_never_writes_a_non_finite_number(tmp_path, caplog):
    """A diverged DreamerV3 run logs NaN / Infinity (Python's json): an evaluation or episode score that is not
    finite is skipped, any other value is written as an empty cell, DONE writes null."""
    metrics = (
        '{"step": 400, "kalbench/eval/return_mean": Infinity, "kalbench/eval/return_std": 1.0, '
        '"kalbench/eval/episodes": 2.0, "kalbench/eval/wall_clock_s": 60.0}\n'
        '{"step": 800, "kalbench/eval/return_mean": 12.5, "kalbench/eval/return_std": NaN, '
        '"kalbench/eval/episodes": 2.0, "kalbench/eval/wall_clock_s": Infinity, "train/loss/dyn": -Infinity, '
        '"kalbench/wall_clock_s": 61.0, "kalbench/updates": 9.0, "kalbench/fps": Infinity}\n'
        '{"step": 1200, "kalbench/eval/return_mean": NaN, "kalbench/eval/return_std": 1.0, '
        '"kalbench/eval/episodes": 2.0, "kalbench/eval/wall_clock_s": 90.0, "train/loss/dyn": 1.5}\n'
        '{"step": 1600, "kalbench/eval/return_mean": "diverged", "kalbench/eval/episodes": 2.0}\n')
    scores = '{"step": 390, "episode/score": -Infinity}\n{"step": 399, "episode/score": 4.0}\n'
    logdir = write_logdir(tmp_path / "dv3", metrics, scores)
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        evals = adapter.write_logs(logdir, run)
        adapter.write_done(run, evals, 1600, math.inf, "env_steps")
    text = (run / "eval.csv").read_text() + (run / "train.csv").read_text() + (run / "DONE").read_text()
    assert not any(word in text.lower() for word in ("inf", "nan")), text
    ev = pd.read_csv(run / "eval.csv")
    assert ev["env_step"].tolist() == [800] and ev["return_mean"].tolist() == [12.5]
    assert ev["wall_clock_s"].isna().all() and ev["return_std"].isna().all()
    train = pd.read_csv(run / "train.csv").set_index("env_step")
    assert np.isnan(train.loc[800, "loss_dyn"]) and train.loc[1200, "loss_dyn"] == 1.5
    assert np.isnan(train.loc[800, "fps"]) and train.loc[800, "updates"] == 9.0
    assert "env step 400: return inf is not a finite number; skipped" in caplog.text
    assert "env step 1600: return 'diverged'" in caplog.text
    done = json.loads((run / "DONE").read_text())
    assert done["final_return"] == 12.5 and done["wall_clock_s"] is None
    adapter.write_done(run, pd.DataFrame(columns=adapter.EVAL_COLUMNS), 0, 1.0, "wall_clock")
    assert json.loads((run / "DONE").read_text())["final_return"] is None
    binned = adapter.eval_from_scores(adapter.read_jsonl_text(scores), every=400)
    assert binned["return_mean"].tolist() == [4.0] and binned["episodes"].tolist() == [1]
    assert collect.read_done(run) == {"env_steps": 0.0, "wall_clock_s": 1.0, "reason": "wall_clock"}


def test_write_done_rejects_bad_reason(tmp_path):
    with pytest.raises(ValueError, match="'finished'"):
        adapter.write_done(tmp_path, pd.DataFrame(columns=adapter.EVAL_COLUMNS), 0, 0.0, "finished")


# ---------------------------------------------------------------- adapter on DreamerV3's own training script
def test_eval_from_scores_bins_training_episodes():
    records = adapter.read_jsonl_text(LAUNCHER_SCORES)
    table = adapter.eval_from_scores(records, every=400)
    # hand-binned: (0, 400] -> steps 394..400, (400, 800] -> 794..800, (1200, 1600] -> 1466..1472
    bins = {400: [7.638273751363158, 4.431337877875194, 4.475665785372257, 5.047603767365217],
            800: [24.118761502206326, 6.037542176432908, 4.72621164098382, 8.104205621406436],
            1600: [4.218253368511796, 7.123421434313059, 5.346528712660074, 3.995921980589628]}
    assert table["env_step"].tolist() == list(bins)
    for step, values in bins.items():
        row = table.set_index("env_step").loc[step]
        assert row["return_mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert row["return_std"] == pytest.approx(float(np.std(values)), rel=1e-12)
        assert row["episodes"] == 4
    assert table["wall_clock_s"].isna().all()
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        adapter.eval_from_scores(records, every=0)


def test_convert_own_training_script_logs(tmp_path):
    logdir = write_logdir(tmp_path / "logdir", OWN_METRICS, OWN_SCORES)
    run = tmp_path / "run"
    assert adapter.main([str(logdir), "--out", str(run), "--task", "walker-walk", "--obs", "pixels", "--seed", "3",
                         "--action-repeat", "2", "--scores-every", "500", "--done", "env_steps"]) == 0
    evals = pd.read_csv(run / "eval.csv")
    assert evals.to_dict("records")[0]["env_step"] == 500 and evals["return_mean"].tolist() == [100.0]
    assert evals["episodes"].tolist() == [4]
    train = pd.read_csv(run / "train.csv")
    assert train["env_step"].tolist() == [396, 408]
    # DreamerV3's fps/policy counts agent steps: x action repeat = env steps per second
    assert train["fps"].tolist() == pytest.approx([2.2480496139426145 * 2, 3.4392875270494216 * 2])
    assert train["loss_image"].tolist() == pytest.approx([3833.259033203125, 3832.068115234375])
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "dreamerv3" and config["seed"] == 3
    assert "training-episode scores" in config["eval_source"]
    assert json.loads((run / "DONE").read_text())["env_steps"] == 408


# ---------------------------------------------------------------- published scores
def shared_file(name: str) -> Path:
    path = SHARED_SCORES / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared copy of DreamerV3's score files)")
    return path


def test_load_published_dmc_vision():
    path = shared_file("dmc_vision-dreamerv3.json.gz")
    runs = json.loads(gzip.decompress(path.read_bytes()))
    rows = published.load_published(path)
    assert list(rows.columns) == collect.SCORE_COLUMNS
    assert len(rows) == sum(len(r["xs"]) for r in runs)
    assert set(rows["source"]) == {"published"} and set(rows["method"]) == {"dreamerv3"}
    assert set(rows["obs"]) == {"pixels"} and rows["context_length"].isna().all() and rows["complete"].all()
    assert "ball_in_cup-catch" in set(rows["task"]) and "cartpole-swingup_sparse" in set(rows["task"])
    assert len(set(rows["task"])) == len({r["task"] for r in runs}) == 20
    one = next(r for r in runs if r["task"] == "dmc_walker_walk" and r["seed"] == 3)
    mine = rows[(rows["task"] == "walker-walk") & (rows["seed"] == 3)]
    assert mine["env_step"].tolist() == one["xs"]
    assert mine["return"].tolist() == one["ys"]
    np.testing.assert_allclose(mine["score"], np.asarray(one["ys"]) / 1000)


def test_published_dmc_proprio_is_overlaid_on_state_panels_only():
    """DreamerV3's dmc_proprio (clean state vectors) enter the `state` experiment as '(published)' rows on its
    evaluation grid, and never a `noisy_state` one (the local reference copy in ../shared)."""
    from analysis import estimates, plan

    path = shared_file("dmc_proprio-dreamerv3.json.gz")
    runs = [r for r in json.loads(gzip.decompress(path.read_bytes())) if r["task"] == "dmc_cartpole_swingup"]
    published, status = collect.load_published([path], tasks=["cartpole-swingup"], bin_every=10000)
    rows = collect.check_published(published)
    assert list(status["status"]) == ["loaded"]
    assert set(rows["obs"]) == {"state"} and rows["seed"].nunique() == len(runs) >= 3
    cfg = {"seeds": [0], "main_context_length": 32, "experiments": {
        "state": {"obs": "state", "tasks": ["cartpole-swingup"], "methods": ["sac"], "context_lengths": [32]},
        "noisy_state": {"obs": "noisy_state", "tasks": ["cartpole-swingup"], "methods": ["sac"],
                        "context_lengths": [32]}}}
    ours = pd.DataFrame({"source": "run", "method": "sac", "obs": ["state", "noisy_state"], "task": "cartpole-swingup",
                         "context_length": 32, "seed": 0, "env_step": 10000, "wall_clock_s": 1.0, "return": 100.0,
                         "score": 0.1, "complete": True})
    scores = collect.with_published(ours, rows)
    exps = {e.name: e for e in plan.experiments_from_config(cfg)}
    state = estimates.experiment_rows(scores, exps["state"])
    pub = state[state["source"] == "published"]
    assert set(pub["method"]) == {"dreamerv3" + plan.PUBLISHED_SUFFIX} and len(pub) == len(rows)
    one = runs[0]
    first = np.asarray(one["ys"])[np.asarray(one["xs"]) <= 10000].mean()   # the bin (0, 10k]
    got = pub[(pub["seed"] == one["seed"]) & (pub["env_step"] == 10000)]["return"]
    assert got.tolist() == [pytest.approx(first, rel=1e-12)]
    noisy = estimates.experiment_rows(scores, exps["noisy_state"])
    assert set(noisy["source"]) == {"run"}


def test_load_published_filters_bins_and_urls():
    path = shared_file("dmc_proprio-dreamerv3.json.gz")
    runs = json.loads(gzip.decompress(path.read_bytes()))
    rows = published.load_published(path.as_uri(), tasks=["walker-walk"], bin_every=20000)
    assert set(rows["obs"]) == {"state"} and set(rows["task"]) == {"walker-walk"}
    one = next(r for r in runs if r["task"] == "dmc_walker_walk" and r["seed"] == 1)
    xs, ys = np.asarray(one["xs"]), np.asarray(one["ys"])
    mine = rows[rows["seed"] == 1].set_index("env_step")["return"]
    for end in (20000, 40000, 480000):  # bin (end - 20000, end]: xs step by 10000, two points per bin
        inside = (xs > end - 20000) & (xs <= end)
        assert inside.sum() == 2
        assert mine.loc[end] == pytest.approx(ys[inside].mean(), rel=1e-12)
    assert mine.index.max() == 500000 and mine.loc[500000] == pytest.approx(ys[xs > 480000].mean())
    assert published.load_published(path, methods=["sac"]).empty


def test_published_rows_join_the_scores_table(tmp_path):
    rows = published.load_published(shared_file("dmc_vision-dreamerv3.json.gz"), tasks=["cartpole-swingup"])
    run_rows = pd.DataFrame([{"source": "run", "method": "dreamerv3", "obs": "pixels", "task": "cartpole-swingup",
                              "context_length": 32, "seed": 0, "env_step": 1000, "wall_clock_s": 5.0,
                              "return": 100.0, "score": 0.1, "complete": True}])
    table = collect.tidy_scores(pd.concat([run_rows, rows], ignore_index=True))
    assert table.groupby("source").size().to_dict() == {"published": len(rows), "run": 1}
    path = tmp_path / "scores.csv"
    table.to_csv(path, index=False)
    back = collect.read_scores(path)
    assert back["context_length"].isna().sum() == len(rows)


def test_published_bad_input(tmp_path):
    bad = tmp_path / "dmc_vision-x.json.gz"
    bad.write_bytes(gzip.compress(b'[{"task": "dmc_walker_walk", "method": "x", "seed": 0, "xs": [1, 2], "ys": [1]}]'))
    with pytest.raises(ValueError, match="2 xs but 1 ys"):
        published.load_published(bad)
    bad.write_bytes(gzip.compress(b'{"task": 1}'))
    with pytest.raises(ValueError, match="JSON list of runs"):
        published.load_published(bad)
    other = tmp_path / "atari57-dreamerv3.json.gz"
    other.write_bytes(gzip.compress(b"[]"))
    with pytest.raises(ValueError, match="'atari57'"):
        published.load_published(other)
    with pytest.raises(FileNotFoundError):
        published.load_published(tmp_path / "dmc_vision-none.json.gz")
    with pytest.raises(ValueError, match="bin_every must be >= 1"):
        published.bin_points(np.array([1.0]), np.array([1.0]), 0)


def test_published_cli_checks_the_pinned_sha256(tmp_path):
    source = shared_file("dmc_vision-sac.json.gz")
    out = tmp_path / "published" / "dmc_vision-sac.json.gz"
    assert published.main([str(source), "--out", str(out)]) == 0
    assert out.read_bytes() == source.read_bytes()
    with pytest.raises(ValueError, match="refusing a changed score file"):
        published.main([str(source), "--out", str(tmp_path / "dmc_vision-dreamerv3.json.gz")])
    assert published.pinned_url("dmc_vision-dreamerv3.json.gz") == (
        "https://raw.githubusercontent.com/danijar/dreamerv3/e3f02248693a79dc8b0ebd62c93683888ddaccfe/scores/"
        "dmc_vision-dreamerv3.json.gz")


# ---------------------------------------------------------------- tasks, seeds
def test_task_names_both_ways():
    assert tasks.from_dreamer_task("dmc_walker_walk") == "walker-walk"
    assert tasks.from_dreamer_task("dmc_ball_in_cup_catch") == "ball_in_cup-catch"
    assert tasks.from_dreamer_task("dmc_cup_catch") == "ball_in_cup-catch"
    assert tasks.from_dreamer_task("dmc_point_mass_easy") == "point_mass-easy"
    assert tasks.from_dreamer_task("dmc_finger_turn_hard") == "finger-turn_hard"
    assert tasks.to_dreamer_env_task("ball_in_cup-catch") == "dmc_cup_catch"
    assert tasks.to_dreamer_env_task("cartpole-swingup_sparse") == "dmc_cartpole_swingup_sparse"
    with pytest.raises(ValueError, match="'atari_pong'"):
        tasks.from_dreamer_task("atari_pong")
    with pytest.raises(ValueError, match="point_mass"):
        tasks.to_dreamer_env_task("point_mass-easy")


def test_eval_episode_seeds_match_rl_train():
    """Evaluation episode i of evaluation e has the seed rl/train.py gives it: all methods see the same episodes."""
    from rl.run_contract import EVAL_STREAM, episode_seed

    for seed, number, i in [(0, 0, 0), (3, 7, 19), (11, 2, 5)]:
        assert tasks.episode_seed(seed, "eval", number, i) == episode_seed(seed, EVAL_STREAM, number, i)
    seeds = {tasks.episode_seed(0, mode, env, ep) for mode in ("train", "eval") for env in range(3) for ep in range(5)}
    assert len(seeds) == 30
    with pytest.raises(ValueError, match="'test'"):
        tasks.episode_seed(0, "test", 0, 0)


def test_eval_env_count_divides_episodes():
    assert tasks.eval_env_count(20, 4) == 4
    assert tasks.eval_env_count(10, 4) == 2
    assert tasks.eval_env_count(7, 4) == 1
    assert tasks.eval_env_count(3, 16) == 3


# ---------------------------------------------------------------- launcher CLI (without DreamerV3)
BASE_ARGS = ["--task", "walker-walk", "--obs", "pixels", "--seed", "1", "--env-steps", "1000", "--eval-every",
             "500", "--eval-episodes", "4"]


def test_launcher_arguments(tmp_path):
    a = launch.parse_args(BASE_ARGS + ["--out", str(tmp_path), "--", "--run.envs", "4", "--batch_size", "8"])
    assert a.configs == ["dmc_vision"] and a.dreamerv3_flags == ["--run.envs", "4", "--batch_size", "8"]
    assert a.checkpoint_every == 500 and a.obs_noise_std == 0.3 and a.episode_length == 1000
    b = launch.parse_args(BASE_ARGS[:3] + ["noisy_state"] + BASE_ARGS[4:] + ["--out", str(tmp_path)])
    assert b.configs == ["dmc_proprio"] and b.dreamerv3_flags == []
    for bad in (["--env-steps", "0"], ["--task", "walker-fly"], ["--device", "opencl"], ["--obs-noise-std", "-1"]):
        with pytest.raises(SystemExit) as e:
            launch.parse_args(BASE_ARGS + ["--out", str(tmp_path)] + bad)
        assert e.value.code == 2


def test_launcher_without_dreamerv3(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(dv3pkg.SRC_ENV_VAR, str(tmp_path))  # not a checkout
    assert launch.main(BASE_ARGS + ["--out", str(tmp_path / "run")]) == 2
    assert "is not a DreamerV3 checkout" in capsys.readouterr().err
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "DONE").write_text('{"final_return": 1.0}')
    assert launch.main(BASE_ARGS + ["--out", str(tmp_path / "done")]) == 0  # never imports DreamerV3


def test_restart_must_hold_the_same_run(tmp_path):
    dv3 = {"repo": dv3pkg.REPO_URL, "pinned_commit": dv3pkg.PINNED_COMMIT, "commit": dv3pkg.PINNED_COMMIT,
           "configs": ["dmc_proprio"], "flags": [],
           "config": {"task": "kalbench_walker-walk", "logdir": "a/dreamerv3", "jax": {"platform": "cuda"},
                      "run": {"train_ratio": 1024.0}}}
    config = {"method": "dreamerv3", "task": "walker-walk", "env_steps": 1000, "device": "auto", "dreamerv3": dv3}
    adapter.write_config(tmp_path, config, {})
    # where it runs and the logdir's spelling may change
    moved = {**config, "device": "cpu", "dreamerv3": {**dv3, "config": {**dv3["config"], "logdir": "/abs/a/dreamerv3",
                                                                        "jax": {"platform": "cpu"}}}}
    launch.check_restart(tmp_path, moved)
    with pytest.raises(launch.ConfigMismatch, match="env_steps: 1000 there, 2000 now"):
        launch.check_restart(tmp_path, {**config, "env_steps": 2000})
    ratio = {**dv3, "config": {**dv3["config"], "run": {"train_ratio": 512.0}}}
    with pytest.raises(launch.ConfigMismatch, match="dreamerv3.config.run.train_ratio: 1024.0 there, 512.0 now"):
        launch.check_restart(tmp_path, {**config, "dreamerv3": ratio})
    with pytest.raises(launch.ConfigMismatch, match="dreamerv3.commit"):
        launch.check_restart(tmp_path, {**config, "dreamerv3": {**dv3, "commit": "0" * 40}})


def test_source_commit_without_git_binary(tmp_path, monkeypatch):
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(dv3pkg.PINNED_COMMIT + "\n")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert dv3pkg.source_commit(tmp_path) == dv3pkg.PINNED_COMMIT
    (git / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert dv3pkg.source_commit(tmp_path) == "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------- container, conda env: one pinned commit
def test_container_definition_pins_the_commit():
    from spython.main.parse.parsers import SingularityParser

    stages = SingularityParser(str(REPO / "containers" / "dreamerv3.def")).recipe
    assert len(stages) == 1
    recipe = next(iter(stages.values()))
    assert recipe.fromHeader == "python:3.11-slim-bookworm"
    post = "\n".join(recipe.install)
    assert f"DREAMERV3_COMMIT={dv3pkg.PINNED_COMMIT}" in post
    assert 'fetch -q --depth 1 origin "$DREAMERV3_COMMIT"' in post
    assert 'test "$(git -C /opt/dreamerv3 rev-parse HEAD)" = "$DREAMERV3_COMMIT"' in post
    assert "-r /opt/dreamerv3/requirements.txt" in post  # DreamerV3's own requirements (its jax[cuda12] pin)
    environ = "\n".join(recipe.environ)
    assert f"{dv3pkg.SRC_ENV_VAR}=/opt/dreamerv3" in environ
    assert f"org.kalbench.dreamerv3.commit {dv3pkg.PINNED_COMMIT}" in recipe.labels
    # the library pins of the container are those of the conda env
    def_pins = {line.strip() for line in post.splitlines() if "==" in line and " " not in line.strip()}
    env = yaml.safe_load((REPO / "workflow" / "envs" / "dreamerv3.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {p.split("#")[0].strip() for p in pip}
    assert def_pins == {"elements==3.22.0", "granular==0.23.0", "ninjax==3.6.3", "portal==3.8.1", "scope==0.6.3"}
    assert def_pins <= conda_pins
    for pin in ("dm-control==1.0.50", "mujoco==3.17.0"):  # our tasks' simulator, as in pyproject.toml
        assert f'"{pin}"' in post and pin in conda_pins
    deploy = (REPO / "workflow" / "envs" / "dreamerv3.post-deploy.sh").read_text()
    assert f"commit={dv3pkg.PINNED_COMMIT}" in deploy and "/".join(dv3pkg.PREFIX_SUBDIR) in deploy
    assert published.PINNED_COMMIT == dv3pkg.PINNED_COMMIT


# ---------------------------------------------------------------- Snakemake: the rules' shell commands
DV3_SCHEMA = {
    "type": "object", "additionalProperties": False, "properties": {
        "configs": {"type": "object", "additionalProperties": False, "properties": {
            "pixels": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "noisy_state": {"type": "array", "minItems": 1, "items": {"type": "string"}}}},
        "flags": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
        "container": {"type": "string", "default": "containers/dreamerv3.sif"},
        "published": {"type": "object", "additionalProperties": False, "properties": {
            "files": {"type": "array", "uniqueItems": True,
                      "items": {"type": "string", "pattern": r"^[a-z0-9_]+-[A-Za-z0-9_.]+\.json\.gz$"}},
            "local_dir": {"type": ["string", "null"]}}}}}


def snakemake_workdir(tmp_path: Path) -> Path:
    """The workflow in a scratch directory (code linked, config/ copied), so the dry run leaves the repo alone.
    Where config/schema.yaml does not know the `dreamerv3` section yet, the copy gets DV3_SCHEMA (the report's
    proposed addition)."""
    work = tmp_path / "wf"
    work.mkdir()
    for name in ("Snakefile", "workflow", "analysis", "integrations", "rl", "models"):
        (work / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", work / "config")
    schema = yaml.safe_load((work / "config" / "schema.yaml").read_text())
    if "dreamerv3" not in schema["properties"]:
        schema["properties"]["dreamerv3"] = DV3_SCHEMA
        schema["properties"]["resources"]["properties"]["dreamerv3"] = {"$ref": "#/$defs/job_resources"}
        (work / "config" / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    return work


def test_snakemake_dry_run_renders_the_commands(tmp_path):
    snakemake = Path(sys.executable).with_name("snakemake")
    if not snakemake.exists():
        pytest.skip("snakemake is not installed next to this Python")
    work = snakemake_workdir(tmp_path)
    study = {"study": "dv3test", "seeds": [0], "main_context_length": 16,
             "experiments": {"pixels": {"obs": "pixels", "tasks": ["cartpole-swingup"],
                                        "methods": ["dreamerv3", "rssm"], "context_lengths": [16]},
                             "noisy_state": {"obs": "noisy_state", "tasks": ["walker-walk"],
                                             "methods": ["dreamerv3"], "context_lengths": [16]}},
             "train": {"env_steps": 3000, "wall_clock_hours": 0.25, "eval_every": 1000, "eval_episodes": 2,
                       "checkpoint_every": 1000},
             "dreamerv3": {"configs": {"noisy_state": ["dmc_proprio", "debug"]},
                           "flags": ["--run.envs", 4, "--jax.compute_dtype", "float32"],
                           "published": {"local_dir": str(tmp_path / "copies")}},
             "analysis": {"bootstrap_reps": 10, "seed": 0},
             "resources": {"train": {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 60},
                           "bench": {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30},
                           "dreamerv3": {"cpus_per_task": 2, "mem_mb": 8000, "runtime": 120}}}
    (work / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (tmp_path / "copies").mkdir()
    (tmp_path / "copies" / "dmc_vision-dreamerv3.json.gz").write_bytes(gzip.compress(b"[]"))
    runs = "results/dv3test/runs"
    targets = [f"{runs}/noisy_state/walker-walk/dreamerv3/ctx16/seed0/DONE",
               f"{runs}/pixels/cartpole-swingup/dreamerv3/ctx16/seed0/DONE",
               f"{runs}/pixels/cartpole-swingup/rssm/ctx16/seed0/DONE",
               "results/dv3test/published/dmc_vision-dreamerv3.json.gz"]
    out = subprocess.run([str(snakemake), *targets, "-n", "-p", "--cores", "4", "--configfile", "study.yaml"],
                         cwd=work, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.removeprefix("Shell command: ") for line in (out.stdout + out.stderr).splitlines()
             if "python -m" in line]
    noisy = next(line for line in lines if "integrations.dreamerv3.launch --task walker-walk" in line)
    prefix, _, command = noisy.partition("python -m ")
    run_dir = f"{runs}/noisy_state/walker-walk/dreamerv3/ctx16/seed0"
    assert "export OMP_NUM_THREADS=2;" in prefix and "MUJOCO_GL" not in prefix, prefix   # rl/render.py chooses
    assert prefix.endswith(f"/workflow/scripts/exclusive.sh {run_dir} {work}/workflow/scripts/with-free-gpu.sh 1 "), \
        prefix   # absolute script paths (--directory works), one writer per run directory
    assert "python -m " + command == (
        "python -m integrations.dreamerv3.launch"
        " --task walker-walk --obs noisy_state --context-length 16 --seed 0"
        f" --out {runs}/noisy_state/walker-walk/dreamerv3/ctx16/seed0 --env-steps 3000 --wall-clock-hours 0.25"
        " --eval-every 1000 --eval-episodes 2 --checkpoint-every 1000 --configs dmc_proprio debug"
        " -- --run.envs 4 --jax.compute_dtype float32"
        " > results/dv3test/logs/runs/noisy_state/walker-walk/dreamerv3/ctx16/seed0.log 2>&1")
    pixels = next(line for line in lines if "integrations.dreamerv3.launch --task cartpole-swingup" in line)
    assert "--obs pixels" in pixels and "--configs" not in pixels  # the launcher's default: dmc_vision
    assert any("python -m rl.train --method rssm" in line for line in lines)  # other methods: their own rule
    assert not any("rl.train --method dreamerv3" in line for line in lines)
    pub = next(line for line in lines if "analysis.published" in line)
    prefix, _, command = pub.partition("python -m analysis.published ")
    assert "export PYTHONPATH=" in prefix, prefix   # the jobs' environment: kalbench importable, its Python first
    assert command.startswith(f"{tmp_path / 'copies' / 'dmc_vision-dreamerv3.json.gz'}"
                              " --out results/dv3test/published/dmc_vision-dreamerv3.json.gz")


# ---------------------------------------------------------------- DreamerV3 itself (its own environment)
@pytest.mark.slow
def test_launcher_end_to_end_with_dreamerv3(tmp_path):
    python, src = os.environ.get("KALBENCH_DREAMERV3_PYTHON"), os.environ.get(dv3pkg.SRC_ENV_VAR)
    if not python or not src:
        pytest.skip(f"set KALBENCH_DREAMERV3_PYTHON (a Python with DreamerV3's requirements) and "
                    f"{dv3pkg.SRC_ENV_VAR} (its checkout) to run DreamerV3 itself")
    run = tmp_path / "run"
    cmd = [python, "-m", "integrations.dreamerv3.launch", "--task", "walker-walk", "--obs", "noisy_state", "--seed",
           "0", "--env-steps", "400", "--eval-every", "200", "--eval-episodes", "2", "--episode-length", "100",
           "--context-length", "32", "--device", "cpu", "--out", str(run), "--configs", "dmc_proprio", "debug"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    evals = pd.read_csv(run / "eval.csv")
    assert evals["env_step"].tolist() == [200, 400] and (evals["episodes"] == 2).all()
    assert evals["return_mean"].between(0, 100).all()  # 100 simulator steps, reward <= 1 each
    done = json.loads((run / "DONE").read_text())
    assert done["env_steps"] == 400 and done["reason"] == "env_steps"
    config = json.loads((run / "config.json").read_text())
    assert config["dreamerv3"]["commit"] == dv3pkg.PINNED_COMMIT and config["action_repeat"] == 2
    assert config["dreamerv3"]["config"]["task"] == "kalbench_walker-walk"
    # a second call finds DONE and does nothing
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
