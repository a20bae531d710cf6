"""benchmarks/kalman_scan.py: a --quick run writes the documented benchmark JSON with one timed row per
method and context length, and a consistent summary; bad arguments are errors naming them."""
import json
import statistics

import pytest

from benchmarks import kalman_scan as bench


def test_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert {"machine", "config", "summary", "results"} <= set(data)
    assert {"cpu", "cpu_count", "torch", "hostname"} <= set(data["machine"])
    q = bench.QUICK
    assert data["config"]["context_lengths"] == q["context_lengths"] and data["config"]["dynamax"] is False
    rows = data["results"]
    assert [(r["impl"], r["method"], r["context_length"]) for r in rows] == [
        ("ours", m, T) for T in q["context_lengths"] for m in bench.OUR_METHODS]
    for r in rows:
        assert r["status"] == "ok" and r["batch_size"] == q["batch_size"] and r["latent_dim"] == q["latent_dim"]
        assert len(r["forward_s_samples"]) == len(r["fwd_bwd_s_samples"]) == q["repeats"]
        assert r["forward_s"] == statistics.median(r["forward_s_samples"]) > 0
        assert r["fwd_bwd_s"] == statistics.median(r["fwd_bwd_s_samples"]) > 0
        assert f"{1000 * r['fwd_bwd_s']:.1f}" in table
    times = {(r["method"], r["context_length"]): r["fwd_bwd_s"] for r in rows}
    s = data["summary"]["fwd_bwd_s"]
    T0, T1 = q["context_lengths"][0], q["context_lengths"][-1]
    assert s["speedup_parallel_vs_sequential"][str(T1)] == pytest.approx(
        times[("sequential", T1)] / times[("parallel", T1)])
    assert s["parallel_growth"] == pytest.approx(times[("parallel", T1)] / times[("parallel", T0)])
    vs_plain = s["speedup_vs_plain_loop"]
    assert set(vs_plain) == set(bench.OUR_METHODS) - {"plain_loop"}
    for m in vs_plain:
        assert vs_plain[m][str(T1)] == pytest.approx(times[("plain_loop", T1)] / times[(m, T1)])
        assert f"speed-up of {m} over plain_loop" in table
    assert "target_auto_vs_plain_loop_met" not in s  # only at T = 256
    assert data["config"]["auto_resolves_to"] == {str(T): "numba" for T in q["context_lengths"]}
    first_call = {r["method"]: r["compile_s"] for r in rows}
    assert first_call["numba"] > 0 and first_call["auto"] > 0 and first_call["plain_loop"] is None


def test_timed_calls_compute_the_filter_and_gradients():
    """The timed closures run the real filter/smoother (both scans, the fused loop and the plain loop give the same
    result as the sequential loop, and the plain loop the same gradients)."""
    import torch
    from models.kalman import kalman_filter, kalman_smoother

    system = bench.make_system(2, 9, 3)
    results = {}
    for scan in ("ours", "torch"):
        with bench.scan_implementation(scan):
            f = kalman_filter(**system, method="parallel")
            results[scan] = f + kalman_smoother(*f, system["A"], method="parallel")
    f = kalman_filter(**system, method="sequential")
    ref = f + kalman_smoother(*f, system["A"], method="sequential")
    for method in ("fused", "numba"):
        f = kalman_filter(**system, method=method)
        results[method] = f + kalman_smoother(*f, system["A"], method=method)
    results["plain_loop"] = bench.plain_loop(**system)
    for scan in results:
        for x, y in zip(results[scan], ref):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)

    def sequential(**s):
        f = kalman_filter(**s, method="sequential")
        return f + kalman_smoother(*f, s["A"], method="sequential")

    s64 = {k: v.double().requires_grad_(True) for k, v in system.items()}
    grads = [torch.autograd.grad(bench.loss_of(fn(**s64)), list(s64.values())) for fn in (bench.plain_loop, sequential)]
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    for method in bench.OUR_METHODS:
        bench.our_call(system, method, backward=True)()


@pytest.mark.parametrize("args, name", [
    (["--repeats", "0"], "--repeats"),
    (["--context-lengths", "0", "4"], "--context-lengths"),
    (["--latent-dim", "0"], "--latent-dim"),
    (["--warmup", "-1"], "--warmup"),
    (["--dynamax-timeout", "0"], "--dynamax-timeout"),
    (["--methods", "fastest"], "--methods"),
    (["--clock", "gpu"], "--clock"),
])
def test_bad_arguments(args, name, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", *args])
    assert name in capsys.readouterr().err
