"""rl/window_eval.py (lead D7): a window as long as the episode reproduces online acting; a short one changes the
features the policy acts on; the CLI."""
import json

import pytest

from rl import recheck, window_eval
from rl.train import main as train_main
from tests.test_train import argv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("window") / "run"
    # noisy walker-walk, 20-step episodes at action repeat 2: 10 agent steps per episode
    assert train_main(argv("kalmamba", "noisy_state", out)) == 0
    return out


def test_long_window_is_online_short_window_is_not(run):
    rows = window_eval.evaluate(run, recheck.read_run_config(run), windows=[10, 1], episodes=2)
    online, full, one = rows
    assert [r["mode"] for r in rows] == ["online", "window 10", "window 1"]
    # filtering the whole episode in parallel from the start = the step-by-step belief (eval mode, same episodes)
    assert full["feature_rel_diff"] < 1e-5
    assert full["return_mean"] == pytest.approx(online["return_mean"], rel=1e-4, abs=1e-4)
    # a one-step window forgets the history: its features differ
    assert one["feature_rel_diff"] > 1e-3
    assert online["feature_rel_diff"] is None and online["episodes"] == 2


def test_policy_acts_on_the_window_features(run):
    trainer = recheck.load_trainer(run, recheck.read_run_config(run), "cpu")
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


def test_cli_writes_json_and_refuses_bad_input(run, tmp_path, capsys):
    out = tmp_path / "rows.json"
    # the same run twice and a repeated window are evaluated once
    assert window_eval.main([str(run), f"{run}/", "--windows", "3", "3", "--episodes", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["online", "window 3"]
    for flags, named in ((["--windows", "2", "0"], "--windows must be >= 1, got 0"),
                         (["--episodes", "0"], "--episodes must be >= 1, got 0")):
        assert window_eval.main([str(run), *flags]) == 2
        assert named in capsys.readouterr().err
    missing = tmp_path / "nothing"
    # a bad run anywhere in the list is refused before any evaluation: nothing printed, no JSON
    assert window_eval.main([str(run), str(missing), "--json", str(tmp_path / "x.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (tmp_path / "x.json").exists()
    err = captured.err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1
