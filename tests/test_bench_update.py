"""benchmarks/update_step.py: a --quick run writes the documented JSON (docs/architecture.md) that
analysis/figures.py turns into Fig. 6; out-of-memory cases are skipped with every longer context; the CPU
peak-memory subprocess sees the memory an update allocates; bad arguments are errors naming them."""
import json
import statistics
from pathlib import Path

import pytest

from benchmarks import update_step as bench
from rl import methods as registry

ROW_KEYS = {"method", "context_length", "batch_size", "device", "forward_s", "update_s", "peak_mem_mb"}


def run_quick(tmp_path, *extra):
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--silent", "--device", "cpu", "--out", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_quick_run_writes_the_documented_json_and_fig6_reads_it(tmp_path, capsys):
    data = run_quick(tmp_path, "--no-memory")
    table = capsys.readouterr().out
    assert {"machine", "config", "results", "summary"} <= set(data)
    assert {"cpu", "cpu_count", "torch", "gpu", "hostname"} <= set(data["machine"])
    cfg = data["config"]
    assert cfg["context_lengths"] == bench.QUICK["context_lengths"] and cfg["batch_size"] == bench.QUICK["batch_size"]
    rows = data["results"]
    assert [(r["method"], r["context_length"]) for r in rows] == [(m, T) for m in registry.benchmarked()
                                                                  for T in bench.QUICK["context_lengths"]]
    for r in rows:
        assert ROW_KEYS <= set(r) and r["status"] == "ok"
        assert r["batch_size"] == bench.QUICK["batch_size"] and r["device"] == "cpu" and r["peak_mem_mb"] is None
        assert len(r["forward_s_samples"]) == len(r["update_s_samples"]) == bench.QUICK["repeats"]
        assert r["forward_s"] == statistics.median(r["forward_s_samples"]) > 0
        assert r["update_s"] == statistics.median(r["update_s_samples"]) > 0
        assert r["features_s"] > 0 and r["sac_s"] > 0
        assert r["world_model_s"] == pytest.approx(r["update_s"] - r["sac_s"] - r["features_s"])
        assert f"{1000 * r['update_s']:.1f}" in table
        assert r["update_gflop"] > 0 and r["update_gflops"] == pytest.approx(r["update_gflop"] / r["update_s"])
    assert data["summary"]["matmul_gflops"] > 0 and "GFLOP/s" in table
    # the equal latent size: KalMamba and VRKN latent_dim, RSSM stochastic + deterministic
    models = cfg["models"]
    D = bench.QUICK["latent_dim"]
    assert models["kalmamba"]["model"]["latent_dim"] == models["vrkn"]["model"]["latent_dim"] == D
    assert models["rssm"]["model"]["stoch_dim"] + models["rssm"]["model"]["deter_dim"] == D
    # summary ratios are the ratios of the medians
    t = {(r["method"], r["context_length"]): r["update_s"] for r in rows}
    T = str(bench.QUICK["context_lengths"][-1])
    assert data["summary"]["update_ratio_kalmamba_over_rssm"][T] == pytest.approx(
        t[("kalmamba", int(T))] / t[("rssm", int(T))])
    wm = {(r["method"], r["context_length"]): r["world_model_s"] for r in rows}
    assert data["summary"]["world_model_ratio_kalmamba_over_vrkn"][T] == pytest.approx(
        wm[("kalmamba", int(T))] / wm[("vrkn", int(T))])
    assert "world-model time (update - sac - features) KalMamba / VRKN" in table

    # Fig. 6 reads the same JSON: one line per method in each panel, at the benchmark's context lengths
    from analysis.figures import update_step_figure
    import matplotlib.pyplot as plt

    fig = update_step_figure(data)
    forward_ax, update_ax = fig.axes[:2]
    assert len(forward_ax.get_lines()) == len(update_ax.get_lines()) == len(registry.benchmarked())
    for line in update_ax.get_lines():
        assert list(line.get_xdata()) == bench.QUICK["context_lengths"]
    plt.close(fig)


def test_update_flops_count_the_matrix_products_of_an_update():
    """Against the textbook count: (N x K) @ (K x M) is 2 N K M FLOPs; a linear layer's backward is two more such
    products (input and weight gradients)."""
    import torch

    class OneLayer:
        def __init__(self):
            self.layer = torch.nn.Linear(7, 5, bias=False)

        def update(self, batch):
            self.layer(batch).sum().backward()

    N, K, M = 11, 7, 5
    assert bench.update_flops(OneLayer(), torch.randn(N, K, requires_grad=True)) == 3 * 2 * N * K * M
    assert bench.update_flops(OneLayer(), torch.randn(N, K)) == 2 * 2 * N * K * M   # no input gradient


def test_set_overrides_one_method_s_model_config(tmp_path):
    data = run_quick(tmp_path, "--no-memory", "--no-breakdown", "--methods", "kalmamba", "vrkn",
                     "--set", "kalmamba.d_state=3", "--set", "vrkn.dropout=0.0", "--context-lengths", "3")
    models = data["config"]["models"]
    assert models["kalmamba"]["model"]["d_state"] == 3 and models["vrkn"]["model"]["dropout"] == 0.0
    assert models["vrkn"]["model"]["hidden_dim"] == bench.QUICK_SIZES["hidden_dim"]
    assert data["config"]["set"] == {"kalmamba": {"d_state": 3}, "vrkn": {"dropout": 0.0}}


STUDY_KEYS = """study: tiny
seeds: [0]
resources: {train: {cpus_per_task: 1, mem_mb: 500, runtime: 5}, bench: {cpus_per_task: 1, mem_mb: 500, runtime: 5},
            analysis: {cpus_per_task: 1, mem_mb: 500, runtime: 5}}
analysis: {bootstrap_reps: 10, seed: 0}
"""
TRAIN_KEYS = "env_steps: 1000, wall_clock_hours: 1, eval_every: 500, eval_episodes: 1, checkpoint_every: 500"
TINY_STUDY = STUDY_KEYS + """
experiments:
  clean: {obs: state, tasks: [cartpole-swingup], methods: [kalmamba, sac], context_lengths: [3, 4]}
  noisy: {obs: noisy_state, tasks: [reacher-easy], methods: [vrkn], context_lengths: [5]}
train: {batch_size: 2, torch_threads: 1, sac_features: mc, """ + TRAIN_KEYS + """}
model:
  kalmamba: {latent_dim: 6, d_model: 8, hidden_dim: 8, mlp_hidden_dim: 8, reward_hidden_dim: 8}
  vrkn: {latent_dim: 5, hidden_dim: 8, mlp_hidden_dim: 8, reward_hidden_dim: 8}
sac: {hidden_dim: 16, n_layers: 1}
"""


def test_config_times_a_study_s_runs_with_the_configs_rl_train_makes(tmp_path):
    """--config: methods, contexts, batch, threads and input shapes from the study's (first) experiment; each
    method's model and SAC configs equal to those of the run CLI for that study (independently rebuilt here), --set
    on top; plain SAC has no world-model time."""
    import dataclasses

    import torch
    import yaml

    from rl.config import config_from_dict

    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--config", str(study), "--silent", "--no-memory", "--repeats", "1", "--warmup", "0",
                           "--device", "cpu", "--set", "kalmamba.d_state=3", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    cfg = data["config"]
    assert cfg["methods"] == ["kalmamba", "sac"] and cfg["context_lengths"] == [3, 4] and cfg["batch_size"] == 2
    assert cfg["torch_threads"] == 1 and cfg["obs"] == "state"
    assert cfg["obs_shape"] == [5] and cfg["action_dim"] == 1              # cartpole: 5-d state, 1 action
    assert cfg["study"]["experiment"] == "clean" and cfg["latent_dim"] is None
    assert cfg["models"]["kalmamba"]["sac_features"] == "mc"                 # the study's train.sac_features
    values = yaml.safe_load(TINY_STUDY)
    for m, model in (("kalmamba", {**values["model"]["kalmamba"], "d_state": 3}), ("sac", {})):
        run = config_from_dict({**values["train"], "model": model, "sac": values["sac"], "method": m,
                                "task": "cartpole-swingup", "obs": "state", "context_length": 3, "out": "x"})
        assert cfg["models"][m]["model"] == dataclasses.asdict(run.model)
        assert cfg["models"][m]["sac"] == dataclasses.asdict(run.sac)
    rows = {(r["method"], r["context_length"]): r for r in data["results"]}
    assert rows[("kalmamba", 4)]["world_model_s"] is not None and rows[("sac", 4)]["world_model_s"] is None
    assert all(r["status"] == "ok" and r["update_s"] > 0 for r in rows.values())


def test_config_memory_subprocess_builds_the_study_s_agent(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    out = tmp_path / "bench.json"
    assert bench.main(["--config", str(study), "--experiment", "noisy", "--silent", "--repeats", "1",
                       "--warmup", "0", "--device", "cpu", "--no-breakdown", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert (row["method"], row["context_length"], row["status"]) == ("vrkn", 5, "ok")
    assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0
    assert data["config"]["models"]["vrkn"]["model"]["latent_dim"] == 5 and data["config"]["obs"] == "noisy_state"


def test_out_of_memory_case_is_skipped_with_longer_contexts(tmp_path, monkeypatch):
    """(The CPU memory subprocess is replaced by a fake that reports OOM for RSSM at the shortest context.)"""
    first = bench.QUICK["context_lengths"][0]

    def fake_memory(spec):
        if spec["method"] == "rssm" and spec["context_length"] == first:
            return {"error": "out of memory"}
        return {"peak_mem_mb": float(spec["context_length"])}

    monkeypatch.setattr(bench, "memory_cpu_subprocess", fake_memory)
    data = run_quick(tmp_path, "--methods", "kalmamba", "rssm", "--no-breakdown")
    for r in data["results"]:
        if r["method"] == "rssm":
            assert r["status"].startswith("skipped: out of memory")
            assert r["forward_s"] is None and r["update_s"] is None and r["peak_mem_mb"] is None
        else:
            assert r["status"] == "ok" and r["peak_mem_mb"] == float(r["context_length"]) and r["update_s"] > 0
            assert r["features_s"] is None and r["world_model_s"] is None
    assert "update_ratio_kalmamba_over_rssm" not in data["summary"]
    assert "world_model_ratio_kalmamba_over_rssm" not in data["summary"]
    from analysis.figures import update_step_figure
    import matplotlib.pyplot as plt

    fig = update_step_figure(data)
    assert len(fig.axes[1].get_lines()) == 1
    plt.close(fig)


def test_cpu_memory_subprocess_sees_the_activations_of_an_update():
    """Pixels, B=4, T=64: the decoder's output alone is 4·64·3·64·64 floats = 12.6 MB (the length-2 warm-up
    update needs 1/32 of that), so the growth of the peak RSS over the measured update must exceed 10 MB."""
    spec = {"method": "vrkn", "context_length": 64, "batch_size": 4, "obs_shape": [3, 64, 64], "action_dim": 2,
            "latent_dim": 8, "quick": True, "seed": 0, "mem_limit_bytes": None}
    out = bench.memory_cpu_subprocess(spec)
    assert "error" not in out, out
    assert 10.0 < out["peak_mem_mb"] < 4000.0


@pytest.mark.parametrize("argv, name", [
    (["--context-lengths", "1", "4"], "--context-lengths"),
    (["--context-lengths", "4", "4"], "--context-lengths"),
    (["--methods", "kalmamba", "dreamer"], "--methods"),
    (["--batch-size", "0"], "--batch-size"),
    (["--mem-limit-gb", "-1"], "--mem-limit-gb"),
    (["--set", "kalmamba.no_such_field=3"], "no_such_field"),
    (["--set", "kalmamba.d_state"], "--set"),
    (["--methods", "rssm", "--set", "vrkn.hidden_dim=8"], "--set"),
    (["--experiment", "state"], "--experiment"),
    (["--threads", "0"], "--threads"),
])
def test_bad_arguments_are_errors_naming_them(tmp_path, capsys, argv, name):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--silent", "--no-memory", "--out", str(out), *argv]) == 2
    assert name in capsys.readouterr().err
    assert not out.exists()


VALIDATION = str(Path(__file__).resolve().parents[1] / "config" / "validation.yaml")


@pytest.mark.parametrize("argv, name", [
    (["--config", VALIDATION, "--latent-dim", "8"], "--latent-dim"),
    (["--config", VALIDATION, "--experiment", "pixels"], "'pixels'"),
    (["--config", "no_such_study.yaml"], "no_such_study.yaml"),
    (["--config", VALIDATION, "--set", "kalmamba.d_model=0"], "d_model"),
    (["--config", VALIDATION, "--quick"], "--quick"),
    (["--config", VALIDATION, "--obs-dim", "0"], "--obs-dim"),
    (["--config", VALIDATION, "--batch-size", "0"], "--batch-size"),
    (["--quick", "--action-dim", "0"], "--action-dim"),
])
def test_bad_config_arguments_are_errors_naming_them(tmp_path, capsys, argv, name):
    out = tmp_path / "bench.json"
    assert bench.main(["--silent", "--no-memory", "--out", str(out), *argv]) == 2
    assert name in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("experiments, message", [
    ("{}", "experiments: {} should be non-empty"),
    ("{a: {obs: state, tasks: [cartpole-swingup], methods: [kalmamba]}}",
     "experiments.a: 'context_lengths' is a required property"),
    ("{a: {obs: state, tasks: cartpole-swingup, methods: [kalmamba], context_lengths: [8]}}",
     "experiments.a.tasks: 'cartpole-swingup' is not of type 'array'"),
    ("{a: {obs: state, tasks: [cartpole-swingup], methods: [dreamerv3], context_lengths: [8]}}",
     "experiment 'a' has no method rl.train trains (dreamerv3)"),
])
def test_a_study_without_what_the_benchmark_needs_is_an_error_naming_it(tmp_path, capsys, experiments, message):
    """The study is checked against config/schema.yaml (as the workflow checks it), then for a method to time."""
    path, out = tmp_path / "study.yaml", tmp_path / "bench.json"
    path.write_text(STUDY_KEYS + f"experiments: {experiments}\ntrain: {{{TRAIN_KEYS}}}\n")
    assert bench.main(["--config", str(path), "--silent", "--no-memory", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_every_observation_type_the_schema_allows_parses():
    """config/schema.yaml's benchmark.obs and the CLI's --obs agree (a study with `obs: state` must not fail at the
    benchmark job)."""
    import yaml

    from benchmarks.update_step import parse_args

    from pathlib import Path

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())
    allowed = schema["$defs"]["benchmark"]["properties"]["obs"]["enum"]
    assert {parse_args(["--obs", o]).obs for o in allowed} == set(allowed)


@pytest.mark.parametrize("mode, training", [("map", False), ("mc", True)])
def test_breakdown_features_are_computed_in_the_mode_of_the_agent_s_update(mode, training):
    from models.sac import SACConfig
    from rl.methods import build_agent, make_model_config

    cfg = make_model_config("vrkn", bench.model_overrides("vrkn", 4, quick=True))
    agent = build_agent("vrkn", (3,), 1, cfg, SACConfig(**bench.QUICK_SAC), "cpu", sac_features=mode)
    feat = bench.features(agent, bench.make_batch((3,), 1, 2, 4, "cpu", 0))
    assert agent.world_model.training is training and feat.shape == (2, 4, agent.world_model.feature_dim)
