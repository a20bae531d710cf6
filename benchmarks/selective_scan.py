"""Selective-scan benchmark (issue 12, part 2): Mamba's selective scan on CPU, our CPU default (numba kernels) and
our torch loop against our parallel scan and against mambapy's pure-PyTorch parallel scan, on the same inputs,
side by side.

    python -m benchmarks.selective_scan                       # B=16, T=64, E=512, N=16, float32, 2 threads
    python -m benchmarks.selective_scan --context-lengths 64 256 --repeats 5
    python -m benchmarks.selective_scan --quick --out /tmp/s.json       # tiny sizes: a smoke test

Rows (`impl`), each computing y = selective_scan(u, Δ, A, B, C, D) (models/mamba.py, shapes there):
- "numba":    `models.mamba.selective_scan(method="numba")`, the CPU default when numba is installed (compiled
              loops, analytic backward, models/cpu_kernels.py); `first_call_s`: its first forward + backward in
              this process (JIT compile, or loading numba's on-disk cache);
- "loop":     `models.mamba.selective_scan(method="loop")`, the torch time loop (analytic backward; the CPU
              default before numba);
- "parallel": `models.mamba.selective_scan(method="parallel")`, our O(log T) scan (the CPU path before issue 12);
- "mambapy":  `mambapy.mamba.MambaBlock.selective_scan` (PyPI `mambapy`, the `bench` extra): Blelloch `pscan`
              with its own backward, the reference pure-PyTorch Mamba. Skipped when mambapy is not installed.
What is timed (medians over `--repeats` repetitions after `--warmup` untimed calls; all rows of one T interleaved
in a fresh random order each repetition; wall time, or with `--clock cpu` this process's CPU time, which on a
shared machine counts only our own work, best with --threads 1): `forward_s` the scan under no_grad; `fwd_bwd_s` the scan with autograd
on all six inputs, then the backward of sum(y * w) for a fixed random w. `max_abs_diff_vs_loop`: the largest
difference of y from the "loop" row's, relative to max |y|.

Output: a table on stdout and JSON at --out:
    {"machine": benchmarks.machine.describe(), "config": {...}, "summary": {...},
     "results": [{"impl", "context_length", "batch_size", "d_inner", "d_state", "forward_s", "fwd_bwd_s",
                  "forward_s_samples", "fwd_bwd_s_samples", "max_abs_diff_vs_loop", "first_call_s", "status"}, ...]}
`summary["speedup_fwd_bwd"]` holds, per T, each other row's fwd_bwd_s / the CPU default's (`summary["default"]`:
"numba", or "loop" without numba), with the issue's targets: >= 5 over our parallel scan, >= 1 over mambapy.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.machine import describe
from models import cpu_kernels
from models.mamba import selective_scan
from rl.io import atomic_write_text

IMPLS = ("numba", "loop", "parallel", "mambapy")
TARGETS = {"parallel": 5.0, "mambapy": 1.0}     # required fwd_bwd speed-up of the CPU default over each row
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def default_impl() -> str:
    """What selective_scan(method="auto") runs on CPU."""
    return "numba" if cpu_kernels.available() else "loop"
DEFAULTS = {"context_lengths": [64], "batch_size": 16, "d_inner": 512, "d_state": 16, "repeats": 7, "warmup": 2,
            "threads": 2}
QUICK = {"context_lengths": [5, 8], "batch_size": 2, "d_inner": 8, "d_state": 4, "repeats": 2, "warmup": 1}


def mambapy_scan() -> Callable | None:
    """mambapy's selective scan (it does not use `self`), or None when mambapy is not installed."""
    try:
        from mambapy.mamba import MambaBlock
    except ImportError:
        return None
    return lambda u, delta, A, B, C, D: MambaBlock.selective_scan(None, u, delta, A, B, C, D)


def implementation(name: str) -> Callable | None:
    if name == "mambapy":
        return mambapy_scan()
    if name == "numba" and not cpu_kernels.available():
        return None
    return lambda *xs: selective_scan(*xs, method=name)


def make_inputs(B: int, T: int, E: int, N: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random inputs like a Mamba layer's: Δ = softplus(.) ~ 0.05..1, A = -(1..N) jittered, u, B, C, D ~ N(0, 1).
    Returns ([u, Δ, A, B, C, D], w) with w (B, T, E) the weights of the scalar loss sum(y * w)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, E, generator=g)
    delta = F.softplus(torch.randn(B, T, E, generator=g) - 1)
    A = -(torch.arange(1.0, N + 1).repeat(E, 1) * torch.exp(0.3 * torch.randn(E, N, generator=g)))
    Bm, C = torch.randn(B, T, N, generator=g), torch.randn(B, T, N, generator=g)
    D = torch.randn(E, generator=g)
    return [u, delta, A, Bm, C, D], torch.randn(B, T, E, generator=g)


def calls(fn: Callable, xs: list[torch.Tensor], w: torch.Tensor) -> dict[str, Callable[[], None]]:
    def forward() -> None:
        with torch.no_grad():
            fn(*xs)

    def fwd_bwd() -> None:
        leaves = [x.detach().requires_grad_() for x in xs]
        torch.autograd.grad((fn(*leaves) * w).sum(), leaves)

    return {"forward_s": forward, "fwd_bwd_s": fwd_bwd}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows, clock = [], CLOCKS[args.clock]
    for T in args.context_lengths:
        xs, w = make_inputs(args.batch_size, T, args.d_inner, args.d_state, args.seed + T)
        fns = {name: implementation(name) for name in IMPLS}
        with torch.no_grad():
            y_loop = fns["loop"](*xs)
        row_of, cases = {}, []
        for name, fn in fns.items():
            row = {"impl": name, "context_length": T, "batch_size": args.batch_size, "d_inner": args.d_inner,
                   "d_state": args.d_state, "forward_s": None, "fwd_bwd_s": None, "forward_s_samples": [],
                   "fwd_bwd_s_samples": [], "max_abs_diff_vs_loop": None, "first_call_s": None, "status": "ok"}
            rows.append(row)
            if fn is None:
                row["status"] = f"skipped: {name} is not installed" + (" (pip install .[bench])" if name == "mambapy"
                                                                         else "")
                continue
            t0 = time.perf_counter()
            for call in calls(fn, xs, w).values():
                call()
            row["first_call_s"] = time.perf_counter() - t0
            with torch.no_grad():
                row["max_abs_diff_vs_loop"] = ((fn(*xs) - y_loop).abs().max() / y_loop.abs().max()).item()
            row_of[name] = row
            for key, call in calls(fn, xs, w).items():
                for _ in range(args.warmup):
                    call()
                cases.append((name, key, call))
        rng = random.Random(args.seed + T)
        for _ in range(args.repeats):
            rng.shuffle(cases)
            for name, key, call in cases:
                t0 = clock()
                call()
                row_of[name][f"{key}_samples"].append(clock() - t0)
        for row in row_of.values():
            for key in ("forward_s", "fwd_bwd_s"):
                row[key] = statistics.median(row[f"{key}_samples"])
    return {"summary": summarise(rows), "results": rows}


def summarise(rows: list[dict]) -> dict:
    """Per T: fwd_bwd_s of each other row / the CPU default's, next to the targets."""
    base = default_impl()
    t = {(r["impl"], r["context_length"]): r["fwd_bwd_s"] for r in rows if r["fwd_bwd_s"] is not None}
    speedup: dict[str, dict[str, float]] = {}
    for (impl, T), secs in sorted(t.items()):
        if impl != base and (base, T) in t:
            speedup.setdefault(impl, {})[str(T)] = secs / t[(base, T)]
    return {"default": base, "speedup_fwd_bwd": speedup, "targets": TARGETS}


def format_table(data: dict) -> str:
    cfg = data["config"]
    lines = [f"selective_scan: B={cfg['batch_size']}, E={cfg['d_inner']}, N={cfg['d_state']}, float32, "
             f"{cfg['threads']} torch threads, {cfg['clock']} clock, medians of {cfg['repeats']}",
             f"{'impl':>9} {'T':>5} {'forward ms':>11} {'fwd+bwd ms':>11} {'rel diff':>9}  status"]
    for r in data["results"]:
        ms = [("-" if r[k] is None else f"{1000 * r[k]:.1f}") for k in ("forward_s", "fwd_bwd_s")]
        diff = "-" if r["max_abs_diff_vs_loop"] is None else f"{r['max_abs_diff_vs_loop']:.1e}"
        lines.append(f"{r['impl']:>9} {r['context_length']:>5} {ms[0]:>11} {ms[1]:>11} {diff:>9}  {r['status']}")
    base = data["summary"]["default"]
    for impl, per_T in data["summary"]["speedup_fwd_bwd"].items():
        lines.append(f"fwd+bwd speed-up of {base} over {impl}: "
                     + ", ".join(f"T={T}: {v:.2f}x" for T, v in per_T.items())
                     + (f" (target >= {TARGETS[impl]:g}x)" if impl in TARGETS else ""))
    for r in data["results"]:
        if r["first_call_s"] is not None and r["impl"] == "numba":
            lines.append(f"numba first call (compile or cache load), T={r['context_length']}: {r['first_call_s']:.1f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.selective_scan", description=__doc__.split("\n")[0])
    p.add_argument("--context-lengths", type=int, nargs="+", help=f"T values (default {DEFAULTS['context_lengths']})")
    p.add_argument("--batch-size", type=int, help=f"B (default {DEFAULTS['batch_size']})")
    p.add_argument("--d-inner", type=int, help=f"E = expand * d_model (default {DEFAULTS['d_inner']})")
    p.add_argument("--d-state", type=int, help=f"N (default {DEFAULTS['d_state']})")
    p.add_argument("--repeats", type=int, help=f"timed repetitions (default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed calls per case (default {DEFAULTS['warmup']})")
    p.add_argument("--threads", type=int, help=f"torch threads (default {DEFAULTS['threads']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="wall", choices=list(CLOCKS), help="wall time or this process's CPU time")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not numbers")
    p.add_argument("--out", default="results/bench/selective_scan.json", help="JSON output path")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "d_inner", "d_state", "repeats", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    bad = [T for T in args.context_lengths if T < 1]
    if bad:
        p.error(f"--context-lengths must be >= 1, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {k: getattr(args, k) for k in ("context_lengths", "batch_size", "d_inner", "d_state", "repeats",
                                            "warmup", "threads", "seed", "quick", "clock")}
    data = {"machine": describe(), "config": config, **run(args)}
    print(format_table(data))
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
