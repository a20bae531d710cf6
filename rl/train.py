"""One run: `python -m rl.train --method kalmamba --task walker-walk --obs noisy_state --out DIR ...`
(flags: rl/config.py). Writes the run directory of rl/rundir.py.

Loop (CoRAL): `initial_episodes` episodes with uniform random actions; then every iteration
    round(updates_per_step x agent steps of the last episode) updates  ->  one episode with the stochastic
    policy  ->  an evaluation if `eval_every` env steps have passed since the last one
(`eval_episodes` episodes on a separately seeded env, deterministic action, MC dropout off). The run stops
when `env_steps` env steps are reached or the accumulated wall clock exceeds `wall_clock_hours` (checked
between iterations), evaluates the final policy if it has not been evaluated at that step, writes a final
checkpoint and then DONE.

Determinism and resume: every episode resets its env with a seed derived from (run seed, stream, episode
index), so the state at an iteration boundary is the agent (weights, optimisers), the replay, the RNG
states (python, numpy, torch, replay sampling, random actions) and counters. That state is snapshotted in
memory at every boundary and written to checkpoint.pt every `checkpoint_every` env steps, at the end, and
on SIGTERM/SIGINT. A restart loads it and continues exactly as an uninterrupted run would (on CPU with the
same thread count, bit for bit; evaluation forks the torch RNG so it never perturbs training).

Exit status: 0 done (or already DONE); 143 / 130 stopped by SIGTERM / SIGINT after writing the checkpoint of
the last iteration boundary (the interrupted iteration is redone on restart); 1 a non-finite loss or action
(the error names the loss term or the actor; the last good checkpoint is kept, never overwritten); 2 a bad
command line or a setting this machine cannot run (`--model.mamba_backend cuda` without CUDA, no headless
renderer: rl/render.py), an --out directory that holds a run with another config (the error names the
differing fields), or a checkpoint.pt that is not a valid checkpoint (nothing is overwritten).

Wall clock: `wall_clock_s` and the `wall_clock_hours` budget count the time of every process of the run up to
its last snapshot (time spent after it, in a killed iteration, is not counted).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import signal
import sys
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rl import methods, render
from rl.agent import NonFiniteLossError
from rl.config import RunConfig, parse_args, requested_obs
from rl.envs import make_env
from rl.probe import ProbeRecorder, recorder_for
from rl.replay import EpisodeReplay
from rl.run_contract import EVAL_STREAM, TRAIN_STREAM, episode_seed
from rl.rundir import InvalidCheckpoint, RunDir, provenance

# Streams 0, 1 seed the training and evaluation episodes (rl/run_contract.py); 2, 3 replay sampling and random actions
DIAG_STREAM = 4   # the diagnostics batch of each train.csv row: its own generator, never the training one
# config fields that may change when a run is restarted (they do not change its results)
RESTART_MAY_CHANGE = ("out", "device", "torch_threads", "wall_clock_hours", "keep_replay")


class ConfigMismatch(ValueError):
    """The run directory holds a run with another config."""


class NonFiniteActionError(FloatingPointError):
    """The policy output a NaN or inf action (stops the run like a non-finite loss: exit 1, checkpoint kept)."""


def check_action(action: np.ndarray, method: str, where: str) -> None:
    """NonFiniteActionError naming the actor and where, if `action` has a NaN or inf entry (the simulator would
    otherwise fail later with a PhysicsError, or silently integrate garbage)."""
    if not np.all(np.isfinite(action)):
        raise NonFiniteActionError(f"the SAC actor of {method} output a non-finite action "
                                   f"{np.array2string(np.asarray(action), precision=3)} ({where})")


def check_machine(cfg: RunConfig, device: torch.device) -> None:
    """Settings that are valid values but cannot run on this machine or device: ValueError naming the flag (exit 2),
    before anything is built or written."""
    backend = getattr(cfg.model, "mamba_backend", None)
    if backend == "cuda":
        from models.mamba import load_mamba_ssm

        why = [] if device.type == "cuda" else [f"the run's device is {device} (--device {cfg.device})"]
        kernels, missing = load_mamba_ssm()
        if kernels is None:
            why.append(missing)
        if why:
            raise ValueError(f"--model.mamba_backend cuda: cannot run here: {'; '.join(why)}. Use "
                             "--model.mamba_backend auto (the kernels where they can run) or torch")


class Preempted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available to PyTorch; use --device cpu or auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor detached and on the CPU (a snapshot that later training cannot touch)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.rundir = RunDir(cfg.out)
        self.device = resolve_device(cfg.device)
        check_machine(cfg, self.device)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.config = cfg.resolved()

        env_kw = dict(task=cfg.task, obs_type=cfg.obs, obs_noise_std=cfg.obs_noise_std,
                      action_noise_std=cfg.action_noise_std, action_repeat=cfg.resolved_action_repeat(),
                      episode_length=cfg.episode_length)
        self.env = make_env(seed=cfg.seed, **env_kw)
        self.eval_env = make_env(seed=cfg.seed + 1, **env_kw)
        self.agent = methods.build_agent(cfg.method, self.env.observation_shape, self.env.action_dim,
                                         cfg.model, cfg.sac, self.device, cfg.sac_features)
        self.replay = EpisodeReplay()
        self.replay_rng = np.random.default_rng([cfg.seed, 2])   # batch sampling
        self.explore_rng = np.random.default_rng([cfg.seed, 3])  # random actions of the initial episodes

        # counters (all part of the checkpoint)
        self.env_step = self.episodes = self.updates = self.evals = 0
        self.last_agent_steps = 0
        self.next_eval, self.next_checkpoint, self.next_log = cfg.eval_every, cfg.checkpoint_every, cfg.log_every
        self.wall_base, self.segment_start = 0.0, time.monotonic()
        self.eval_rows: list[dict] = []
        self.train_rows: list[dict] = []
        self.log_acc = self._empty_log(0, 0.0)

        self.checkpointed_step: int | None = None
        self.stop_signal: int | None = None
        self.snapshot: dict[str, Any] | None = None
        self.pbar: tqdm | None = None

    # ------------------------------------------------------------------ time, signals, logging
    def wall_clock(self) -> float:
        return self.wall_base + (time.monotonic() - self.segment_start)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def check_signal(self) -> None:
        if self.stop_signal is not None:
            raise Preempted(self.stop_signal)

    def say(self, msg: str) -> None:
        if self.pbar is not None and not self.pbar.disable:
            self.pbar.write(msg)  # above the bar
        else:
            print(msg, flush=True)

    @staticmethod
    def _empty_log(env_step: int, wall: float) -> dict[str, Any]:
        return {"sums": {}, "n": 0, "returns": [], "env_step": env_step, "wall": wall}

    # ------------------------------------------------------------------ episodes
    def run_episode(self, env, seed: int, mode: str, probe: ProbeRecorder | None = None) -> dict[str, Any]:
        """mode: 'random' (uniform actions), 'explore' (stochastic policy) or 'eval' (deterministic).
        probe: records (features, observation, true state) at every acting step (rl/probe.py)."""
        obs = env.reset(seed=seed)
        observations, actions, rewards = [obs], [], []
        state = None if mode == "random" else self.agent.initial_state()
        done, env_steps = False, 0
        while not done:
            self.check_signal()
            if mode == "random":
                action = self.explore_rng.uniform(-1.0, 1.0, size=env.action_dim).astype(np.float32)
            else:
                action, state = self.agent.act(obs, state, deterministic=mode == "eval")
                check_action(action, self.cfg.method, f"{'evaluation' if mode == 'eval' else 'training'} episode "
                             f"with seed {seed}, agent step {len(actions)}, env step {self.env_step}")
                if probe is not None:
                    probe.record(self.agent.last_features.cpu(), obs, env.true_state())
            obs, reward, done, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            if mode != "eval" and self.pbar is not None:
                self.pbar.update(info["env_steps"] - env_steps)
            env_steps = info["env_steps"]
        return {"obs": np.stack(observations), "actions": np.stack(actions), "rewards": np.asarray(rewards),
                "env_steps": env_steps, "return": float(np.sum(rewards))}

    def evaluate(self) -> None:
        wall = self.wall_clock()
        returns, probe = [], recorder_for(self.cfg.obs)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for i in range(self.cfg.eval_episodes):
                if probe is not None:
                    probe.start_episode()
                ep = self.run_episode(self.eval_env, episode_seed(self.cfg.seed, EVAL_STREAM, self.evals, i), "eval",
                                      probe)
                returns.append(ep["return"])
        self.evals += 1
        row = {"env_step": self.env_step, "wall_clock_s": wall, "return_mean": float(np.mean(returns)),
               "return_std": float(np.std(returns)), "episodes": len(returns)}
        if probe is not None:   # features_r2, observation_r2: probe.csv (rl.rundir)
            row.update(probe.result())
        self.eval_rows.append(row)
        self.rundir.write_eval(self.eval_rows)
        self.say(f"eval  env_step {self.env_step:>9}  return {row['return_mean']:8.1f} ± {row['return_std']:.1f}")
        if self.pbar is not None:
            self.pbar.set_postfix(eval_return=f"{row['return_mean']:.1f}", updates=self.updates)

    # ------------------------------------------------------------------ one iteration
    def train(self, n_updates: int) -> None:
        cfg, acc = self.cfg, self.log_acc
        for _ in range(n_updates):
            self.check_signal()
            batch = self.replay.sample(cfg.batch_size, cfg.context_length, self.replay_rng)
            try:
                logs = self.agent.update(batch)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e} (update {self.updates + 1}, env step {self.env_step})") from None
            self.updates += 1
            for k, v in logs.items():
                acc["sums"][k] = acc["sums"].get(k, 0.0) + v
            acc["n"] += 1

    def iteration(self) -> None:
        cfg = self.cfg
        seed = episode_seed(cfg.seed, TRAIN_STREAM, self.episodes)
        if self.episodes < cfg.initial_episodes:
            ep = self.run_episode(self.env, seed, "random")
        else:
            self.train(round_half_up(cfg.updates_per_step * self.last_agent_steps))
            ep = self.run_episode(self.env, seed, "explore")
        self.replay.add_episode(ep["obs"], ep["actions"], ep["rewards"])
        self.episodes += 1
        if self.episodes == cfg.initial_episodes:   # the random-policy data: observation statistics (CoRAL)
            self.agent.fit_obs_normalizer(np.concatenate([e["obs"] for e in self.replay.episodes]))
        self.env_step += ep["env_steps"]
        self.last_agent_steps = len(ep["actions"])
        self.log_acc["returns"].append(ep["return"])

        if self.env_step >= self.next_log:
            self.log_train()
            self.next_log = (self.env_step // cfg.log_every + 1) * cfg.log_every
        if self.env_step >= self.next_eval:
            self.evaluate()
            self.next_eval = (self.env_step // cfg.eval_every + 1) * cfg.eval_every

    def log_train(self) -> None:
        acc, wall = self.log_acc, self.wall_clock()
        row = {"env_step": self.env_step, "wall_clock_s": wall, "updates": self.updates}
        row.update({k: v / acc["n"] for k, v in acc["sums"].items()})
        if len(self.replay):   # diag_* columns (rl.agent.Agent.diagnose) on a batch of their own; training unaffected
            rng = np.random.default_rng([self.cfg.seed, DIAG_STREAM, self.env_step])
            row.update(self.agent.diagnose(self.replay.sample(self.cfg.batch_size, self.cfg.context_length, rng)))
        row["train_return"] = float(np.mean(acc["returns"])) if acc["returns"] else float("nan")
        row["fps"] = (self.env_step - acc["env_step"]) / max(wall - acc["wall"], 1e-9)
        self.train_rows.append(row)
        self.rundir.write_train(self.train_rows)
        self.log_acc = self._empty_log(self.env_step, wall)
        if self.pbar is None or self.pbar.disable:
            self.say(f"train env_step {self.env_step:>9}  updates {self.updates}  return {row['train_return']:8.1f}"
                     f"  {row['fps']:.0f} env steps/s")

    # ------------------------------------------------------------------ checkpoints
    def make_snapshot(self) -> dict[str, Any]:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "replay": self.replay_rng.bit_generator.state, "explore": self.explore_rng.bit_generator.state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        counters = {k: getattr(self, k) for k in ("env_step", "episodes", "updates", "evals", "last_agent_steps",
                                                  "next_eval", "next_checkpoint", "next_log")}
        return cpu_copy({"config": self.config, "agent": self.agent.state_dict(), "rng": rng, "counters": counters,
                         "wall_clock_s": self.wall_clock(), "replay_episodes": len(self.replay),
                         "eval_rows": self.eval_rows, "train_rows": self.train_rows, "log_acc": self.log_acc})

    def write_checkpoint(self, snapshot: dict[str, Any]) -> None:
        self.replay.save(self.rundir.replay)      # episode files first: the checkpoint refers to them
        self.rundir.save_checkpoint(snapshot)
        self.checkpointed_step = snapshot["counters"]["env_step"]

    def close(self) -> None:
        self.env.close()
        self.eval_env.close()

    def restore(self, state: dict[str, Any]) -> None:
        # a field the checkpoint lacks is younger than it: that run ran with the field's default
        defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
        saved = {**defaults, **state["config"]}
        changed = {k: (saved.get(k), self.config.get(k)) for k in {**saved, **self.config}
                   if k not in RESTART_MAY_CHANGE and self.config.get(k) != saved.get(k)}
        if changed:
            diff = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())
            raise ConfigMismatch(f"{self.rundir.path} holds a run with a different config ({diff}); "
                             "use another --out or delete that directory")
        self.agent.load_state_dict(state["agent"])
        try:
            self.replay.load(self.rundir.replay, state["replay_episodes"])
        except FileNotFoundError:
            # A finished run deletes its replay after DONE; rerun with DONE removed, it has nothing left to train.
            if state["counters"]["env_step"] < self.cfg.env_steps:
                raise
        rng = state["rng"]
        random.setstate(rng["python"])
        name, key, *rest = rng["numpy"]   # the MT19937 key is stored as a tensor (rl/rundir.py: safe checkpoints)
        np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.replay_rng.bit_generator.state = rng["replay"]
        self.explore_rng.bit_generator.state = rng["explore"]
        for k, v in state["counters"].items():
            setattr(self, k, v)
        self.wall_base, self.segment_start = state["wall_clock_s"], time.monotonic()
        self.eval_rows, self.train_rows, self.log_acc = state["eval_rows"], state["train_rows"], state["log_acc"]
        self.rundir.write_eval(self.eval_rows)
        self.rundir.write_train(self.train_rows)

    # ------------------------------------------------------------------ the run
    def run(self) -> str:
        """Train to the end of the budget; returns the stop reason. Raises Preempted / NonFiniteLossError."""
        cfg = self.cfg
        prov = provenance(self.device, cfg.seed)
        if self.rundir.has_checkpoint():
            self.restore(self.rundir.load_checkpoint())
            self.checkpointed_step = self.env_step
            self.rundir.record_restart(prov)
            self.say(f"resuming {self.rundir.path} at env step {self.env_step} ({self.updates} updates)")
        else:
            self.rundir.write_config(self.config, prov)
        self.snapshot = self.make_snapshot()
        self.pbar = tqdm(total=cfg.env_steps, initial=self.env_step, unit=" env steps", unit_scale=False, dynamic_ncols=True,
                         disable=not sys.stderr.isatty(), desc=f"{cfg.method} {cfg.task} {cfg.obs}")
        try:
            while True:
                if self.env_step >= cfg.env_steps:
                    reason = "env_steps"
                    break
                if self.wall_clock() >= cfg.wall_clock_hours * 3600:
                    reason = "wall_clock"
                    break
                self.iteration()
                due = self.env_step >= self.next_checkpoint
                if due:
                    self.next_checkpoint = (self.env_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                self.snapshot = self.make_snapshot()
                if due:
                    self.write_checkpoint(self.snapshot)
            if not self.eval_rows or self.eval_rows[-1]["env_step"] != self.env_step:
                self.evaluate()
            self.snapshot = self.make_snapshot()
            self.write_checkpoint(self.snapshot)
        finally:
            self.pbar.close()
        summary = {"final_return": self.eval_rows[-1]["return_mean"], "env_steps": self.env_step,
                   "wall_clock_s": self.wall_clock(), "reason": reason}
        self.rundir.write_done(summary)
        if not cfg.keep_replay:
            self.rundir.remove_replay()
        self.say(f"done: {summary}")
        return reason


def with_recorded_plugin(argv: list[str]) -> list[str]:
    """`argv`, plus `--plugin FILE` where it has none and its --out directory holds a run of a plugin's method
    (config.json's `plugin`): the same command without --plugin resumes that run."""
    out = render.flag_value(argv, "--out")
    if render.flag_value(argv, "--plugin") is not None or out is None:
        return argv
    try:
        recorded = (RunDir(out).read_config() or {}).get("plugin")
    except (OSError, ValueError):
        return argv   # not a run directory we can read: the run itself reports it
    return [*argv, "--plugin", recorded] if recorded else argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:   # before dm_control is imported (parse_args imports it to check the task)
        render.configure(renders=requested_obs(argv) == "pixels")
    except render.RendererUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = parse_args(with_recorded_plugin(argv))
    rundir = RunDir(cfg.out)
    if rundir.is_done():
        print(f"{rundir.path} is complete (DONE: {rundir.read_done()}); nothing to do", flush=True)
        return 0
    try:
        trainer = Trainer(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    handlers = {s: signal.signal(s, trainer._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        trainer.run()
        return 0
    except Preempted as p:
        snap = trainer.snapshot
        trainer.write_checkpoint(snap)
        trainer.rundir.write_eval(snap["eval_rows"])   # drop rows of the interrupted iteration
        trainer.rundir.write_train(snap["train_rows"])
        print(f"stopped by {p}: checkpoint written at env step {snap['counters']['env_step']}; run the same "
              "command again to resume", file=sys.stderr, flush=True)
        return 128 + p.signum
    except (ConfigMismatch, InvalidCheckpoint) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, NonFiniteActionError) as e:
        if rundir.has_checkpoint():
            kept = f"{rundir.checkpoint} keeps the last good state (env step {trainer.checkpointed_step})"
        else:
            kept = "no checkpoint had been written yet"
        print(f"error: {e}. The run stopped; {kept}.", file=sys.stderr, flush=True)
        return 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        trainer.close()


if __name__ == "__main__":
    sys.exit(main())
