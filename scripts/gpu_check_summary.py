"""Summary of a scripts/gpu-check.sh folder: one row per step (status, seconds, headline numbers read from the
step's JSON / JUnit XML / run directory), printed as a table and written to <folder>/summary.json.

    python scripts/gpu_check_summary.py results/gpu-check/<timestamp> --gpu 1

Headlines: tests passed/failed/skipped; Kalman forward + backward time per method at the longest T and the
parallel / sequential speed-up there; the update benchmark's KalMamba update time at context 256 / context 32 (goal
<= 2x, issue 12) and KalMamba / RSSM, KalMamba / VRKN at 256; the training run's env steps, final return, reason.
Exit status: 0 when no step failed or timed out, 1 otherwise (skipped steps are not failures).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rl.io import atomic_write_text  # noqa: E402
from rl.methods import REFERENCE  # noqa: E402  (KalMamba)

GOAL_CTX_RATIO = 2.0  # KalMamba update time, context 256 / context 32 (paper Fig. 6: nearly flat on a GPU)


def tests_headline(xml: Path) -> str | None:
    if not xml.exists():
        return None
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, fail, err, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return f"{n - fail - err - skip} passed, {fail + err} failed, {skip} skipped"


def kalman_headline(path: Path) -> tuple[str | None, dict]:
    if not path.exists():
        return None, {}
    data = json.loads(path.read_text())
    rows = [r for r in data["results"] if r["impl"] == "ours" and r["latent_dim"] == data["config"]["latent_dim"]]
    T = max(r["context_length"] for r in rows)
    ms = {r["method"]: 1000 * r["fwd_bwd_s"] for r in rows if r["context_length"] == T and r["fwd_bwd_s"]}
    speedup = data["summary"]["fwd_bwd_s"]["speedup_parallel_vs_sequential"].get(str(T))
    text = f"T={T} fwd+bwd ms: " + ", ".join(f"{m} {v:.1f}" for m, v in ms.items())
    if speedup is not None:
        text += f"; parallel/sequential {speedup:.1f}x"
    return text, {"context_length": T, "fwd_bwd_ms": ms, "speedup_parallel_vs_sequential": speedup,
                  "auto_resolves_to": data["config"].get("auto_resolves_to")}


def update_headline(path: Path) -> tuple[str | None, dict]:
    if not path.exists():
        return None, {}
    data = json.loads(path.read_text())
    t = {(r["method"], r["context_length"]): r["update_s"] for r in data["results"] if r["update_s"] is not None}
    out: dict[str, Any] = {}
    if (REFERENCE, 256) in t and (REFERENCE, 32) in t:
        ratio = t[(REFERENCE, 256)] / t[(REFERENCE, 32)]
        out["kalmamba_ctx256_over_ctx32"] = ratio
        out["goal_ctx256_over_ctx32_met"] = ratio <= GOAL_CTX_RATIO
    others = sorted({m for m, T in t if T == 256 and m != REFERENCE})
    for other in others:
        if (REFERENCE, 256) in t:
            out[f"kalmamba_over_{other}_ctx256"] = t[(REFERENCE, 256)] / t[(other, 256)]
    parts = []
    if "kalmamba_ctx256_over_ctx32" in out:
        parts.append(f"KalMamba ctx256/ctx32 {out['kalmamba_ctx256_over_ctx32']:.2f}x (goal <= {GOAL_CTX_RATIO:g}x: "
                     f"{'met' if out['goal_ctx256_over_ctx32_met'] else 'not met'})")
    parts += [f"KalMamba/{o.upper()} at 256: {out[f'kalmamba_over_{o}_ctx256']:.2f}" for o in others
              if f"kalmamba_over_{o}_ctx256" in out]
    return "; ".join(parts) or None, out


def train_headline(run: Path) -> tuple[str | None, dict]:
    done = run / "DONE"
    if not done.exists():
        return None, {}
    d = json.loads(done.read_text())
    return (f"{d['env_steps']} env steps in {d['wall_clock_s']:.0f} s, final return {d['final_return']:.1f} "
            f"({d['reason']})"), d


def summarise(folder: Path, gpu: bool) -> dict:
    steps = []
    with open(folder / "steps.tsv", newline="") as f:
        for name, status, rc, seconds, note in csv.reader(f, delimiter="\t"):
            steps.append({"step": name, "status": status, "rc": int(rc) if rc else None, "seconds": int(seconds),
                          "note": note, "headline": None, "data": {}})
    for s in steps:
        name = s["step"]
        if name in ("cuda_tests", "mamba_ssm"):
            s["headline"] = tests_headline(folder / f"{name}.xml")
        elif name == "kalman_bench":
            s["headline"], s["data"] = kalman_headline(folder / "kalman_scan.json")
        elif name == "kalman_bench_cpu":
            s["headline"], s["data"] = kalman_headline(folder / "kalman_scan_cpu_quick.json")
        elif name == "update_bench":
            s["headline"], s["data"] = update_headline(folder / "update_step.json")
        elif name == "train_pixels":
            s["headline"], s["data"] = train_headline(folder / "train_pixels")
    env = folder / "environment.json"
    return {"gpu": gpu, "machine": json.loads(env.read_text()) if env.exists() else None, "steps": steps,
            "failed": [s["step"] for s in steps if s["status"] in ("failed", "timeout")],
            "skipped": [s["step"] for s in steps if s["status"] == "skipped"]}


def format_table(summary: dict) -> str:
    lines = [f"{'step':16s} {'status':8s} {'s':>5s}  headline / note"]
    for s in summary["steps"]:
        detail = s["headline"] or s["note"]
        lines.append(f"{s['step']:16s} {s['status']:8s} {s['seconds']:5d}  {detail}")
    m = summary["machine"] or {}
    lines.append(f"machine: {m.get('cpu')}, GPU {m.get('gpu')}, torch {m.get('torch')}; "
                 f"{'GPU check' if summary['gpu'] else 'no GPU: CPU-side pieces only'}; "
                 f"skipped: {', '.join(summary['skipped']) or 'none'}; "
                 f"failed: {', '.join(summary['failed']) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--gpu", type=int, choices=[0, 1], required=True, help="1 if the GPU steps ran")
    args = p.parse_args(argv)
    if not (args.folder / "steps.tsv").exists():
        p.error(f"folder: no steps.tsv in {args.folder}")
    summary = summarise(args.folder, bool(args.gpu))
    atomic_write_text(args.folder / "summary.json", json.dumps(summary, indent=1))
    print(format_table(summary))
    print(f"wrote {args.folder / 'summary.json'}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
