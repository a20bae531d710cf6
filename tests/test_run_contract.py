"""rl/run_contract.py: the episode seeds (pinned to the values every earlier run used), the provenance block that
both runners write, and that it and the DreamerV3 adapter import without torch."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl import run_contract
from rl.run_contract import EVAL_STREAM, TRAIN_STREAM, episode_seed

ROOT = Path(__file__).resolve().parent.parent


def test_imports_without_torch():
    """The DreamerV3 side runs in DreamerV3's environment: importing it must not need torch."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import rl.run_contract, integrations.dreamerv3.adapter, integrations.dreamerv3.tasks\n"
            "assert integrations.dreamerv3.adapter.EVAL_COLUMNS is rl.run_contract.EVAL_COLUMNS\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    # and the check itself can fail: with torch blocked, a module that needs it does not import
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import rl.rundir"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert blocked.returncode != 0 and "torch" in blocked.stderr


def test_episode_seeds_are_the_ones_earlier_runs_used():
    """Values of rl/train.py's and the DreamerV3 tasks' seed functions before they moved here (commit 0a92121)."""
    assert episode_seed(0, TRAIN_STREAM, 0) == 2968811710
    assert episode_seed(7, TRAIN_STREAM, 12) == 2028343703
    assert episode_seed(3, EVAL_STREAM, 2, 4) == 2161042254
    assert episode_seed(2**31 - 1, EVAL_STREAM, 0, 0) == 2994186132
    assert episode_seed(5, TRAIN_STREAM, 2, 1000003) == 3710338687     # DreamerV3: env 2, restart 1, episode 3


def test_dreamerv3_seeds_use_the_same_rule():
    from integrations.dreamerv3 import tasks

    for seed, number, i in [(0, 0, 0), (3, 7, 19), (11, 2, 5)]:
        assert tasks.episode_seed(seed, "eval", number, i) == episode_seed(seed, EVAL_STREAM, number, i)
        assert tasks.episode_seed(seed, "train", number, i) == episode_seed(seed, TRAIN_STREAM, number, i)


def test_episode_seeds_are_distinct_and_reject_negative_words():
    seeds = {episode_seed(s, TRAIN_STREAM, k) for s in range(3) for k in range(50)}
    seeds |= {episode_seed(s, EVAL_STREAM, n, i) for s in range(3) for n in range(5) for i in range(10)}
    assert len(seeds) == 3 * 50 + 3 * 5 * 10 and all(0 <= x < 2**32 for x in seeds)
    with pytest.raises(ValueError, match=r"\[0, 0, -1\]"):
        episode_seed(0, TRAIN_STREAM, -1)


def test_provenance_block(tmp_path):
    prov = run_contract.provenance(4, "cpu (test)", {"numpy": "1.0"})
    assert set(prov) == {"git_commit", "git_dirty", "packages", "device", "hostname", "start_time", "seed"}
    assert prov["seed"] == 4 and prov["device"] == "cpu (test)"
    assert list(prov["packages"]) == ["python", "numpy"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prov["start_time"])
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"]) and isinstance(prov["git_dirty"], bool)
    assert run_contract.git_commit(tmp_path) == {"git_commit": None, "git_dirty": None}   # not a checkout


def test_both_runners_write_the_same_provenance_keys():
    import torch

    from integrations.dreamerv3 import adapter
    from rl import rundir

    ours = rundir.provenance(torch.device("cpu"), 1)
    theirs = adapter.provenance(1, "jax:cpu", {"jax": "0.4"})
    assert set(ours) == set(theirs) and set(ours["packages"]) >= {"python", "torch", "numpy"}
