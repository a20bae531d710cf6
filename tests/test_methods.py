"""rl/methods.py, the one list of methods, and plugins: a user's world model in one file (examples/own_method.py),
trained by `python -m rl.train --plugin`, timed by the update benchmark, drawn by the analysis."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch

from rl import methods
from tests.world_model_checks import loss_before_and_after_adam, make_batch

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_method.py"
TINY_GRU = {"latent_dim": 8, "mlp_hidden_dim": 16, "mlp_layers": 1, "reward_hidden_dim": 16, "reward_layers": 1,
            "conv_depth": 4}


@pytest.fixture(autouse=True)
def registry():
    """Each test starts from the built-in methods and leaves them so (plugins register into a module global)."""
    saved = dict(methods._REGISTRY)
    yield
    methods._REGISTRY.clear()
    methods._REGISTRY.update(saved)


def write_plugin(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


# ------------------------------------------------------------------------------------------ the registry

def test_built_in_methods_resolve_and_ablations_fix_their_field():
    for name in methods.trained():
        cfg_cls = methods.model_config_class(name)
        assert dataclasses.is_dataclass(cfg_cls) and isinstance(methods.model_class(name), type)
        cfg = methods.make_model_config(name)
        for field, value in methods.ablation_switch(name).items():
            assert getattr(cfg, field) == value
            assert getattr(methods.make_model_config(methods.model_family(name)), field) != value  # it is a switch
            with pytest.raises(ValueError, match=f"contradicts method '{name}'"):
                methods.make_model_config(name, {field: 0.5 if isinstance(value, float) else True})
    with pytest.raises(ValueError, match="is not trained by rl.train"):
        methods.model_class("dreamerv3")
    with pytest.raises(ValueError, match="unknown method 'kalmanba'; valid methods: kalmamba, rssm"):
        methods.get("kalmanba")


def test_study_settings_are_the_study_sections_less_the_ablation_s_switched_field(tmp_path):
    config = {"train": {"env_steps": 3000, "torch_threads": 1},
              "model": {"kalmamba": {"d_model": 32, "dropout": 0.2}, "rssm": {"deter_dim": 48}},
              "sac": {"hidden_dim": 64}}
    full = methods.study_settings(config, "kalmamba")
    assert full == {"env_steps": 3000, "torch_threads": 1, "model": {"d_model": 32, "dropout": 0.2},
                    "sac": {"hidden_dim": 64}}
    ablation = methods.study_settings(config, "kalmamba_no_dropout")   # family kalmamba, switch dropout = 0
    assert ablation["model"] == {"d_model": 32}
    assert methods.study_settings(config, "sac")["model"] == {}
    full["model"]["d_model"] = 1
    assert config["model"]["kalmamba"]["d_model"] == 32                    # a copy: the study is not changed
    methods.load_plugin(EXAMPLE)
    gru = methods.study_settings({"train": {"seed": 0}}, "gru")
    assert list(gru)[0] == "plugin" and gru["plugin"] == str(EXAMPLE) and gru["model"] == {} == gru["sac"]


def test_every_method_has_its_own_colour_and_ablations_their_own_dashes():
    ms = [methods.get(n) for n in methods.names()]
    colours = [m.color for m in ms] + list(methods.SPARE_COLORS)
    assert len(set(colours)) == len(colours)
    assert all(m.color.startswith("#") and len(m.color) == 7 for m in ms)
    dashed = [m.dashes for m in ms if m.dashes]
    assert len(dashed) == len(set(dashed)) == sum(m.ablation for m in ms)


def test_registry_and_plugin_reading_do_not_import_torch():
    """The workflow imports rl.methods and reads plugins in Snakemake's process, which has no torch."""
    code = ("import sys; from rl import methods; import analysis.plan; "
            f"methods.load_plugin({str(EXAMPLE)!r}, execute=False); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_plugin_read_as_text_is_the_plugin_imported():
    read = methods.load_plugin(EXAMPLE, execute=False)
    assert methods.get("gru") is read and read.model == "GRUWorldModel"
    with pytest.raises(ValueError, match="class name read without importing"):
        methods.model_class("gru")
    imported = methods.load_plugin(EXAMPLE)
    assert imported.model.__name__ == "GRUWorldModel" and imported.config.__name__ == "GRUConfig"
    assert dataclasses.replace(imported, model=read.model, config=read.config) == read
    assert methods.load_plugin(EXAMPLE, execute=False) is imported      # loading it again keeps the classes
    assert methods.load_plugin(EXAMPLE) is imported
    assert methods.names()[-1] == "gru" and "gru" in methods.trained() and "gru" in methods.benchmarked()
    assert methods.model_family("gru") == "gru" and methods.families()[-1] == "gru"


PLUGIN_ERRORS = {
    "no such file": (None, "no such Python file"),
    "no registration": ("import math\nX = 1\n", "registers no method: it needs a module-level `METHOD = Method(...)`"),
    "a built-in's name": ("from rl.methods import Method\n"
                          "METHOD = Method('rssm', model='models.rssm:RSSM', config='models.rssm:RSSMConfig')\n",
                          "method name 'rssm' is a built-in method; choose another name"),
    "a bad colour": ("from rl.methods import Method\nMETHOD = Method('mine', model=int, config=int, color='red')\n",
                     "color 'red' is not a '#rrggbb' hex colour"),
}


@pytest.mark.parametrize("execute", [True, False])
@pytest.mark.parametrize("case", list(PLUGIN_ERRORS))
def test_bad_plugins_are_errors_naming_the_file(case, execute, tmp_path):
    body, message = PLUGIN_ERRORS[case]
    path = tmp_path / "mine.py"
    if body is not None:
        write_plugin(path, body)
    with pytest.raises(ValueError) as err:
        methods.load_plugin(path, execute=execute)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
    assert methods.names() == methods.ALL_METHODS


def test_a_registration_the_workflow_cannot_read_says_why(tmp_path):
    path = write_plugin(tmp_path / "mine.py", "from rl.methods import Method\nNAME = 'mine'\n"
                                              "METHOD = Method(NAME.upper(), model=int, config=int)\n")
    with pytest.raises(ValueError, match="line 3: METHOD = Method.* must be literals or class names"):
        methods.load_plugin(path, execute=False)


def test_two_plugins_cannot_share_a_name(tmp_path):
    a = write_plugin(tmp_path / "a.py", "from rl.methods import Method\nMETHOD = Method('mine', model=int, "
                                        "config=int)\n")
    b = write_plugin(tmp_path / "b.py", a.read_text())
    methods.load_plugin(a, execute=False)
    with pytest.raises(ValueError, match=f"'mine' is the method of plugin {a}"):
        methods.load_plugin(b, execute=False)


def test_a_model_that_breaks_the_protocol_is_refused_naming_what_it_lacks(tmp_path):
    path = write_plugin(tmp_path / "mine.py", """
        from dataclasses import dataclass
        from torch import nn
        from rl.methods import Method

        @dataclass
        class Cfg:
            lr: float = 1e-3
            grad_clip: float = 1.0

        class Half(nn.Module):
            def __init__(self, obs_shape, action_dim, cfg):
                super().__init__()
                self.cfg, self.feature_dim = cfg, 3

            def loss(self, obs, prev_actions, rewards): ...

        METHOD = Method("half", model=Half, config=Cfg)
        """)
    methods.load_plugin(path)
    from models.sac import SACConfig

    with pytest.raises(TypeError, match="method 'half': Half lacks critic_grad, features, initial_state, observe "
                                        "of the WorldModel protocol"):
        methods.build_agent("half", (4,), 2, methods.make_model_config("half"), SACConfig(), "cpu")


# ------------------------------------------------------------------------------------------ the example model

@pytest.fixture
def gru():
    methods.load_plugin(EXAMPLE)
    return methods.model_class("gru"), methods.model_config_class("gru")


@pytest.mark.parametrize("obs_shape", [(5,), (3, 64, 64)])
def test_gru_features_are_its_online_steps_and_causal(gru, obs_shape):
    """features() over a sequence equals observe() step by step (a sequential reference), and h_t does not see
    inputs after t."""
    Model, Config = gru
    torch.manual_seed(0)
    model = Model(obs_shape, 2, Config(**TINY_GRU)).eval()
    obs, prev_actions, _ = make_batch(obs_shape, 2, B=3, T=6)
    with torch.no_grad():
        feat = model.features(obs, prev_actions)
        assert feat.shape == (3, 6, model.feature_dim)
        state, steps = model.initial_state(3), []
        for t in range(6):
            f, state = model.observe(state, obs[:, t], prev_actions[:, t])
            steps.append(f)
        torch.testing.assert_close(torch.stack(steps, 1), feat, rtol=1e-5, atol=1e-5)
        later = obs.clone()
        later[:, 4:] = later[:, 4:].flip(0)
        changed = model.features(later, prev_actions)
    torch.testing.assert_close(changed[:, :4], feat[:, :4])
    assert not torch.allclose(changed[:, 4:], feat[:, 4:])


def test_gru_loss_is_its_parts_and_learns(gru):
    Model, Config = gru
    torch.manual_seed(0)
    cfg = Config(**TINY_GRU)
    model = Model((5,), 2, cfg)
    batch = make_batch((5,), 2, learnable=True)
    loss, terms = model.loss(*batch)
    torch.testing.assert_close(loss, terms["loss_recon"] + terms["loss_reward"])
    torch.testing.assert_close(terms["loss_recon"].detach(), terms["obs_nll"])   # reward scale 1 on states
    before, after = loss_before_and_after_adam(model, batch, cfg)
    assert after < 0.5 * before


def test_gru_config_refuses_bad_values_naming_them(gru):
    _, Config = gru
    with pytest.raises(ValueError, match="GRUConfig.latent_dim: 0 must be > 0"):
        Config(latent_dim=0)


# ------------------------------------------------------------------------------------------ the run CLI

def gru_argv(out: Path, *plugin: str) -> list[str]:
    args = [*plugin, "--method", "gru", "--task", "walker-walk", "--obs", "state", "--out", str(out),
            "--context-length", "4", "--episode-length", "40", "--env-steps", "200", "--initial-episodes", "2",
            "--eval-every", "100", "--eval-episodes", "1", "--checkpoint-every", "100", "--log-every", "100",
            "--batch-size", "2", "--torch-threads", "1", "--device", "cpu", "--sac.hidden_dim", "16",
            "--sac.n_layers", "1"]
    for k, v in TINY_GRU.items():
        args += [f"--model.{k}", str(v)]
    return args


def test_rl_train_trains_a_plugin_s_method_to_done_and_resumes_it_without_the_flag(tmp_path):
    from rl.train import main

    out = tmp_path / "run"
    assert main(gru_argv(out, "--plugin", str(EXAMPLE))) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "gru" and config["plugin"] == str(EXAMPLE)
    assert config["model"]["latent_dim"] == 8
    done = json.loads((out / "DONE").read_text())
    assert done["reason"] == "env_steps" and done["env_steps"] == 200
    train = pd.read_csv(out / "train.csv")
    assert {"model_loss_recon", "model_loss_reward", "diag_grad_recon", "diag_grad_reward"} <= set(train.columns)
    assert train["updates"].iloc[-1] > 0
    # a restart (here: from the final checkpoint, DONE gone) in a fresh process without --plugin: config.json has it
    del methods._REGISTRY["gru"]
    (out / "DONE").unlink()
    assert main(gru_argv(out)) == 0
    assert json.loads((out / "DONE").read_text())["env_steps"] == 200
    assert len(json.loads((out / "config.json").read_text())["restarts"]) == 1


@pytest.mark.parametrize("plugin, message", [
    ("nowhere/mine.py", "plugin 'nowhere/mine.py': no such Python file"),
    (str(EXAMPLE), None),
])
def test_rl_train_with_a_bad_plugin_or_method_exits_2_in_one_line(plugin, message, tmp_path, capsys):
    from rl.config import parse_args

    argv = gru_argv(tmp_path / "run", "--plugin", plugin)
    if message is None:   # the plugin loads, but registers another name
        argv[argv.index("gru")] = "gur"
        message = "unknown method 'gur'; valid methods: kalmamba"
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


# ------------------------------------------------------------------------------------------ benchmark and analysis

def test_update_benchmark_times_a_plugin_s_method(tmp_path):
    from benchmarks import update_step as bench

    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--silent", "--device", "cpu", "--no-memory", "--repeats", "1", "--warmup", "0",
                       "--context-lengths", "4", "--plugin", str(EXAMPLE), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["methods"] == ["kalmamba", "rssm", "vrkn", "gru"]   # default: plugins are timed too
    assert data["config"]["models"]["gru"]["model"]["latent_dim"] == bench.QUICK["latent_dim"]
    gru_rows = [r for r in data["results"] if r["method"] == "gru"]
    assert len(gru_rows) == 1 and gru_rows[0]["status"] == "ok" and gru_rows[0]["update_s"] > 0
    assert "4" in data["summary"]["update_ratio_kalmamba_over_gru"]


def test_analysis_draws_a_plugin_s_method_with_its_colour_and_name():
    from analysis import figures, plan

    assert plan.display_name("gru") == "gru"                   # not registered: its name, a spare colour
    assert figures.method_color("gru") in methods.SPARE_COLORS
    assert plan.register_plugins({"plugins": [str(EXAMPLE)]}) == ["gru"]
    assert plan.display_name("gru") == "GRU" and figures.method_color("gru") == "#000000"
    assert plan.sort_methods(["gru", "kalmamba_no_reg", "rssm", "kalmamba"]) == ["kalmamba", "rssm",
                                                                                 "kalmamba_no_reg", "gru"]
    rows = [{"method": m, "metric": metric, "estimate": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_runs": 3}
            for m in ("kalmamba", "gru") for metric in ("IQM", "Median", "Mean", "Optimality gap")]
    fig = figures.aggregate_figure(pd.DataFrame(rows), ["kalmamba", "gru"], "test")
    ax = fig.axes[0]
    assert [t.get_text().split(" (")[0] for t in ax.get_yticklabels()] == ["KalMamba", "GRU"]
    assert matplotlib.colors.to_hex(ax.patches[1].get_facecolor()) == "#000000"
    experiment = plan.experiments_from_config({"seeds": [0], "plugins": [str(EXAMPLE)], "experiments": {
        "noisy_state": {"obs": "noisy_state", "tasks": ["walker-walk"], "methods": ["gru", "kalmamba", "rssm"],
                        "context_lengths": [4]}}, "main_context_length": 4})[0]
    assert experiment.methods == ("kalmamba", "rssm", "gru") and not experiment.ablation_methods


def test_update_benchmark_measures_a_plugin_s_memory_from_any_working_directory(tmp_path, monkeypatch):
    """The CPU memory case runs in a subprocess in the repository: a plugin path relative to the caller's working
    directory must reach it."""
    import shutil

    from benchmarks import update_step as bench

    shutil.copy(EXAMPLE, tmp_path / "mine.py")
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--quick", "--silent", "--device", "cpu", "--no-breakdown", "--repeats", "1", "--warmup", "0",
                       "--context-lengths", "4", "--plugin", "mine.py", "--methods", "gru", "--out", "b.json"]) == 0
    (row,) = json.loads((tmp_path / "b.json").read_text())["results"]
    assert row["status"] == "ok" and row["peak_mem_mb"] is not None
