"""rl/window_eval.py (lead D7): a window as long as the episode reproduces online acting; a short one changes the
features; bad input is a one-line error with exit 2."""
import json

import pytest

from rl import window_eval
from rl.train import main as train_main
from tests.test_train import argv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("window") / "run"
    # noisy walker-walk, 20-step episodes at action repeat 2: 10 agent steps per episode
    assert train_main(argv("kalmamba", "noisy_state", out)) == 0
    return out


def test_long_window_is_online_short_window_is_not(run, tmp_path):
    rows = window_eval.evaluate(run, windows=[10, 1], episodes=2)
    online, full, one = rows
    assert [r["mode"] for r in rows] == ["online", "window 10", "window 1"]
    # filtering the whole episode in parallel from the start = the step-by-step belief (eval mode, same episodes)
    assert full["feature_rel_diff"] < 1e-5
    assert full["return_mean"] == pytest.approx(online["return_mean"], rel=1e-4, abs=1e-4)
    # a one-step window forgets the history: its features differ
    assert one["feature_rel_diff"] > 1e-3
    assert online["feature_rel_diff"] == 0.0 and online["episodes"] == 2


def test_cli_writes_json_and_refuses_bad_input(run, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert window_eval.main([str(run), "--windows", "3", "--episodes", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["online", "window 3"]
    assert window_eval.main([str(run), "--windows", "0"]) == 2
    assert "got 0" in capsys.readouterr().err
    missing = tmp_path / "nothing"
    assert window_eval.main([str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1


def test_policy_acts_on_the_window_features(run):
    trainer = window_eval.load_trainer(run, "cpu")
    seen = []
    act = trainer.agent.sac.act
    trainer.agent.sac.act = lambda feat, deterministic: seen.append(feat.clone()) or act(feat, deterministic)
    window_eval.play(trainer, seed=3, window=None)
    online_seen, seen[:] = list(seen), []
    _, diffs = window_eval.play(trainer, seed=3, window=1)
    # same first step (a one-step window from the prior = the online belief at t = 0), different afterwards
    assert len(seen) == len(online_seen) == len(diffs) and len(seen) > 2
    assert (seen[0] - online_seen[0]).abs().max() < 1e-5
    assert (seen[1] - online_seen[1]).abs().max() > 1e-4
    trainer.close()
