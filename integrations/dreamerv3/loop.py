"""The DreamerV3 training loop on kalbench's schedule (env-step budget, evaluations every `eval_every` env steps).

DreamerV3's own scripts (embodied/run/train.py, train_eval.py at the pinned commit) evaluate on a wall-clock
timer (`run.report_every` seconds) and stop at `run.steps` agent steps; kalbench's methods evaluate every
`eval_every` env steps on `eval_episodes` episodes and stop at `env_steps` env steps or `wall_clock_hours`. This
loop drives DreamerV3's own parts, built by its `dreamerv3/main.py` (`make_agent`, `make_replay`, `make_stream`,
`make_logger`) with its `embodied.Driver`, `elements.Checkpoint` and `elements.when.Ratio`, on that schedule:

    repeat: step each training env once (policy mode "train"; each transition -> replay, and
            train_ratio / (batch_size * batch_length) updates per agent step once the replay holds a batch)
            every `eval_every` env steps: evaluate (policy mode "eval", `eval_episodes` episodes)
            every `checkpoint_every` env steps: checkpoint (agent, replay, step, this loop's counters)
            every `run.log_every` seconds and at each evaluation: log (DreamerV3's JSONL logger)

Env steps = agent steps (transitions that took an action, summed over the parallel envs) x the action repeat,
which is also the `step` its logger writes. Evaluations go to the log as `kalbench/eval/*` scalars (adapter.EVAL_KEYS) and
become eval.csv; training episodes as DreamerV3's own `episode/score` (scores.jsonl).
"""
from __future__ import annotations

import collections
import math
import signal
import time
from functools import partial as bind

import numpy as np

from integrations.dreamerv3 import adapter
from integrations.dreamerv3.tasks import eval_env_count


class Preempted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class LoopState:
    """This loop's counters, saved in DreamerV3's checkpoint next to its agent and replay."""

    KEYS = ("evals", "next_eval", "next_checkpoint", "wall_clock_s", "restarts", "updates", "eval_steps")

    def __init__(self, eval_every: int, checkpoint_every: int):
        self.evals, self.next_eval, self.next_checkpoint = 0, eval_every, checkpoint_every
        self.wall_clock_s, self.restarts, self.updates, self.eval_steps = 0.0, 0, 0, []

    def save(self):
        return {k: getattr(self, k) for k in self.KEYS}

    def load(self, data):
        for k in self.KEYS:
            setattr(self, k, data[k])


class Loop:
    """One DreamerV3 run on kalbench's schedule. `dv3` is `integrations.dreamerv3.import_dreamerv3()`, `config`
    DreamerV3's resolved config (its task `kalbench_<task>` or `dmc_<domain>_<task>`), `run` the schedule:
    env_steps, wall_clock_hours, eval_every, eval_episodes, checkpoint_every, action_repeat."""

    def __init__(self, dv3, config, run: dict, rundir, say=print):
        self.dv3, self.config, self.run, self.say = dv3, config, run, say
        self.rundir = rundir
        self.logdir = dv3.elements.Path(config.logdir)
        self.repeat = int(run["action_repeat"])
        self.state = LoopState(run["eval_every"], run["checkpoint_every"])
        self.stop_signal = None
        self.saved_at = None

    # ------------------------------------------------------------------ clock, signals
    def wall_clock(self) -> float:
        return self.state.wall_clock_s + (time.monotonic() - self.segment_start)

    def on_signal(self, signum, frame):
        self.stop_signal = signum

    def check_signal(self):
        if self.stop_signal is not None:
            raise Preempted(self.stop_signal)

    # ------------------------------------------------------------------ the run
    def build(self):
        main, embodied, elements = self.dv3.main, self.dv3.embodied, self.dv3.elements
        cfg, args = self.config, self.config.run
        self.agent = main.make_agent(cfg)
        self.replay = main.make_replay(cfg, "replay")
        self.logger = main.make_logger(cfg)
        self.step = self.logger.step  # agent steps, summed over the training envs

        self.checkpoint = elements.Checkpoint(self.logdir / "ckpt")
        self.checkpoint.step = self.step
        self.checkpoint.agent = self.agent
        self.checkpoint.replay = self.replay
        self.checkpoint.loop = self.state
        resumed = self.checkpoint.exists()
        if resumed:
            self.checkpoint.load()
            self.state.restarts += 1
            # Log lines written after the checkpoint describe steps this run is about to redo.
            for name in ("metrics.jsonl", "scores.jsonl"):
                adapter.truncate_jsonl(self.logdir / name, self.env_step())

        # Training episodes of restart r start at index r * 10**6: never a seed used before the restart.
        first = self.state.restarts * 10 ** 6
        train_fns = [bind(main.make_env, cfg, i, mode="train", first_episode=first) for i in range(args.envs)]
        self.driver = embodied.Driver(train_fns, parallel=not args.debug)
        # Counted like rl/train.py counts: transitions that took an action (not the first of an episode, which
        # DreamerV3's own scripts count too), so env steps = agent steps x action repeat are simulator steps.
        self.driver.on_step(lambda tran, worker: tran["is_first"] or self.step.increment())
        self.driver.on_step(self.replay.add)
        self.driver.on_step(self.on_train_step)
        self.episodes = collections.defaultdict(lambda: [0.0, 0])
        self.train_returns, self.fps_mark = [], None

        # Evaluation envs live in this process, so that each evaluation can tell them which episodes to run.
        self.n_eval = eval_env_count(self.run["eval_episodes"], args.eval_envs)
        eval_fns = [bind(main.make_env, cfg, i, mode="eval") if self.is_kalbench else bind(main.make_env, cfg, i)
                    for i in range(self.n_eval)]
        self.eval_driver = embodied.Driver(eval_fns, parallel=False)
        self.eval_driver.on_step(self.on_eval_step)

        batch_steps = cfg.batch_size * cfg.batch_length
        self.should_train = elements.when.Ratio(args.train_ratio / batch_steps)
        self.should_log = elements.when.Clock(args.log_every, first=False)
        self.train_agg = elements.Agg()
        self.stream = iter(self.agent.stream(main.make_stream(cfg, self.replay, "train")))
        self.carry = self.agent.init_train(cfg.batch_size)
        self.driver.on_step(self.train_step)
        return resumed

    @property
    def is_kalbench(self) -> bool:
        return self.config.task.startswith("kalbench_")

    def env_step(self) -> int:
        return int(self.step) * self.repeat

    def on_train_step(self, tran, worker):
        episode = self.episodes[worker]
        if tran["is_first"]:
            episode[:] = [0.0, 0]
        episode[0] += float(tran["reward"])
        episode[1] += 1
        if tran["is_last"]:
            self.logger.add({"score": episode[0], "length": episode[1]}, prefix="episode")
            self.train_returns.append(episode[0])

    def train_step(self, tran, worker):
        if len(self.replay) < self.config.batch_size * self.config.batch_length:
            return
        for _ in range(self.should_train(self.step)):
            batch = next(self.stream)
            self.carry, outs, metrics = self.agent.train(self.carry, batch)
            self.state.updates += 1
            if "replay" in outs:
                self.replay.update(outs["replay"])
            self.train_agg.add(metrics, prefix="train")

    # ------------------------------------------------------------------ evaluation
    def on_eval_step(self, tran, worker):
        episode = self.eval_episodes[worker]
        if tran["is_first"]:
            episode[:] = [0.0, self.episode_index(worker)]
        episode[0] += float(tran["reward"])
        if tran["is_last"]:
            self.eval_returns[episode[1]] = episode[0]
            self.eval_finished[worker] += 1

    def episode_index(self, worker: int) -> int:
        """Index of the eval episode env `worker` is running (its own count where the env cannot say)."""
        if self.is_kalbench:
            return self.eval_driver.envs[worker].episode_index
        return worker + self.eval_finished[worker] * self.n_eval

    def evaluate(self):
        """`eval_episodes` episodes with the eval policy: episode i is run by env i % n, and is the episode
        rl/train.py runs as evaluation episode i (same seed)."""
        wall, n, want = self.wall_clock(), self.n_eval, self.run["eval_episodes"]
        if self.is_kalbench:
            for slot in range(n):
                self.eval_driver.envs[slot].start_evaluation(self.state.evals, slot, n)
        self.eval_episodes = collections.defaultdict(lambda: [0.0, 0])
        self.eval_returns, self.eval_finished = {}, collections.Counter()
        self.eval_driver.reset(self.agent.init_policy)
        policy = lambda *a: self.agent.policy(*a, mode="eval")  # noqa: E731
        while not all(i in self.eval_returns for i in range(want)):
            self.check_signal()
            self.eval_driver(policy, steps=n)
        returns = np.array([self.eval_returns[i] for i in range(want)])
        self.state.evals += 1
        self.state.eval_steps.append(self.env_step())
        keys = adapter.EVAL_KEYS
        self.logger.add({keys["return_mean"]: returns.mean(), keys["return_std"]: returns.std(),
                         keys["episodes"]: len(returns), keys["wall_clock_s"]: wall})
        self.say(f"eval  env_step {self.env_step():>9}  return {returns.mean():8.1f} ± {returns.std():.1f}")
        self.write_log()

    # ------------------------------------------------------------------ logs, checkpoints
    def write_log(self):
        """Flush DreamerV3's logger (with this loop's scalars) and rewrite eval.csv / train.csv from its JSONL."""
        now, env_step = self.wall_clock(), self.env_step()
        if self.fps_mark is not None and now > self.fps_mark[1]:
            self.logger.add({adapter.FPS_KEY: (env_step - self.fps_mark[0]) / (now - self.fps_mark[1])})
        self.fps_mark = (env_step, now)
        self.logger.add(self.train_agg.result())
        self.logger.add({adapter.WALL_CLOCK_KEY: now, adapter.UPDATES_KEY: self.state.updates,
                         adapter.TRAIN_RETURN_KEY: np.mean(self.train_returns) if self.train_returns else math.nan})
        self.train_returns = []
        self.logger.write()
        for output in self.logger.outputs:
            if hasattr(output, "wait"):
                output.wait()
        adapter.write_logs(self.logdir, self.rundir, self.repeat)

    def save_checkpoint(self):
        """DreamerV3's checkpoint (agent, replay, step) with this loop's counters; once per env step."""
        if self.saved_at == self.env_step():
            return
        self.state.wall_clock_s = self.wall_clock()
        self.segment_start = time.monotonic()
        self.checkpoint.save()
        self.saved_at = self.env_step()

    def loop(self) -> str:
        """Train to the end of the budget; returns the stop reason ("env_steps" | "wall_clock")."""
        run = self.run
        self.segment_start = time.monotonic()
        resumed = self.build()
        if resumed:
            self.saved_at = self.env_step()
            self.say(f"resuming at env step {self.env_step()} (restart {self.state.restarts})")
        else:
            self.save_checkpoint()
        self.fps_mark = (self.env_step(), self.wall_clock())
        policy = lambda *a: self.agent.policy(*a, mode="train")  # noqa: E731
        self.driver.reset(self.agent.init_policy)
        while True:
            env_step = self.env_step()
            if env_step >= self.state.next_eval:  # checked first: a run resumed mid-evaluation redoes it here
                self.evaluate()
                self.state.next_eval = (env_step // run["eval_every"] + 1) * run["eval_every"]
            if env_step >= self.state.next_checkpoint:
                self.state.next_checkpoint = (env_step // run["checkpoint_every"] + 1) * run["checkpoint_every"]
                self.save_checkpoint()
            if env_step >= run["env_steps"]:
                reason = "env_steps"
                break
            if self.wall_clock() >= run["wall_clock_hours"] * 3600:
                reason = "wall_clock"
                break
            self.check_signal()
            self.driver(policy, steps=self.driver.length)
            if self.should_log():
                self.write_log()
        if not self.state.eval_steps or self.state.eval_steps[-1] != self.env_step():
            self.evaluate()
        self.save_checkpoint()
        self.logger.close()
        self.driver.close()
        self.eval_driver.close()
        return reason
