"""rl/recheck.py: what the re-check tools refuse before any work, each in one line naming the run or flag."""
import json
import re
import shutil

import pytest
import torch

from rl import recheck
from rl.train import main as train_main
from tests.test_train import argv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recheck") / "run"
    assert train_main(argv("vrkn", "noisy_state", out)) == 0
    return out


def copy(run, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def test_a_finished_run_passes_and_loads(run):
    (checked,) = recheck.prepare([run, run], None, pixels_ok=False)
    trainer = recheck.load_trainer(*checked, "cpu")
    assert trainer.cfg.method == "vrkn"
    trainer.close()


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "DONE").unlink(), "not finished (no DONE)"),
    (lambda d: (d / "checkpoint.pt").unlink(), "no checkpoint"),
    (lambda d: (d / "config.json").unlink(), "no config.json"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda d: (d / "config.json").write_text("{oops"), "config.json: unreadable"),
])
def test_not_a_finished_run(run, tmp_path, damage, message):
    bad = copy(run, tmp_path)
    damage(bad)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        recheck.prepare([run, bad], None, pixels_ok=True)
    assert str(bad) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_checkpoint_that_does_not_fit_its_config(run, tmp_path):
    bad = copy(run, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    config["model"]["latent_dim"] += 1
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="checkpoint.pt does not fit its config.json"):
        recheck.load_trainer(bad, config, "cpu")


def test_a_config_that_does_not_build(run, tmp_path):
    config = json.loads((run / "config.json").read_text())
    config["task"] = "nonsense-task"
    with pytest.raises(ValueError, match="config.json does not build a run: task"):
        recheck.load_trainer(run, config, "cpu")


def test_pixel_runs_where_they_cannot_be_used(run, tmp_path):
    pixels = copy(run, tmp_path)
    config = json.loads((pixels / "config.json").read_text())
    (pixels / "config.json").write_text(json.dumps({**config, "obs": "pixels"}))
    with pytest.raises(ValueError, match="pixel run has no true state"):
        recheck.prepare([run, pixels], None, pixels_ok=False)


def test_json_paths(tmp_path):
    recheck.check_json_path(tmp_path / "new" / "folder" / "out.json")   # folders are made when written
    with pytest.raises(ValueError, match="is a directory"):
        recheck.check_json_path(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        recheck.check_json_path(tmp_path / "file" / "out.json")


def test_a_cuda_mamba_run_is_rebuilt_for_this_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("recheck") / "km"
    assert train_main(argv("kalmamba", "noisy_state", out)) == 0
    config = json.loads((out / "config.json").read_text())
    config["model"]["mamba_backend"] = "cuda"
    trainer = recheck.load_trainer(out, config, "cpu")
    assert trainer.cfg.model.mamba_backend == "auto" and trainer.device == torch.device("cpu")
    trainer.close()
