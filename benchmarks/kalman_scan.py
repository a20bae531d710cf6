"""Kalman benchmark (issues 2, 12): diagonal filter + RTS smoother, every method of models/kalman.py and a plain
autograd loop side by side, against dynamax's jitted sequential and parallel LGSSM filter/smoother (JAX).

    python -m benchmarks.kalman_scan                              # B=32, D=230, float32, T = 32..1024
    python -m benchmarks.kalman_scan --context-lengths 32 256 --repeats 3 --no-dynamax
    python -m benchmarks.kalman_scan --quick --out /tmp/k.json    # tiny sizes: a smoke test (no dynamax)

What is timed (medians over `--repeats` repetitions after `--warmup` untimed calls per case; our cases of one
(D, T) are interleaved in a fresh random order each repetition; wall time, or with `--clock cpu` this process's
CPU time, which on a shared machine counts only our own work):
- `forward_s`: kalman_filter_smoother (kalman_filter + kalman_smoother; one autograd Function for "numba") under
  no_grad, with validate=False as in a training step (the value checks of the public default are passes over the
  data the plain loop does not make either);
- `fwd_bwd_s`: the same with autograd on all seven inputs, then backward of a scalar loss of all six outputs.
Rows:
- ours at D = --latent-dim (230, VRKN's latent size): "plain_loop" (the baseline: 15 lines of torch over unbind(1)
  views, autograd, no checks: `plain_loop`), "sequential", "fused", "parallel" (our scan), "parallel_torchscan"
  (our elements and combines scanned by torch's prototype generic associative scan), "numba" (compiled loops with
  the analytic backward, models/cpu_kernels.py; CPU only; its `compile_s` is the first call in this process: JIT
  compile, or loading the on-disk cache) and "auto" (the default, which
  resolves to one of the others by device: models.kalman.resolve_method);
- at D = --dynamax-dim (default 16: dynamax takes full D x D matrices; its parallel versions solve D x D systems
  in every combine): ours "sequential"/"parallel" and dynamax "sequential" (`lgssm_smoother`, lax.scan) and
  "parallel" (`parallel_lgssm_smoother`, lax.associative_scan), both under jit and vmap over the batch. Each
  dynamax case runs in its own subprocess with a time limit (--dynamax-timeout); a case that does not finish
  compiling in time is reported with status "did not compile in N s". dynamax's smoother runs its filter, so
  its row also is filter + smoother; its `fwd_bwd_s` is jax.value_and_grad of the same loss. `compile_s` is the
  time of its first (compiling) call. The dynamax child also reports `max_rel_diff_vs_ours`: the largest
  relative difference of its smoothed means/variances from our sequential float64 result on the same inputs.
Threads: torch uses torch.get_num_threads() (--threads to set it), XLA its own default (all cores).
`--device cuda` times our rows on the GPU (synchronised after each call); the dynamax rows stay on the CPU.

Output: a table on stdout and JSON at --out (docs/architecture.md, "Benchmark JSON"):
    {"machine": benchmarks.machine.describe(), "config": {...}, "summary": {...},
     "results": [{"impl", "method", "context_length", "batch_size", "latent_dim", "dtype", "device", "forward_s",
                  "fwd_bwd_s", "forward_s_samples", "fwd_bwd_s_samples", "compile_s", "max_rel_diff_vs_ours",
                  "status"}, ...]}
`summary` holds, at D = --latent-dim, the speed-up parallel / sequential per T and the parallel time growth from the
shortest to the longest T, with issue 2's targets (>= 5x at T = 256; growth <= 8x from 32 to 1024), and the speed-up
of every method over the plain loop per T ("speedup_vs_plain_loop"), with issue 12's target for "auto" (>= 4x for
forward + backward at T = 256, B = 32, D = 230, float32, 2 threads).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.machine import describe
from rl.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
OUR_METHODS = ("plain_loop", "sequential", "fused", "numba", "parallel", "parallel_torchscan", "auto")
DYNAMAX_METHODS = ("sequential", "parallel")
DEFAULTS = {"context_lengths": [32, 64, 128, 256, 512, 1024], "batch_size": 32, "latent_dim": 230,
            "dynamax_dim": 16, "repeats": 5, "warmup": 1}
QUICK = {"context_lengths": [4, 8], "batch_size": 2, "latent_dim": 3, "dynamax_dim": 2, "repeats": 2, "warmup": 1}
TARGET_SPEEDUP_T, TARGET_SPEEDUP = 256, 5.0
TARGET_GROWTH = 8.0
TARGET_VS_PLAIN_T, TARGET_VS_PLAIN = 256, 4.0
INPUTS = ("w", "var_w", "A", "b", "var_dyn", "mu0", "var0")


# ---------------------------------------------------------------------------------------------------------------
# inputs and our timed calls
# ---------------------------------------------------------------------------------------------------------------

def make_system(B: int, T: int, D: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random, stable diagonal system shaped like KalMamba's: |A| in [0.5, 1), moderate noise."""
    g = torch.Generator().manual_seed(seed)
    s = {
        "w": torch.randn(B, T, D, generator=g),
        "var_w": 0.1 + torch.rand(B, T, D, generator=g),
        "A": 0.5 + 0.49 * torch.rand(B, T, D, generator=g),
        "b": 0.1 * torch.randn(B, T, D, generator=g),
        "var_dyn": 0.01 + 0.1 * torch.rand(B, T, D, generator=g),
        "mu0": torch.zeros(B, D),
        "var0": torch.ones(B, D),
    }
    return {k: v.to(dtype) for k, v in s.items()}


def plain_loop(w, var_w, A, b, var_dyn, mu0, var0):
    """The baseline: filter + RTS smoother as a plain torch loop over unbind(1) views, differentiated by autograd
    (no mask, no checks). Same outputs as models.kalman: (mu_f, var_f, mu_p, var_p, mu_s, var_s), each (B, T, D)."""
    w, R, A, b, q = (x.unbind(1) for x in (w, var_w, A, b, var_dyn))
    mu_p, var_p = mu0.expand_as(w[0]), var0.expand_as(w[0])
    out = [[], [], [], []]
    for t in range(len(w)):
        if t > 0:
            mu_p, var_p = A[t - 1] * mu_f + b[t - 1], A[t - 1] ** 2 * var_f + q[t - 1]
        K = var_p / (var_p + R[t])
        mu_f, var_f = mu_p + K * (w[t] - mu_p), var_p * R[t] / (var_p + R[t])
        for xs, x in zip(out, (mu_f, var_f, mu_p, var_p)):
            xs.append(x)
    mu_f, var_f, mu_p, var_p = out
    mu_s, var_s = [mu_f[-1]], [var_f[-1]]
    for t in range(len(w) - 2, -1, -1):
        J = var_f[t] * A[t] / var_p[t + 1]
        mu_s.append(mu_f[t] + J * (mu_s[-1] - mu_p[t + 1]))
        var_s.append(var_f[t] + J * J * (var_s[-1] - var_p[t + 1]))
    return tuple(torch.stack(xs, dim=1) for xs in (mu_f, var_f, mu_p, var_p, mu_s[::-1], var_s[::-1]))


def loss_of(outputs) -> torch.Tensor:
    mu_f, var_f, mu_p, var_p, mu_s, var_s = outputs
    return (mu_s ** 2).sum() + var_s.sum() + mu_f.sum() + var_f.sum() + mu_p.sum() + var_p.sum()


@contextlib.contextmanager
def scan_implementation(name: str):
    """Temporarily swap the scan models/kalman.py uses ("ours" or "torch")."""
    import models.kalman as kalman
    from models.scan import associative_scan, torch_associative_scan

    kalman.associative_scan = torch_associative_scan if name == "torch" else associative_scan
    try:
        yield
    finally:
        kalman.associative_scan = associative_scan


def our_call(system: dict[str, torch.Tensor], method: str, backward: bool) -> Callable[[], None]:
    """A closure that runs filter + smoother (and the backward) once, waiting for the device to finish."""
    from models.kalman import kalman_filter_smoother

    sync = torch.cuda.synchronize if system["w"].is_cuda else (lambda: None)

    kalman_method = "parallel" if method == "parallel_torchscan" else method
    scan = "torch" if method == "parallel_torchscan" else "ours"

    def filter_smoother(inputs):
        if method == "plain_loop":
            return plain_loop(**inputs)
        return kalman_filter_smoother(**inputs, method=kalman_method, validate=False)

    def run() -> None:
        with scan_implementation(scan):
            if not backward:
                with torch.no_grad():
                    filter_smoother(system)
            else:
                inputs = {k: v.detach().requires_grad_(True) for k, v in system.items()}
                torch.autograd.grad(loss_of(filter_smoother(inputs)), [inputs[k] for k in INPUTS])
            sync()
    return run


def time_interleaved(calls: dict[Any, Callable[[], None]], repeats: int, warmup: int,
                     seed: int, clock: Callable[[], float] = time.perf_counter) -> dict[Any, list[float]]:
    """Warm every call up, then time each once per repetition in a fresh random order (seconds of `clock`)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    rng = random.Random(seed)
    samples: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        order = list(calls)
        rng.shuffle(order)
        for key in order:
            t0 = clock()
            calls[key]()
            samples[key].append(clock() - t0)
    return samples


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def run_ours(B: int, D: int, context_lengths: list[int], methods: tuple[str, ...], repeats: int, warmup: int,
             log: Callable[[str], None], device: str = "cpu", clock: str = "wall") -> list[dict]:
    from models.kalman import resolve_method

    rows = []
    for T in context_lengths:
        system = {k: v.to(device) for k, v in make_system(B, T, D, seed=T).items()}
        calls = {(m, bwd): our_call(system, m, bwd) for m in methods for bwd in (False, True)}
        first_call = {}
        for m in methods:  # compiled kernels: the first call in this process compiles or loads the JIT cache
            if m == "numba" or (m == "auto" and resolve_method("auto", system["w"]) == "numba"):
                t0 = time.perf_counter()
                calls[(m, False)]()
                calls[(m, True)]()
                first_call[m] = time.perf_counter() - t0
        samples = time_interleaved(calls, repeats, warmup, seed=T, clock=CLOCKS[clock])
        for m in methods:
            fwd, both = samples[(m, False)], samples[(m, True)]
            rows.append({"impl": "ours", "method": m, "context_length": T, "batch_size": B, "latent_dim": D,
                         "dtype": "float32", "device": device, "forward_s": statistics.median(fwd),
                         "fwd_bwd_s": statistics.median(both), "forward_s_samples": fwd, "fwd_bwd_s_samples": both,
                         "compile_s": first_call.get(m), "max_rel_diff_vs_ours": None, "status": "ok"})
            log(format_row(rows[-1]))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# dynamax (in a subprocess per case, with a time limit)
# ---------------------------------------------------------------------------------------------------------------

def dynamax_child(case: dict) -> None:
    """Runs one dynamax case; prints one JSON line per finished phase (the parent keeps the last one)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dynamax.linear_gaussian_ssm import (ParamsLGSSM, ParamsLGSSMDynamics, ParamsLGSSMEmissions,
                                             ParamsLGSSMInitial, lgssm_smoother, parallel_lgssm_smoother)

    B, T, D, repeats, warmup = case["batch_size"], case["context_length"], case["latent_dim"], case["repeats"], \
        case["warmup"]
    smoother = parallel_lgssm_smoother if case["method"] == "parallel" else lgssm_smoother
    system = make_system(B, T, D, seed=T)
    s = {k: jnp.asarray(v.numpy()) for k, v in system.items()}
    # dynamax indexes a transition by its target (dynamics[t] maps z_{t-1} to z_t; dynamics[0] is unused), ours by
    # its source (A[:, t] maps z_t to z_{t+1}): shift by one step.
    for k in ("A", "b", "var_dyn"):
        s[k] = jnp.concatenate([s[k][:, :1], s[k][:, :-1]], axis=1)
    eye = jnp.eye(D, dtype=jnp.float32)

    def diag(x):  # (..., D) -> (..., D, D)
        return x[..., :, None] * eye

    def one(w, var_w, A, b, var_dyn, mu0, var0):
        params = ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=mu0, cov=diag(var0)),
            dynamics=ParamsLGSSMDynamics(weights=diag(A), bias=b, input_weights=jnp.zeros((D, 0)), cov=diag(var_dyn)),
            emissions=ParamsLGSSMEmissions(weights=eye, bias=jnp.zeros(D), input_weights=jnp.zeros((D, 0)),
                                           cov=diag(var_w)))
        post = smoother(params, w)
        var = lambda P: jnp.diagonal(P, axis1=-2, axis2=-1)  # noqa: E731
        return post.smoothed_means, var(post.smoothed_covariances), post.filtered_means, \
            var(post.filtered_covariances)

    batched = jax.vmap(one)
    args = tuple(s[k] for k in INPUTS)

    def loss(*xs):
        mu_s, var_s, mu_f, var_f = batched(*xs)
        return (mu_s ** 2).sum() + var_s.sum() + mu_f.sum() + var_f.sum()

    fwd = jax.jit(batched)
    bwd = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(INPUTS)))))
    result = dict(case, forward_s=None, fwd_bwd_s=None, forward_s_samples=None, fwd_bwd_s_samples=None)

    def emit(status):
        print(json.dumps(dict(result, status=status)), flush=True)

    t0 = time.perf_counter()
    out = jax.block_until_ready(fwd(*args))
    result["compile_s"] = time.perf_counter() - t0
    # correctness: our sequential float64 result on the same inputs
    from models.kalman import kalman_filter, kalman_smoother
    s64 = {k: v.double() for k, v in system.items()}
    f = kalman_filter(**s64, method="sequential")
    mu_s, var_s = kalman_smoother(*f, s64["A"], method="sequential")
    diffs = []
    for x, y in zip(out[:2], (mu_s.numpy(), var_s.numpy())):  # relative error with a floor of 1e-3 max|y|
        diffs.append(np.max(np.abs(np.asarray(x, np.float64) - y) / (np.abs(y) + 1e-3 * np.abs(y).max())))
    result["max_rel_diff_vs_ours"] = float(max(diffs))
    emit("forward compiled")
    samples = time_interleaved({"f": lambda: jax.block_until_ready(fwd(*args))}, repeats, warmup, seed=T)["f"]
    result["forward_s_samples"], result["forward_s"] = samples, statistics.median(samples)
    emit("did not compile the gradient in time")
    t0 = time.perf_counter()
    jax.block_until_ready(bwd(*args))
    result["compile_s"] += time.perf_counter() - t0
    samples = time_interleaved({"b": lambda: jax.block_until_ready(bwd(*args))}, repeats, max(warmup - 1, 0),
                               seed=T)["b"]
    result["fwd_bwd_s_samples"], result["fwd_bwd_s"] = samples, statistics.median(samples)
    emit("ok")


def run_dynamax(B: int, D: int, context_lengths: list[int], repeats: int, warmup: int, timeout: float,
                log: Callable[[str], None]) -> list[dict]:
    rows = []
    for method in DYNAMAX_METHODS:
        skip = None
        for T in context_lengths:
            case = {"impl": "dynamax", "method": method, "context_length": T, "batch_size": B, "latent_dim": D,
                    "dtype": "float32", "device": "cpu", "repeats": repeats, "warmup": warmup}
            row = dict(case, forward_s=None, fwd_bwd_s=None, forward_s_samples=None, fwd_bwd_s_samples=None,
                       compile_s=None, max_rel_diff_vs_ours=None)
            if skip:
                rows.append(dict(row, status=skip))
                log(format_row(rows[-1]))
                continue
            cmd = [sys.executable, "-m", "benchmarks.kalman_scan", "--dynamax-child", json.dumps(case)]
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            try:
                proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
                stdout, failed = proc.stdout, proc.returncode != 0
                err = proc.stderr.strip().splitlines()[-1:] if failed else []
            except subprocess.TimeoutExpired as e:
                stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                failed, err = None, []
            lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
            if lines:
                row.update(lines[-1])
                row.pop("repeats", None)
                row.pop("warmup", None)
            if failed is None:  # timed out
                if not lines:
                    row["status"] = f"did not compile in {timeout:g} s"
                    skip = f"skipped: T = {T} did not compile in {timeout:g} s"
                elif row["status"] == "forward compiled":
                    row["status"] = f"forward compiled, its timing did not finish in {timeout:g} s"
                elif row["status"] != "ok":
                    row["status"] = f"gradient did not compile/run in {timeout:g} s"
            elif failed:
                row["status"] = f"failed: {err[0] if err else 'no message'}"
            rows.append(row)
            row.setdefault("status", "failed: no output")
            log(format_row(row))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# table, summary, CLI
# ---------------------------------------------------------------------------------------------------------------

def _ms(x) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def format_row(r: dict) -> str:
    extra = "" if r.get("compile_s") is None else f"  compile {r['compile_s']:.1f} s"
    if r.get("max_rel_diff_vs_ours") is not None:
        extra += f"  rel.diff {r['max_rel_diff_vs_ours']:.1e}"
    return (f"{r['impl']:8s} {r['method']:18s} D={r['latent_dim']:<4d} T={r['context_length']:<5d} "
            f"fwd {_ms(r['forward_s']):>9s} ms  fwd+bwd {_ms(r['fwd_bwd_s']):>9s} ms  {r['status']}{extra}")


def summarise(rows: list[dict], D: int) -> dict:
    def t(method, T, key):
        for r in rows:
            if (r["impl"], r["method"], r["latent_dim"], r["context_length"]) == ("ours", method, D, T):
                return r[key]
        return None

    Ts = sorted({r["context_length"] for r in rows if r["impl"] == "ours" and r["latent_dim"] == D})
    methods = [m for m in OUR_METHODS if any(t(m, T, "fwd_bwd_s") for T in Ts)]
    out: dict[str, Any] = {"latent_dim": D}
    for key in ("fwd_bwd_s", "forward_s"):
        speedup = {T: t("sequential", T, key) / t("parallel", T, key) for T in Ts
                   if t("sequential", T, key) and t("parallel", T, key)}
        growth = t("parallel", Ts[-1], key) / t("parallel", Ts[0], key) if len(Ts) > 1 else None
        out[key] = {"speedup_parallel_vs_sequential": speedup,
                    "parallel_growth": growth, "growth_from_to": [Ts[0], Ts[-1]]}
        if TARGET_SPEEDUP_T in speedup:
            out[key]["target_speedup_met"] = speedup[TARGET_SPEEDUP_T] >= TARGET_SPEEDUP
        if growth is not None and (Ts[0], Ts[-1]) == (32, 1024):
            out[key]["target_growth_met"] = growth <= TARGET_GROWTH
        out[key]["speedup_vs_plain_loop"] = {
            m: {T: t("plain_loop", T, key) / t(m, T, key) for T in Ts if t("plain_loop", T, key) and t(m, T, key)}
            for m in methods if m != "plain_loop"}
        auto = out[key]["speedup_vs_plain_loop"].get("auto", {})
        if key == "fwd_bwd_s" and TARGET_VS_PLAIN_T in auto:
            out[key]["target_auto_vs_plain_loop_met"] = auto[TARGET_VS_PLAIN_T] >= TARGET_VS_PLAIN
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context-lengths", type=int, nargs="+", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--dynamax-dim", type=int, default=None, help="D for the dynamax comparison (full matrices)")
    p.add_argument("--dynamax-timeout", type=float, default=240.0, help="seconds per dynamax case (compile + run)")
    p.add_argument("--dynamax", action=argparse.BooleanOptionalAction, default=None,
                   help="run the dynamax rows (default: on, off with --quick)")
    p.add_argument("--methods", nargs="+", default=list(OUR_METHODS), choices=OUR_METHODS,
                   help="our rows at --latent-dim (default: all)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of our rows (dynamax: CPU)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS),
                   help="our rows: wall time, or this process's CPU time (on a shared, loaded CPU machine it counts "
                        "only our work; use it with --threads 1, since it also counts idle threads' spinning)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not for numbers")
    p.add_argument("--silent", action="store_true")
    p.add_argument("--out", default="results/bench/kalman_scan.json")
    p.add_argument("--dynamax-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dynamax is None:
        args.dynamax = not args.quick
    for name in ("batch_size", "latent_dim", "dynamax_dim", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.warmup < 0:
        p.error(f"--warmup: must be >= 0, got {args.warmup}")
    if any(T < 1 for T in args.context_lengths):
        p.error(f"--context-lengths: must be >= 1, got {args.context_lengths}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda is not available")
    if args.device == "cuda" and args.clock == "cpu":
        p.error("--clock: cpu does not see the GPU's time; use wall with --device cuda")
    if args.dynamax_timeout <= 0:
        p.error(f"--dynamax-timeout: must be > 0, got {args.dynamax_timeout}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dynamax_child is not None:
        dynamax_child(json.loads(args.dynamax_child))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.silent else (lambda s: print(s, flush=True))
    Ts, B = sorted(args.context_lengths), args.batch_size
    from models.kalman import resolve_method
    auto = {T: resolve_method("auto", torch.empty((), device=args.device).expand(B, T, args.latent_dim))
            for T in Ts}
    log(f"Kalman filter + smoother, B={B}, float32, {args.device}, torch threads {torch.get_num_threads()}, "
        f"auto = " + ", ".join(f"{m} at T={T}" for T, m in auto.items()))
    methods = tuple(m for m in args.methods if m != "numba" or args.device == "cpu")  # numba: CPU kernels only
    rows = run_ours(B, args.latent_dim, Ts, methods, args.repeats, args.warmup, log, args.device,
                    args.clock)
    if args.dynamax:
        if args.dynamax_dim != args.latent_dim:
            rows += run_ours(B, args.dynamax_dim, Ts, ("plain_loop", "sequential", "fused", "parallel"), args.repeats,
                             args.warmup, log, args.device, args.clock)
        rows += run_dynamax(B, args.dynamax_dim, Ts, args.repeats, args.warmup, args.dynamax_timeout, log)
    summary = summarise(rows, args.latent_dim)
    config = {"context_lengths": Ts, "batch_size": B, "latent_dim": args.latent_dim, "dtype": "float32",
              "device": args.device, "methods": args.methods, "clock": args.clock, "repeats": args.repeats,
              "warmup": args.warmup, "quick": args.quick,
              "dynamax": args.dynamax, "dynamax_dim": args.dynamax_dim if args.dynamax else None,
              "dynamax_timeout_s": args.dynamax_timeout if args.dynamax else None,
              "torch_threads": torch.get_num_threads(), "auto_resolves_to": auto}
    data = {"machine": describe(), "config": config, "summary": summary, "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1))
    for key in ("fwd_bwd_s", "forward_s"):
        s = summary[key]
        for m, by_T in s["speedup_vs_plain_loop"].items():
            log(f"{key}: speed-up of {m} over plain_loop " + ", ".join(f"T={T}: {v:.2f}x" for T, v in by_T.items()))
        log(f"{key}: parallel/sequential speed-up " +
            ", ".join(f"T={T}: {v:.2f}x" for T, v in s["speedup_parallel_vs_sequential"].items()) +
            (f"; parallel growth T={s['growth_from_to'][0]}->{s['growth_from_to'][1]}: {s['parallel_growth']:.2f}x"
             if s["parallel_growth"] is not None else ""))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
