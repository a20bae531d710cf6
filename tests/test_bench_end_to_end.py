"""benchmarks/end_to_end.py: whole rl.train runs with a study's settings, timed side by side."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import end_to_end as bench

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "config" / "smoke.yaml")


def cartpole_study(tmp_path: Path) -> str:
    """The smoke study's settings with one cheap experiment: noisy cartpole states (125 agent steps an episode)."""
    study = bench.study_config(SMOKE)
    study["experiments"] = {"cart": {"obs": "noisy_state", "tasks": ["cartpole-swingup"],
                                     "methods": ["sac", "kalmamba"], "context_lengths": [16]}}
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))
    return str(path)


def test_each_method_is_one_whole_run_with_the_study_s_settings(tmp_path):
    """Two short runs (2 cartpole episodes: the first random, the second with updates) two at a time: each row is
    a finished run whose numbers are its DONE, train.csv and process; the command carries the study's sizes."""
    out, work = tmp_path / "e2e.json", tmp_path / "runs"
    assert bench.main(["--config", cartpole_study(tmp_path), "--env-steps", "2000", "--parallel", "2",
                       "--workdir", str(work), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["results"]] == ["sac", "kalmamba"]
    for row in data["results"]:
        run = work / row["method"]
        done = json.loads((run / "DONE").read_text())
        assert row["status"] == "ok" and row["env_steps"] == done["env_steps"] == 2000
        assert row["run_wall_s"] == done["wall_clock_s"] and row["final_return"] == done["final_return"]
        assert row["updates"] == pd.read_csv(run / "train.csv")["updates"].iloc[-1] > 0   # logged at 2000 too
        assert row["wall_s"] > row["run_wall_s"] > 0 and row["cpu_s"] > 0
    command = data["config"]["commands"]["kalmamba"]
    assert command[command.index("--model.d_model") + 1] == "32"          # smoke.yaml: model.kalmamba.d_model
    assert command[command.index("--sac.hidden_dim") + 1] == "64"
    assert command[command.index("--env-steps") + 1] == "2000"            # the override, not smoke's 3000
    assert data["config"]["task"] == "cartpole-swingup" and data["config"]["experiment"] == "cart"
    ratio = data["summary"]["wall_ratio"]["sac"]
    assert ratio == pytest.approx(data["results"][1]["wall_s"] / data["results"][0]["wall_s"])
    assert data["summary"]["target_applies"] is False and "target_met" in data["summary"]
    assert data["machine"]["cpu_count"] >= 1 and data["config"]["repo"] == str(ROOT)
    assert data["config"]["torch_threads_per_run"] is None   # the smoke study leaves torch's default
    assert len(data["config"]["commit"]["git_commit"]) == 40


def test_a_failed_run_is_reported_and_exits_1(tmp_path, capsys):
    """A run that fails (here: --repo is a checkout whose rl.train exits 3 after a message) is a failed row naming
    its log, never a number; the benchmark exits 1 and keeps the log."""
    fake = tmp_path / "checkout"
    (fake / "rl").mkdir(parents=True)
    (fake / "rl" / "__init__.py").write_text("")
    (fake / "rl" / "train.py").write_text("import sys\nprint('error: the simulator is on fire')\nsys.exit(3)\n")
    out, work = tmp_path / "e2e.json", tmp_path / "runs"
    assert bench.main(["--config", cartpole_study(tmp_path), "--methods", "sac", "--env-steps", "1000",
                       "--repo", str(fake), "--workdir", str(work), "--out", str(out)]) == 1
    row = json.loads(out.read_text())["results"][0]
    assert row["status"] == (f"failed: exit 3 (error: the simulator is on fire); log {work / 'sac.log'}")
    assert row["run_wall_s"] is None and row["final_return"] is None and row["updates"] is None
    assert "sac" in capsys.readouterr().out


def test_a_budget_without_updates_is_flagged(tmp_path, capsys):
    """1000 env steps of cartpole are the first random-policy episode: the run is timed, and the table says that
    no update happened, so the time is not a training time."""
    out = tmp_path / "e2e.json"
    assert bench.main(["--config", cartpole_study(tmp_path), "--methods", "sac", "--env-steps", "1000",
                       "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["updates"] == 0
    assert "note: no gradient update in sac" in capsys.readouterr().out


def test_a_run_setting_the_run_cli_refuses_stops_before_any_run(tmp_path, capsys):
    study = bench.study_config(SMOKE)
    study["train"]["wall_clock_hours"] = -1
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps(study))
    work = tmp_path / "runs"
    assert bench.main(["--config", str(config), "--methods", "sac", "--workdir", str(work),
                       "--out", str(tmp_path / "e2e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the sac run cannot start: " in err and "wall_clock_hours" in err
    assert not work.exists() and not (tmp_path / "e2e.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--config", "nowhere.yaml"], "--config nowhere.yaml"),
    (["--config", SMOKE, "--experiment", "images"], "--experiment 'images': not in"),
    (["--config", SMOKE, "--experiment", "noisy_state", "--task", "cartpole-swingup"], "--task 'cartpole-swingup'"),
    (["--config", SMOKE, "--methods", "kalmanba"], "--methods: 'kalmanba' is not a method rl.train trains"),
    (["--config", SMOKE, "--methods", "sac", "sac"], "named twice"),
    (["--config", SMOKE, "--env-steps", "0"], "--env-steps must be >= 1, got 0"),
    (["--config", SMOKE, "--parallel", "0"], "--parallel must be >= 1, got 0"),
    (["--config", SMOKE, "--repo", "/nowhere"], "--repo '/nowhere': not a kalbench checkout"),
    (["--config", SMOKE, "--out", "/proc/nope/e2e.json"], "--out '/proc/nope/e2e.json': cannot create its folder"),
])
def test_bad_arguments_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_existing_run_directory_is_refused(tmp_path, capsys):
    (tmp_path / "sac").mkdir()
    assert bench.main(["--config", SMOKE, "--methods", "sac", "--workdir", str(tmp_path),
                       "--out", str(tmp_path / "e2e.json")]) == 2
    assert f"run directory {tmp_path / 'sac'} exists" in capsys.readouterr().err
    assert not (tmp_path / "e2e.json").exists()
