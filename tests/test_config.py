"""The run config (rl/config.py): flags typed from the dataclasses' annotations by tyro, one validator per value (the
dataclasses' `__post_init__`), the config built once and written resolved. The run CLI's error lines for bad values
are in tests/test_train.py (BAD); a study value's path to the model in tests/test_workflow.py."""
import dataclasses
import json
import math

import pytest

from models.kalmamba import KalMambaConfig
from models.passthrough import PassthroughConfig
from models.rssm import RSSMConfig
from models.sac import SACConfig
from models.vrkn import VRKNConfig
from rl import methods
from rl.config import RunConfig, as_flags, config_from_dict, first_refused, parse_args

BASE = ["--method", "kalmamba", "--task", "walker-walk", "--obs", "noisy_state", "--out", "x", "--episode-length", "20",
        "--context-length", "8"]


def test_flags_are_typed_from_the_annotations():
    cfg = parse_args(BASE + ["--env-steps", "3000", "--wall-clock-hours", "2", "--keep-replay", "true",
                             "--device", "cpu", "--model.d_model", "32", "--model.dropout", "0.25",
                             "--model.use_mamba", "False", "--model.reg_reduction", "sum",
                             "--model.reward_loss_scale", "3", "--sac.target_entropy", "-2.5", "--sac.hidden_dim=64"])
    assert (cfg.env_steps, cfg.wall_clock_hours, cfg.keep_replay, cfg.device) == (3000, 2.0, True, "cpu")
    assert type(cfg.env_steps) is int and type(cfg.wall_clock_hours) is float
    m = cfg.model
    assert type(m) is KalMambaConfig
    assert (m.d_model, m.dropout, m.use_mamba, m.reg_reduction) == (32, 0.25, False, "sum")
    assert type(m.reward_loss_scale) is float and m.reward_loss_scale == 3.0
    assert (cfg.sac.target_entropy, cfg.sac.hidden_dim) == (-2.5, 64)
    # None and bool in YAML's spelling (study files, common.smk) and Python's (tyro's own)
    for word in ("null", "None"):
        cfg = parse_args(BASE + ["--model.reward_loss_scale", word, "--sac.target_entropy", word])
        assert cfg.model.reward_loss_scale is None and cfg.sac.target_entropy is None
    for word, value in (("true", True), ("True", True), ("false", False), ("False", False)):
        assert parse_args(BASE + ["--model.reg_detach_belief", word]).model.reg_detach_belief is value
    # dashes or underscores, the last of a repeated flag wins
    cfg = parse_args(BASE + ["--model.d-model", "16", "--context_length", "4", "--model.d_model", "24"])
    assert (cfg.model.d_model, cfg.context_length) == (24, 4)


@pytest.mark.parametrize("extra,message", [
    (["--model.bogus", "1"], "Unrecognized options: --model.bogus, 1"),
    (["--sac.bogus", "1"], "Unrecognized options: --sac.bogus, 1"),
    (["--model.stoch_dim", "4"], "Unrecognized options: --model.stoch_dim, 4"),   # an RSSM field, not KalMamba's
    (["--model.dropout", "high"], "--model.dropout: could not convert string to float: 'high'"),
    (["--model.use_mamba", "yes"], "invalid choice 'yes' for argument '--model.use-mamba'"),
    (["--model.reg_reduction", "max"], "reg_reduction: must be one of ('sum', 'mean'), got 'max'"),
    (["--sac-features", "sample"], "sac_features: 'sample' is not one of map, mc"),
])
def test_unknown_fields_and_bad_values_exit_2_with_one_line_naming_them(extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(BASE + extra)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err


def test_a_warning_printed_before_tyro_s_error_box_does_not_hide_the_message():
    """dm_control may warn on stderr (no GLFW display) while a command line is parsed; the captured text then starts
    with the warning, and the one-line error must still be the box's message."""
    from rl.config import one_line

    box = ("/x/glfw/__init__.py:917: GLFWError: (65544) X11: The DISPLAY environment variable is missing\n"
           "  warnings.warn(message, GLFWError)\n"
           "╭─ Value error ──────────────────────────╮\n"
           "│ Error parsing RunConfig: context_length: 1 must be >= 2 │\n"
           "│ ─────────────────────────────────────── │\n"
           "│ For full helptext, run train.py --help │\n"
           "╰────────────────────────────────────────╯\n")
    assert one_line(box) == "context_length: 1 must be >= 2"
    assert one_line(box.split("\n", 2)[2]) == "context_length: 1 must be >= 2"   # without the warning: the same


def test_help_lists_the_fields_of_the_methods_configs(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--method", "rssm", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "--context-length INT" in out and "--model.deter-dim INT" in out and "--sac.hidden-dim INT" in out
    assert "h_t size" in out and "actor and critic width" in out   # the fields' comments


# ------------------------------------------------------------------------------------------------------------------
# one validator per value: the dataclasses

BAD_FIELDS = [
    (KalMambaConfig, {"d_model": 0}, "d_model: must be a positive int, got 0"),
    (KalMambaConfig, {"dropout": 1.0}, "dropout: must be in [0, 1)"),
    (RSSMConfig, {"hidden_dim": 0}, "hidden_dim: must be an int >= 1, got 0"),
    (RSSMConfig, {"n_layers": 0}, "n_layers: must be an int >= 1, got 0"),
    (RSSMConfig, {"kl_alpha": 1.5}, "kl_alpha: must be in [0, 1], got 1.5"),
    (RSSMConfig, {"activation": "Linear"}, "activation: must name a torch.nn activation class"),
    (RSSMConfig, {"lr": 0.0}, "lr: must be > 0, got 0.0"),
    (VRKNConfig, {"a_min": 0.95}, "a_min/a_init/a_max: need 0 <= a_min < a_init < a_max, got 0.95, 0.9, 0.99"),
    (VRKNConfig, {"a_max": 0.5}, "a_min/a_init/a_max"),
    (VRKNConfig, {"var_dyn_min": 0.0}, "var_dyn_min/var_dyn_init/var_dyn_max: need 0 < "),
    (VRKNConfig, {"init_var_min": 2.0}, "init_var_min/init_var"),
    (VRKNConfig, {"dropout": -0.1}, "dropout: must be in [0, 1)"),
    (VRKNConfig, {"smoother": "fast"}, "smoother: must be one of"),
    (VRKNConfig, {"reward_loss_scale": -1.0}, "reward_loss_scale: must be >= 0"),
    (SACConfig, {"gamma": 1.5}, "gamma: must be in [0, 1], got 1.5"),
    (SACConfig, {"hidden_dim": True}, "hidden_dim: must be an int >= 1, got True"),
    (SACConfig, {"min_std": 0.0}, "min_std: must be > 0"),
    (SACConfig, {"target_entropy": math.inf}, "target_entropy: must be a finite number or None"),
    (PassthroughConfig, {"depth": 0}, "depth: must be an int >= 1, got 0"),
    (PassthroughConfig, {"lr": -1.0}, "lr: must be >= 0, got -1.0"),
]


@pytest.mark.parametrize("cls,values,message", BAD_FIELDS, ids=[f"{c.__name__}-{v}" for c, v, _ in BAD_FIELDS])
def test_each_config_dataclass_refuses_its_bad_values_naming_the_field(cls, values, message):
    cls()   # the defaults are valid
    with pytest.raises(ValueError) as e:
        cls(**values)
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize("method", ["kalmamba", "rssm", "vrkn"])
def test_zero_reward_layers_is_a_linear_reward_head_for_every_model(method):
    """The rule the schema and the dataclasses used to disagree on (schema >= 1, KalMambaConfig >= 0): one rule."""
    cfg = dataclasses.replace(methods.make_model_config(method), reward_layers=0)
    model = methods.model_class(method)((5,), 2, cfg)
    assert [type(m).__name__ for m in model.reward_head] == ["Linear"]


@pytest.mark.parametrize("values,message", [
    ({"context_length": 1}, "context_length: 1 must be >= 2"),
    ({"model": RSSMConfig()}, "model: method 'kalmamba' takes a KalMambaConfig, not RSSMConfig"),
    ({"method": "kalmamba_no_reg", "model": KalMambaConfig()}, "model.reg_alpha: 1.0 contradicts method"),
    ({"sac": {"hidden_dim": 3}}, "sac: takes a SACConfig, not dict"),
    ({"task": "walker-fly"}, "task: unknown task 'walker-fly'"),
])
def test_run_config_validates_itself(values, message):
    with pytest.raises(ValueError) as e:
        RunConfig(**{"method": "kalmamba", "task": "walker-walk", "obs": "state", "out": "x", **values})
    assert message in str(e.value), str(e.value)


def test_run_config_holds_the_methods_resolved_configs_built_once():
    cfg = RunConfig(method="kalmamba_no_dropout", task="cartpole-swingup", obs="state", out="x")
    assert cfg.model == methods.make_model_config("kalmamba_no_dropout") and cfg.model.dropout == 0.0
    assert cfg.sac == SACConfig()
    plain = RunConfig(method="sac", task="cartpole-swingup", obs="state", out="x")
    assert type(plain.model) is PassthroughConfig and plain.sac == SACConfig(**methods.sac_defaults("sac"))
    # the objects the agent is built from are the run config's own
    cfg = parse_args(BASE + ["--model.latent_dim", "8", "--model.d_model", "16", "--model.hidden_dim", "16",
                             "--sac.hidden_dim", "16"])
    agent = methods.build_agent(cfg.method, (5,), 2, cfg.model, cfg.sac, "cpu")
    assert agent.world_model.cfg is cfg.model and agent.sac.cfg is cfg.sac


def test_resolved_is_what_config_json_holds():
    cfg = parse_args(BASE + ["--model.d_model", "16"])
    resolved = json.loads(json.dumps(cfg.resolved()))
    assert resolved["action_repeat"] == 2 and resolved["method"] == "kalmamba"
    assert resolved["model"] == dataclasses.asdict(cfg.model) and resolved["model"]["d_model"] == 16
    assert resolved["sac"] == dataclasses.asdict(SACConfig())
    assert set(resolved) == {f.name for f in dataclasses.fields(RunConfig)}


def test_dicts_go_through_the_same_flags_and_first_refused_names_the_run():
    assert as_flags({"env_steps": 3000, "keep_replay": True, "model": {"d_model": 32, "reward_loss_scale": None},
                     "sac": {"hidden_dim": 64}, "x": [1, 2]}) == [
        "--env-steps", "3000", "--keep-replay", "True", "--model.d_model", "32", "--model.reward_loss_scale", "None",
        "--sac.hidden_dim", "64", "--x", "1", "2"]
    good = {"method": "rssm", "task": "walker-walk", "obs": "noisy_state", "out": "x", "model": {"deter_dim": 8}}
    assert config_from_dict(good).model.deter_dim == 8
    assert first_refused([good, good]) is None
    i, error = first_refused([good, {**good, "model": {"deter_dim": 0}}, {**good, "seed": -1}])
    assert i == 1 and "deter_dim: must be an int >= 1, got 0" in error


def test_tuple_fields_take_the_words_a_study_list_becomes():
    """No kalbench config has a tuple field yet; a user's own model config may: a
    study list becomes several words (as_flags, common.smk:cli_flags), which tyro reads into the tuple."""
    import tyro

    @dataclasses.dataclass
    class Own:
        widths: tuple[int, ...] = (64,)
        scales: tuple[float, float] = (1.0, 2.0)

    @dataclasses.dataclass
    class Outer:
        model: Own = dataclasses.field(default_factory=Own)

    words = as_flags({"model": {"widths": [32, 16, 8], "scales": [0.5, 3]}})
    assert tyro.cli(Outer, args=words).model == Own(widths=(32, 16, 8), scales=(0.5, 3.0))
    with pytest.raises(SystemExit):
        tyro.cli(Outer, args=as_flags({"model": {"scales": [1, 2, 3]}}), console_outputs=False)
