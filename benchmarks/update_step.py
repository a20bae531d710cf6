"""Update-time benchmark (paper Fig. 6): time of a world-model forward pass and of a full training update
(world model + SAC, `rl.agent.Agent.update`) against the context length, for KalMamba, RSSM and VRKN (and any
plugin's method) at equal batch size and latent size; and the peak memory of an update.

    python -m benchmarks.update_step                                   # 32..512, batch 32, noisy-state inputs
    python -m benchmarks.update_step --device cpu --repeats 5         # default --device auto: CUDA if available
    python -m benchmarks.update_step --obs pixels --context-lengths 32 64 128
    python -m benchmarks.update_step --quick --out /tmp/bench.json      # tiny sizes: a smoke test
    python -m benchmarks.update_step --plugin examples/own_method.py   # also your own method (default --methods:
                                                                       # rl.methods.benchmarked(), plugins included)
    python -m benchmarks.update_step --config config/validation.yaml --no-memory   # a study's runs, their sizes

What is timed (medians over `--repeats` repetitions, all cases interleaved in one process, in a fresh random
order each repetition, after `--warmup` untimed calls per case):
- `forward_s`: `model.loss(obs, prev_actions, rewards)` in train() mode (MC dropout on) under no_grad: the
  model's forward pass alone (encoder, inference, decoders, loss), no autograd graph;
- `update_s`: `Agent.update(batch)`, exactly as training does it: model loss, backward, clip, Adam step;
  features of the batch with the updated model (no_grad; eval mode, or train mode where the run's `sac_features` is
  "mc"); one SAC update on its B(T-1) transitions;
- diagnostics for the breakdown (`--no-breakdown` skips them): `features_s` (`model.features` as in the update) and
  `sac_s` (`Agent.sac.update` on those features); the model's backward + optimiser step is about
  update_s − forward_s − features_s − sac_s (plus the cost of building the graph); `world_model_s` =
  update_s − sac_s − features_s (medians), the world-model step alone (SAC is the same for every method; null
  for a method without a world-model step, plain SAC);
- `update_gflop`: the matrix-product FLOPs (matmul, linear, convolution, forward and backward) of one
  `Agent.update`, counted by `torch.utils.flop_counter.FlopCounterMode` on one extra, untimed update;
  `update_gflops` = update_gflop / update_s, the rate the update achieves, next to `summary.matmul_gflops`, the
  rate of one large float32 matrix product (1024 x 1024 x 1024) on the same device and threads: how far an update
  is from its arithmetic bound (on a CPU at small sizes, most of an update is not arithmetic);
- `peak_mem_mb`: extra peak memory of one `Agent.update` at this context length. On CUDA:
  `torch.cuda.max_memory_allocated()` above the memory allocated before the call. On CPU (tracemalloc does not
  see torch's allocator): a fresh subprocess per case builds the agent and the batch, runs one update on a
  length-2 batch (so that the optimisers' states exist), then reports the growth of the peak RSS (VmHWM, or
  `ru_maxrss` without /proc) over one update at the measured length. The subprocess runs under an
  address-space limit (`--mem-limit-gb`, default 80% of the available memory); a case that runs out of memory
  is reported as skipped, with every longer context of that method.

Models: each method's default config (`rl.methods.make_model_config`) with the latent size set to
`--latent-dim` (default 230, VRKN's `lod`), by the config's fields: `latent_dim` (KalMamba, VRKN, a plugin's
model that has one), or stochastic + deterministic state `stoch_dim` + `deter_dim` = 30 + 200 (RSSM; the VRKN
repo's, docs/paper-notes.md#baselines), scaled proportionally for other sizes; a config with neither keeps its own sizes. Then any
`--set METHOD.FIELD=VALUE` (e.g. `--set kalmamba.d_state=8`). SAC: `SACConfig()`.
With `--config STUDY.yaml` instead: each method's model and SAC configs (and `--sac-features`) as `python -m rl.train`
makes them for that study's runs (rl.methods.study_settings, then the run CLI), `--set` over the study's model values;
the study's experiment (`--experiment`, default its first) also gives the defaults of `--methods` (those rl.train
trains), `--context-lengths`, `--batch-size`, `--threads` and the input shapes (its first task).
Inputs are random batches shaped like the environment's: `noisy_state` or `state` (B, T, --obs-dim) float32
(walker: 24; the two differ only inside the environment, so they time the same) or `pixels` (B, T, 3, 64, 64) uint8, actions in [-1, 1] (--action-dim, walker: 6), rewards in [0, 1].

Output: a table on stdout and JSON at `--out` (docs/architecture.md, "Benchmark JSON"; read by
analysis/figures.py for Fig. 6):
    {"machine": benchmarks.machine.describe(), "config": {...}, "summary": {...},
     "results": [{"method", "context_length", "batch_size", "device", "obs", "forward_s", "update_s",
                  "peak_mem_mb", "features_s", "sac_s", "world_model_s", "update_gflop", "update_gflops",
                  "forward_s_samples", "update_s_samples",
                  "status"}, ...]}
A skipped case has `status` "skipped: <why>" and null times. `summary` holds the update-time ratios
KalMamba / Y for every other timed method Y per context length, the same ratios of `world_model_s` (with the
targets of issue 12, WORLD_MODEL_TARGETS), and KalMamba(longest) / KalMamba(shortest).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.machine import describe
from rl import methods as registry
from rl.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = registry.REFERENCE          # the summary's ratios are this method's time over each other's
OBS_TYPES = ("noisy_state", "state", "pixels")   # the study schema's benchmark.obs
IMAGE_SHAPE = (3, 64, 64)
RSSM_STOCH_FRACTION = 30 / 230          # RSSM stochastic share of the latent (VRKN repo: 30 of 200 + 30)

# --quick: tiny models and sizes, for a smoke test of the whole pipeline (not for numbers)
QUICK = {"context_lengths": [4, 8], "batch_size": 2, "repeats": 2, "warmup": 1, "latent_dim": 8}
QUICK_SIZES = {"d_model": 16, "hidden_dim": 16, "conv_depth": 4, "mlp_hidden_dim": 16, "reward_hidden_dim": 16}
# (each set where the method's model config has that field)
QUICK_SAC = {"hidden_dim": 32, "n_layers": 2}
WORLD_MODEL_TARGETS = {64: 1.0, 256: 0.6}   # issue 12: KalMamba's world_model_s / RSSM's and VRKN's at most this
DEFAULTS = {"context_lengths": [32, 64, 128, 256, 512], "batch_size": 32, "repeats": 10, "warmup": 2,
            "latent_dim": 230}


# ---------------------------------------------------------------------------------------------------------------
# building the agents and the batches
# ---------------------------------------------------------------------------------------------------------------

def model_overrides(method: str, latent_dim: int, quick: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model-config fields set by the benchmark: the latent size (and, with --quick, tiny widths), then
    `extra` (the --set values for this method); each by the field names of the method's config."""
    fields = {f.name for f in dataclasses.fields(registry.model_config_class(method))}
    if "latent_dim" in fields:
        sizes = {"latent_dim": latent_dim}
    elif {"stoch_dim", "deter_dim"} <= fields:
        stoch = max(1, round(latent_dim * RSSM_STOCH_FRACTION))
        if latent_dim - stoch < 1:
            raise ValueError(f"latent_dim: {latent_dim} is too small to split into stochastic + deterministic state")
        sizes = {"stoch_dim": stoch, "deter_dim": latent_dim - stoch}
    else:
        sizes = {}
    quick_sizes = {k: v for k, v in QUICK_SIZES.items() if k in fields} if quick else {}
    return {**quick_sizes, **sizes, **(extra or {})}


def parse_sets(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """["METHOD.d_state=8", ...] -> {"METHOD": {"d_state": 8}}; values are YAML scalars. Unknown fields are
    caught by rl.methods.make_model_config."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise ValueError(f"--set: expected METHOD.FIELD=VALUE, got {item!r}")
        if method not in methods:
            raise ValueError(f"--set: method {method!r} in {item!r} is not among --methods {methods}")
        out.setdefault(method, {})[field] = yaml.safe_load(value)
    return out


def configs(method: str, latent_dim: int, quick: bool, extra: dict[str, Any] | None = None,
            study: dict[str, Any] | None = None) -> tuple[Any, Any, str]:
    """(model config, SAC config, sac_features) of `method`. With `study` (`--config`: {"path", "experiment"}): the
    run's own, as `python -m rl.train` makes them from the study's settings of the method (rl.methods.study_settings,
    then the run CLI), with `extra` (--set) over the study's model values. Otherwise the method's defaults with the
    benchmark's latent size (model_overrides) and SACConfig() (or the --quick sizes)."""
    from models.sac import SACConfig
    from rl.config import config_from_dict
    from rl.methods import make_model_config

    if study is None:
        model_cfg = make_model_config(method, model_overrides(method, latent_dim, quick, extra))
        return model_cfg, SACConfig(**(QUICK_SAC if quick else {})), "map"
    from benchmarks.end_to_end import study_config

    config = study_config(study["path"])
    grid = config["experiments"][study["experiment"]]
    values = registry.study_settings(config, method)
    values["model"] = {**values["model"], **(extra or {})}
    cfg = config_from_dict({**values, "method": method, "task": grid["tasks"][0], "obs": grid["obs"],
                            "context_length": min(grid["context_lengths"]), "out": "unused"})
    return cfg.model, cfg.sac, cfg.sac_features


def build_agent(method: str, obs_shape: tuple[int, ...], action_dim: int, latent_dim: int, quick: bool,
                device: str, extra: dict[str, Any] | None = None, study: dict[str, Any] | None = None):
    """The agent through rl.methods, as rl.train builds it, with the configs of configs()."""
    model_cfg, sac_cfg, sac_features = configs(method, latent_dim, quick, extra, study)
    return registry.build_agent(method, obs_shape, action_dim, model_cfg, sac_cfg, device, sac_features)


def obs_shape_of(obs: str, obs_dim: int) -> tuple[int, ...]:
    return IMAGE_SHAPE if obs == "pixels" else (obs_dim,)


def make_batch(obs_shape: tuple[int, ...], action_dim: int, batch_size: int, context_length: int, device: str,
               seed: int) -> dict[str, torch.Tensor]:
    """A random batch shaped like the replay buffer's: obs (B, T, *obs_shape) (uint8 pixels or float32 states),
    prev_actions (B, T, A) in [-1, 1] (zeros at t = 0, an episode start), rewards (B, T) in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    B, T = batch_size, context_length
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (B, T, *obs_shape), dtype=torch.uint8, generator=g)
    else:
        obs = torch.randn(B, T, *obs_shape, generator=g)
    prev_actions = torch.rand(B, T, action_dim, generator=g) * 2 - 1
    prev_actions[:, 0] = 0
    rewards = torch.rand(B, T, generator=g)
    rewards[:, 0] = 0
    return {k: v.to(device) for k, v in (("obs", obs), ("prev_actions", prev_actions), ("rewards", rewards))}


# ---------------------------------------------------------------------------------------------------------------
# the timed calls
# ---------------------------------------------------------------------------------------------------------------

def forward(agent, batch) -> None:
    """The world model's loss in train() mode, without an autograd graph."""
    agent.world_model.train()
    with torch.no_grad():
        agent.world_model.loss(batch["obs"], batch["prev_actions"], batch["rewards"])


def features(agent, batch) -> torch.Tensor:
    """The features of Agent.update (Agent.training_features: its mode, and its graph where `critic_grad`)."""
    return agent.training_features(batch["obs"], batch["prev_actions"])


def sac_update(agent, batch, feat: torch.Tensor) -> None:
    """The SAC part of Agent.update, on features computed beforehand."""
    F, A = feat.shape[-1], batch["prev_actions"].shape[-1]
    agent.sac.update(feat[:, :-1].reshape(-1, F), batch["prev_actions"][:, 1:].reshape(-1, A),
                     batch["rewards"][:, 1:].reshape(-1), feat[:, 1:].reshape(-1, F))


def update_flops(agent, batch) -> int:
    """Matrix-product FLOPs of one `agent.update(batch)` (forward and backward; FlopCounterMode's count)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return counter.get_total_flops()


def matmul_gflops(device: str, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of one float32 (n x n) @ (n x n) product on `device` (median of `repeats`, after one warm-up)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    timed(lambda: a @ b, device)
    return 2 * n ** 3 / statistics.median(timed(lambda: a @ b, device) for _ in range(repeats)) / 1e9


def timed(fn: Callable[[], Any], device: str) -> float:
    """Wall-clock seconds of fn(), synchronising CUDA before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def is_oom(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err)))


# ---------------------------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------------------------

def memory_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh subprocess (CPU): the growth of the peak RSS over one Agent.update at spec's context length,
    after one update on a length-2 batch. Returns {"peak_mem_mb": ...} or {"error": ...}."""
    if spec.get("mem_limit_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (spec["mem_limit_bytes"], spec["mem_limit_bytes"]))
    torch.manual_seed(spec["seed"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    try:
        registry.load_plugins(spec.get("plugins", []))
        obs_shape = tuple(spec["obs_shape"])
        agent = build_agent(spec["method"], obs_shape, spec["action_dim"], spec["latent_dim"], spec["quick"],
                                  "cpu", spec.get("set"), spec.get("study"))
        small = make_batch(obs_shape, spec["action_dim"], spec["batch_size"], 2, "cpu", spec["seed"])
        batch = make_batch(obs_shape, spec["action_dim"], spec["batch_size"], spec["context_length"], "cpu",
                           spec["seed"] + 1)
        agent.update(small)
        gc.collect()
        base = peak_rss_kib()
        agent.update(batch)
        peak = peak_rss_kib()
    except BaseException as err:  # noqa: BLE001 (reported to the parent, which decides)
        if is_oom(err):
            return {"error": "out of memory"}
        return {"error": f"{type(err).__name__}: {err}"}
    return {"peak_mem_mb": (peak - base) / 1024.0}


def peak_rss_kib() -> int:
    """Peak resident set size of this process in KiB: VmHWM of /proc/self/status where there is one, else
    `ru_maxrss`. (After exec, `ru_maxrss` starts at the *parent's* peak, e.g. a large pytest process, so it can
    hide the growth; VmHWM belongs to this process's own address space.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux


def memory_cpu_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.update_step", "--memory-case", json.dumps(spec)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = "out of memory (killed)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {"error": f"{why}: {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def memory_cuda(agent, batch) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    agent.update(batch)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------

def apply_study(args: argparse.Namespace) -> None:
    """--config FILE [--experiment NAME]: the study's experiment gives what was not set on the command line: the
    methods (those rl.train trains), the context lengths, the batch size and torch threads of its `train:` section,
    and the input shapes of its first task and observation type; each method's model and SAC configs come from
    `configs()` (the run's own). ValueError naming the bad value."""
    from benchmarks.end_to_end import study_config
    from rl import envs
    from rl.config import RunConfig

    if args.quick:
        raise ValueError("--quick: not with --config (the study sets the sizes)")
    if args.latent_dim is not None:
        raise ValueError("--latent-dim: not with --config (the study sets the sizes; --set METHOD.FIELD=VALUE "
                         "changes one)")
    config = study_config(args.config)   # checked against config/schema.yaml
    experiments = config["experiments"]
    name = args.experiment or next(iter(experiments))
    if name not in experiments:
        raise ValueError(f"--experiment {name!r}: not in {args.config} (has {', '.join(experiments)})")
    grid, train = experiments[name], config["train"]
    args.plugin = [*args.plugin, *(config.get("plugins") or [])]
    registry.load_plugins(config.get("plugins") or [])
    if args.methods is None:
        args.methods = [m for m in grid["methods"] if m in registry.trained()]
        if not args.methods:
            raise ValueError(f"--config {args.config}: experiment {name!r} has no method rl.train trains "
                             f"({', '.join(grid['methods'])}); name them with --methods")
    if args.context_lengths is None:
        args.context_lengths = list(grid["context_lengths"])
    default = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    if args.batch_size is None:
        args.batch_size = train.get("batch_size", default["batch_size"])
    if args.threads is None:   # the runs' torch threads: train.torch_threads, else the workflow's OMP_NUM_THREADS
        cores = ((config.get("resources") or {}).get("train") or {}).get("cpus_per_task")
        args.threads = train.get("torch_threads", default["torch_threads"]) or cores or None
    if args.device is None:
        args.device = train.get("device", default["device"])
        args.device = "cuda" if args.device.startswith("cuda") else args.device
    if args.obs is None:
        args.obs = grid["obs"]
    env = envs.make_env(grid["tasks"][0], args.obs, seed=0)
    if args.obs_dim is None:
        args.obs_dim = env.observation_shape[0]
    if args.action_dim is None:
        args.action_dim = env.action_dim
    args.latent_dim = None
    args.study = {"path": str(Path(args.config).resolve()), "experiment": name, "task": grid["tasks"][0]}


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset sizes from --config, --quick or the defaults, and check every value."""
    if args.experiment is not None and args.config is None:
        raise ValueError("--experiment: needs --config")
    args.study = None
    if args.config is not None:
        apply_study(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name, value in (("obs", "noisy_state"), ("obs_dim", 24), ("action_dim", 6), ("device", "auto")):
        if getattr(args, name) is None:
            setattr(args, name, value)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None and not (key == "latent_dim" and args.study):
            setattr(args, key, value)
    for name in ("batch_size", "repeats", "latent_dim", "obs_dim", "action_dim"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup: must be >= 0, got {args.warmup}")
    if not args.context_lengths or any(c < 2 for c in args.context_lengths):
        raise ValueError(f"--context-lengths: need values >= 2 (SAC uses T-1 transitions), got {args.context_lengths}")
    if len(set(args.context_lengths)) != len(args.context_lengths):
        raise ValueError(f"--context-lengths: duplicates in {args.context_lengths}")
    args.context_lengths = sorted(args.context_lengths)
    for path in args.plugin:
        registry.load_plugin(path)   # ValueError naming the file
    args.methods = args.methods or list(registry.benchmarked())
    for m in args.methods:
        if m not in registry.trained():
            raise ValueError(f"--methods: unknown method {m!r}; choose from {', '.join(registry.trained())} "
                             "(your own: --plugin FILE)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: 'cuda' requested but torch.cuda.is_available() is False")
    if args.mem_limit_gb is not None and args.mem_limit_gb <= 0:
        raise ValueError(f"--mem-limit-gb: must be > 0, got {args.mem_limit_gb}")
    args.set = parse_sets(args.set, list(args.methods))
    args.configs = {}   # method -> (model config, SAC config, sac_features), built once; a bad value fails here
    for m in args.methods:
        try:
            args.configs[m] = configs(m, args.latent_dim, args.quick, args.set.get(m), args.study)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--set/--latent-dim for {m}: {err}" if args.study is None
                             else f"--config {args.config}, method {m}: {err}") from None
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    args = resolve_args(args)
    torch.manual_seed(args.seed)
    device, B = args.device, args.batch_size
    obs_shape = obs_shape_of(args.obs, args.obs_dim)
    methods, ctxs = list(args.methods), args.context_lengths
    log = (lambda *a: None) if args.silent else (lambda *a: print(*a, file=sys.stderr, flush=True))

    results: dict[tuple[str, int], dict[str, Any]] = {
        (m, T): {"method": m, "context_length": T, "batch_size": B, "device": device, "obs": args.obs,
                 "forward_s": None, "update_s": None, "peak_mem_mb": None, "features_s": None, "sac_s": None,
                 "world_model_s": None, "update_gflop": None, "update_gflops": None, "forward_s_samples": [],
                 "update_s_samples": [], "status": "ok"}
        for m in methods for T in ctxs}

    def skip(m: str, T: int, why: str) -> None:
        for T2 in ctxs:
            if T2 >= T and results[(m, T2)]["status"] == "ok":
                results[(m, T2)]["status"] = f"skipped: {why}" + ("" if T2 == T else f" at context {T}")

    # 1. peak memory on CPU: one subprocess per case, shortest context first
    if device == "cpu" and args.memory:
        avail = available_memory_bytes()
        limit = int(args.mem_limit_gb * 2**30) if args.mem_limit_gb else (int(0.8 * avail) if avail else None)
        for m in methods:
            for T in ctxs:
                if results[(m, T)]["status"] != "ok":
                    continue
                spec = {"method": m, "context_length": T, "batch_size": B, "obs_shape": list(obs_shape),
                        "action_dim": args.action_dim, "latent_dim": args.latent_dim, "quick": args.quick,
                        "seed": args.seed, "mem_limit_bytes": limit, "set": args.set.get(m), "study": args.study,
                        "threads": torch.get_num_threads(),
                        "plugins": [str(Path(p).resolve()) for p in args.plugin]}   # the child runs in REPO_ROOT
                out = memory_cpu_subprocess(spec)
                if "error" in out:
                    log(f"memory {m} T={T}: {out['error']}")
                    skip(m, T, out["error"] if "out of memory" in out["error"] else "memory measurement failed: "
                         + out["error"])
                else:
                    results[(m, T)]["peak_mem_mb"] = out["peak_mem_mb"]
                    log(f"memory {m} T={T}: {out['peak_mem_mb']:.1f} MB")

    # 2. agents and batches (one agent per method; the same batch for every method at a context length)
    agents, configs = {}, {}
    for m in methods:
        model_cfg, sac_cfg, sac_features = args.configs[m]
        agents[m] = registry.build_agent(m, obs_shape, args.action_dim, model_cfg, sac_cfg, device, sac_features)
        configs[m] = {"model": dataclasses.asdict(model_cfg), "sac": dataclasses.asdict(sac_cfg),
                      "sac_features": agents[m].sac_features,
                      "model_params": sum(p.numel() for p in agents[m].world_model.parameters()),
                      "sac_params": sum(p.numel() for p in agents[m].sac.parameters())}
    batches = {T: make_batch(obs_shape, args.action_dim, B, T, device, args.seed + T) for T in ctxs}

    # 3. warm-up (and, on CUDA, peak memory); a case that runs out of memory is skipped with longer contexts
    for m in methods:
        for T in ctxs:
            if results[(m, T)]["status"] != "ok":
                continue
            try:
                for _ in range(args.warmup):
                    forward(agents[m], batches[T])
                    agents[m].update(batches[T])
                if device == "cuda" and args.memory:
                    results[(m, T)]["peak_mem_mb"] = memory_cuda(agents[m], batches[T])
                results[(m, T)]["update_gflop"] = update_flops(agents[m], batches[T]) / 1e9
            except BaseException as err:  # noqa: BLE001
                if not is_oom(err):
                    raise
                log(f"warm-up {m} T={T}: out of memory")
                skip(m, T, "out of memory")
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()

    # 4. timed repetitions, all cases interleaved, a fresh order each repetition
    cases = [k for k, r in results.items() if r["status"] == "ok"]
    extra: dict[tuple[str, int], dict[str, list[float]]] = {k: {"features_s": [], "sac_s": []} for k in cases}
    rng = random.Random(args.seed)
    for rep in range(args.repeats):
        order = cases[:]
        rng.shuffle(order)
        for m, T in order:
            agent, batch, r = agents[m], batches[(T)], results[(m, T)]
            r["forward_s_samples"].append(timed(lambda: forward(agent, batch), device))
            r["update_s_samples"].append(timed(lambda: agent.update(batch), device))
            if args.breakdown:
                holder = {}
                extra[(m, T)]["features_s"].append(
                    timed(lambda: holder.__setitem__("f", features(agent, batch)), device))
                extra[(m, T)]["sac_s"].append(timed(lambda: sac_update(agent, batch, holder["f"]), device))
        log(f"repetition {rep + 1}/{args.repeats} done")

    for k in cases:
        r = results[k]
        r["forward_s"] = statistics.median(r["forward_s_samples"])
        r["update_s"] = statistics.median(r["update_s_samples"])
        if args.breakdown:
            r["features_s"] = statistics.median(extra[k]["features_s"])
            r["sac_s"] = statistics.median(extra[k]["sac_s"])
            if agents[k[0]].model_opt is not None:   # plain SAC has no world-model step
                r["world_model_s"] = r["update_s"] - r["sac_s"] - r["features_s"]
        r["update_gflops"] = r["update_gflop"] / r["update_s"] if r["update_s"] > 0 else None

    config = {"methods": methods, "plugins": args.plugin, "context_lengths": ctxs, "batch_size": B,
              "repeats": args.repeats, "warmup": args.warmup, "latent_dim": args.latent_dim, "obs": args.obs,
              "obs_shape": list(obs_shape), "action_dim": args.action_dim, "device": device, "seed": args.seed,
              "quick": args.quick, "breakdown": args.breakdown, "memory": args.memory, "set": args.set,
              "study": args.study,
              "torch_threads": torch.get_num_threads(),
              "forward": "model.loss in train() mode under no_grad",
              "update": "rl.agent.Agent.update (model step + features + SAC step)",
              "peak_mem": ("torch.cuda.max_memory_allocated growth over one update" if device == "cuda" else
                           "peak-RSS (VmHWM) growth over one update, fresh subprocess per case"),
              "models": configs}
    rows = [results[(m, T)] for m in methods for T in ctxs]
    summary = {**summarize(rows), "matmul_gflops": matmul_gflops(device)}
    return {"machine": describe(), "config": config, "summary": summary, "results": rows}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Update-time and world-model-time ratios KalMamba / Y per context length, for every other method Y timed;
    KalMamba's update time longest / shortest context."""
    t = {(r["method"], r["context_length"]): r["update_s"] for r in rows if r["update_s"] is not None}
    wm = {(r["method"], r["context_length"]): r.get("world_model_s") for r in rows
          if r.get("world_model_s") is not None}
    out: dict[str, Any] = {}
    ctxs = sorted({r["context_length"] for r in rows})
    for key, times in (("update_ratio", t), ("world_model_ratio", wm)):
        for other in others(rows):
            ratios = {str(T): times[(REFERENCE, T)] / times[(other, T)] for T in ctxs
                      if (REFERENCE, T) in times and (other, T) in times}
            if ratios:
                out[f"{key}_{REFERENCE}_over_{other}"] = ratios
    if wm:
        out["world_model_targets"] = {str(T): v for T, v in WORLD_MODEL_TARGETS.items()}
    km = sorted(T for (m, T) in t if m == REFERENCE)
    if len(km) >= 2:
        out[f"{REFERENCE}_update_growth"] = {"from": km[0], "to": km[-1], "ratio": t[(REFERENCE, km[-1])]
                                             / t[(REFERENCE, km[0])]}
    return out


def others(rows: list[dict[str, Any]]) -> list[str]:
    """The timed methods but the reference, in the order timed."""
    return [m for m in dict.fromkeys(r["method"] for r in rows) if m != REFERENCE]


def format_table(bench: dict[str, Any]) -> str:
    cfg = bench["config"]
    study = cfg.get("study")
    sizes = (f"sizes of {Path(study['path']).name} experiment {study['experiment']} ({study['task']})" if study
             else f"latent {cfg['latent_dim']}")
    head = (f"update_step: device {cfg['device']}, obs {cfg['obs']}, batch {cfg['batch_size']}, {sizes}, "
            f"repetitions {cfg['repeats']} (medians), torch threads {cfg['torch_threads']}")
    cols = ["method", "ctx", "forward ms", "update ms", "features ms", "sac ms", "wm ms", "GFLOP", "GFLOP/s",
            "peak MB", "status"]
    width = max([11] + [len(r["method"]) for r in bench["results"]])
    lines = [head, "  ".join(f"{c:>{width if i == 0 else 11}}" for i, c in enumerate(cols))]

    def ms(x):
        return "-" if x is None else f"{1000 * x:.1f}"

    def num(x, spec):
        return "-" if x is None else format(x, spec)

    for r in bench["results"]:
        mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        vals = [r["method"], str(r["context_length"]), ms(r["forward_s"]), ms(r["update_s"]), ms(r["features_s"]),
                ms(r["sac_s"]), ms(r.get("world_model_s")), num(r.get("update_gflop"), ".2f"),
                num(r.get("update_gflops"), ".1f"), mem, r["status"]]
        lines.append("  ".join(f"{v:>{width if i == 0 else 11}}" for i, v in enumerate(vals)))
    s, name = bench["summary"], registry.get(REFERENCE).display_name
    for other in others(bench["results"]):
        ratios = s.get(f"update_ratio_{REFERENCE}_over_{other}")
        if ratios:
            lines.append(f"update time {name} / {other_name(other)}: "
                         + ", ".join(f"{T}: {v:.2f}" for T, v in ratios.items()))
    for other in others(bench["results"]):
        ratios = s.get(f"world_model_ratio_{REFERENCE}_over_{other}")
        if ratios:
            goals = s.get("world_model_targets", {})
            lines.append(f"world-model time (update - sac - features) {name} / {other_name(other)}: " + ", ".join(
                f"{T}: {v:.2f}" + (f" (target <= {goals[T]:g})" if T in goals else "") for T, v in ratios.items()))
    if s.get("matmul_gflops"):
        lines.append(f"one 1024^3 float32 matrix product: {s['matmul_gflops']:.1f} GFLOP/s (the updates' rates in "
                     "the GFLOP/s column: their distance from the arithmetic bound)")
    if f"{REFERENCE}_update_growth" in s:
        g = s[f"{REFERENCE}_update_growth"]
        lines.append(f"{name} update time, context {g['to']} / context {g['from']}: {g['ratio']:.2f}")
    return "\n".join(lines)


def other_name(method: str) -> str:
    return registry.get(method).display_name if method in registry.names() else method


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.update_step",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--methods", nargs="+", default=None,
                   help="world models to time (default: rl.methods.benchmarked(), plugins included; with --config "
                        "the experiment's methods that rl.train trains)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a Python file registering your own method (examples/own_method.py); repeatable")
    p.add_argument("--context-lengths", nargs="+", type=int, default=None,
                   help=f"sequence lengths T (default {DEFAULTS['context_lengths']}; with --config the experiment's; "
                        f"--quick {QUICK['context_lengths']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sequences per batch (default {DEFAULTS['batch_size']}; with --config train.batch_size)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repetitions (default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed calls per case (default {DEFAULTS['warmup']})")
    p.add_argument("--latent-dim", type=int, default=None,
                   help=f"latent size of every model (default {DEFAULTS['latent_dim']})")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="override a model-config field of one method, e.g. kalmamba.d_state=8 (repeatable)")
    p.add_argument("--config", default=None, metavar="STUDY.yaml",
                   help="time the runs of a study config (config/*.yaml) at their sizes: the model and SAC configs "
                        "rl.train makes for them, and by default its experiment's methods, context lengths, batch size, "
                        "torch threads, device and input shapes (flags given win; --set still applies). Its "
                        "`benchmark:` section (the workflow's Fig. 6 job) is not read")
    p.add_argument("--experiment", default=None, help="with --config: one of its experiments (default: its first)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's; with --config the study's train.torch_threads, else its "
                        "resources.train.cpus_per_task)")
    p.add_argument("--obs", choices=OBS_TYPES, default=None,
                   help="input type (default noisy_state; with --config the experiment's)")
    p.add_argument("--obs-dim", type=int, default=None,
                   help="state size (default 24: walker; with --config its first task's)")
    p.add_argument("--action-dim", type=int, default=None,
                   help="action size (default 6: walker; with --config its first task's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="auto (the default): cuda if available; with --config train.device")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches and models (default 0)")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="skip the features_s / sac_s diagnostics")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="address-space limit of each CPU memory subprocess (default: 80%% of available memory)")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes: a smoke test, not numbers")
    p.add_argument("--silent", action="store_true", help="no progress messages on stderr")
    p.add_argument("--out", default="results/bench/update_step.json",
                   help="JSON output path (default %(default)s)")
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)   # internal: one CPU memory subprocess
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_case is not None:
        print(json.dumps(memory_case(json.loads(args.memory_case))), flush=True)
        return 0
    try:
        bench = run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(bench))
    atomic_write_text(args.out, json.dumps(bench, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
