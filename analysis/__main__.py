"""`python -m analysis {collect,estimates,figures,tables,all} --results results/<study> [--study-config FILE]
[--reps N] [--seed S] [--published FILE ...]`

collect   runs/ -> scores.csv, runs.csv, incomplete.csv, published.csv, probe.csv (+ published reference scores
          with --published)
estimates scores.csv, runs.csv, probe.csv -> estimates/*.csv (rliable; --reps, --seed; default: study config's
                                                           analysis.bootstrap_reps / analysis.seed, else 2000 / 0)
figures   estimates/*.csv, bench/update_step.json -> figures/*.pdf|png
tables    estimates/*.csv -> tables/*.md|tex
all       the four in order
Without --study-config the experiments are inferred from the runs found (analysis/plan.py).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from analysis import plan

log = logging.getLogger("analysis")
COMMANDS = ("collect", "estimates", "figures", "tables", "all")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--results", required=True, type=Path, help="results/<study> (holds runs/ and bench/)")
    p.add_argument("--study-config", type=Path, default=None, help="study YAML (config/<study>.yaml)")
    p.add_argument("--reps", type=int, default=None, help="bootstrap replications")
    p.add_argument("--seed", type=int, default=None, help="seed of numpy's global RNG before each rliable call")
    p.add_argument("--published", nargs="+", default=[], metavar="FILE",
                   help="published reference scores: DreamerV3 score files (*.json.gz, path or URL; see "
                        "analysis/published.py) or tidy CSV tables with source=published")
    return p.parse_args(argv)


def experiments(cfg, runs):
    return plan.experiments_from_config(cfg) if cfg else plan.infer_experiments(runs)


def cmd_collect(args, cfg) -> list[Path]:
    from analysis import collect

    scores, runs = collect.collect(args.results, plan.expected_runs(cfg) if cfg else None)
    status = None
    if args.published:
        tasks = {t for g in (cfg.get("experiments") or {}).values() for t in g["tasks"]} if cfg else None
        bin_every = (cfg.get("train") or {}).get("eval_every") if cfg else None
        published, status = collect.load_published(args.published, tasks, bin_every)
        scores = collect.with_published(scores, published)
    return collect.write_collect(args.results, scores, runs, status, collect.collect_probe(args.results))


def cmd_estimates(args, cfg) -> list[Path]:
    from analysis import collect, estimates

    scores = collect.read_scores(args.results / "scores.csv")
    runs = collect.read_runs(args.results / "runs.csv")
    settings = estimates.Settings.from_config(cfg, args.reps, args.seed)
    probe = collect.read_probe(args.results / "probe.csv")
    est = estimates.estimate_all(scores, runs, experiments(cfg, runs), settings, from_config=cfg is not None,
                                 published=collect.read_published_status(args.results), probe=probe)
    return estimates.write_estimates(args.results, est)


def cmd_figures(args, cfg) -> list[Path]:
    from analysis import collect, estimates, figures

    runs = collect.read_runs(args.results / "runs.csv")
    settings = estimates.Settings.from_config(cfg, args.reps, args.seed)
    with_fig6 = "benchmark" in cfg if cfg else (args.results / "bench" / "update_step.json").exists()
    return figures.write_figures(args.results, estimates.read_estimates(args.results), experiments(cfg, runs),
                                 settings, with_fig6)


def cmd_tables(args, cfg) -> list[Path]:
    from analysis import collect, estimates, tables

    runs = collect.read_runs(args.results / "runs.csv")
    return tables.write_tables(args.results, estimates.read_estimates(args.results), experiments(cfg, runs))


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs every estimate
    cfg = plan.load_study_config(args.study_config)
    plan.register_plugins(cfg)   # the study's own methods: display names and colours
    steps = {"collect": cmd_collect, "estimates": cmd_estimates, "figures": cmd_figures, "tables": cmd_tables}
    todo = list(steps) if args.command == "all" else [args.command]
    written = []
    for name in todo:
        paths = steps[name](args, cfg)
        log.info("%s: wrote %d files", name, len(paths))
        written += paths
    for p in written:
        print(p)
    return written


if __name__ == "__main__":
    main()
