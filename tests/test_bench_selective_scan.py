"""benchmarks/selective_scan.py: a --quick run writes the documented JSON with one timed row per implementation
and context length, rows that agree with each other, and speed-ups that are the ratios of the medians; bad
arguments exit 2 naming them."""
import json
import statistics

import pytest

from benchmarks import selective_scan as bench


def test_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert {"machine", "config", "summary", "results"} <= set(data)
    q = bench.QUICK
    rows = data["results"]
    assert [(r["impl"], r["context_length"]) for r in rows] == [(i, T) for T in q["context_lengths"]
                                                                for i in bench.IMPLS]
    have_mambapy = bench.mambapy_scan() is not None
    for r in rows:
        if r["impl"] == "mambapy" and not have_mambapy:
            assert r["status"].startswith("skipped") and r["fwd_bwd_s"] is None
            continue
        assert r["status"] == "ok" and r["d_inner"] == q["d_inner"] and r["d_state"] == q["d_state"]
        assert len(r["fwd_bwd_s_samples"]) == len(r["forward_s_samples"]) == q["repeats"]
        assert r["fwd_bwd_s"] == statistics.median(r["fwd_bwd_s_samples"]) > 0
        assert r["max_abs_diff_vs_loop"] < 1e-5                      # same function, float32 rounding only
        assert f"{1000 * r['fwd_bwd_s']:.1f}" in table
    t = {(r["impl"], r["context_length"]): r["fwd_bwd_s"] for r in rows}
    T = q["context_lengths"][-1]
    assert data["summary"]["default"] == "numba"
    assert data["summary"]["speedup_fwd_bwd"]["parallel"][str(T)] == pytest.approx(t[("parallel", T)] / t[("numba", T)])
    assert data["summary"]["speedup_fwd_bwd"]["loop"][str(T)] == pytest.approx(t[("loop", T)] / t[("numba", T)])
    assert all((r["first_call_s"] is not None) == (r["status"] == "ok") for r in rows)
    assert ("mambapy" in data["summary"]["speedup_fwd_bwd"]) == have_mambapy


@pytest.mark.parametrize("argv,name", [(["--batch-size", "0"], "--batch-size"),
                                       (["--context-lengths", "4", "0"], "--context-lengths"),
                                       (["--warmup", "-1"], "--warmup")])
def test_bad_arguments_exit_2_naming_them(argv, name, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["--quick", *argv])
    assert info.value.code == 2 and name in capsys.readouterr().err
