"""The overhead benchmark's own pieces (benchmarks/bench_overhead.py, overhead_flood.py, peers.py).

Unit tests need neither root nor the lab VM; the ``root`` test sends a real
flood between two macvlans in namespaces it creates and removes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_overhead as bench  # noqa: E402
import overhead_flood  # noqa: E402
import peers  # noqa: E402


def _fp(symbol, status="traceable", sites=()):
    return SimpleNamespace(symbol=symbol, status=status, inline_sites=list(sites))


def test_symbols_leave_out_inline_sites_and_modules_not_loaded():
    plan = SimpleNamespace(probed=lambda: [_fp("a"), _fp("b", sites=[{"symbol": "a", "offset": 3}]),
                                           _fp("c", status="module-not-loaded"), _fp(None), _fp("d.isra.0")])
    assert bench.symbols(plan) == ["a", "d.isra.0"]


def test_bpftrace_program_pairs_kprobe_and_kretprobe_and_says_when_attached():
    text = peers.bpftrace_program(["macvlan_start_xmit", "dev_forward_skb"])
    assert "kprobe:macvlan_start_xmit,kretprobe:macvlan_start_xmit" in text
    assert "kprobe:dev_forward_skb,kretprobe:dev_forward_skb" in text
    assert text.count("@[probe] = count()") == 1
    assert text.index("BEGIN") < text.index("kprobe:")


def test_table_ratios_against_no_probes_and_names_what_was_not_measured():
    result = {"kernel": "6.1.0-56-amd64", "functions": 2, "packets": 100, "repeat": 3, "variants": {
        "none": {"sent_pps": 2000, "recv_pps": 2000},
        "kprobe": {"sent_pps": 500, "recv_pps": 500, "events": 4000, "drained_per_s": 800, "lost": 0,
                   "neighbours_recv_pps": [1000, 3000]},
        "ftrace": {"skipped": "function_graph is not allowed in a tracefs instance"}}}
    lines = bench.table(result).splitlines()
    kprobe = next(ln for ln in lines if ln.startswith("| kprobe"))
    assert "| 0.25 | 0.25 |" in kprobe and "4,000" in kprobe and "800" in kprobe
    assert bench.table({**result, "variants": {"none": {"sent_pps": 4000, "recv_pps": 4000},
                                               "kprobe": result["variants"]["kprobe"]}}).count("| 0.12 | 0.25 |") == 1
    assert any("not measured: function_graph is not allowed" in ln for ln in lines)


def test_flood_rates():
    r = overhead_flood.FloodResult(sent=1000, received=900, errors=0, send_s=0.5, recv_s=0.6)
    assert (r.sent_pps, r.recv_pps) == (2000, 1500)
    assert overhead_flood.FloodResult(0, 0, 0, 0.0, 0.0).recv_pps == 0.0


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "bench_overhead.py --kernel" in capsys.readouterr().out


@pytest.mark.root
def test_flood_between_macvlans_counts_every_datagram_and_leaves_no_namespace():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and macvlan links")
    from callpath.probes.workload import leftover_namespaces

    before = set(leftover_namespaces())
    try:
        with overhead_flood.macvlan_pair() as socks:
            first = overhead_flood.flood(*socks, 300)
            second = overhead_flood.flood(*socks, 500)  # the first flood's extra END datagrams are not counted
    except Exception as err:  # noqa: BLE001
        if "link kind" in str(err):
            pytest.skip(f"no macvlan here: {err}")
        raise
    assert (first.sent, first.received) == (300, 300)
    assert (second.sent, second.received) == (500, 500)
    assert second.recv_pps > 0
    assert set(leftover_namespaces()) == before


def test_bpf_stats_delta_counts_only_what_ran_between_snapshots():
    import bpfstats

    before = {1: (1000, 10, "kprobe"), 2: (500, 5, "kprobe")}
    after = {1: (4000, 20, "kprobe"), 2: (500, 5, "kprobe"), 3: (700, 7, "tracing")}  # 3 loaded meanwhile
    assert bpfstats.delta(before, after) == {"bpf_runs": 17, "bpf_ns": 3700, "bpf_ns_per_run": 217.6,
                                             "bpf_by_type": {"kprobe": [10, 300.0], "tracing": [7, 100.0]}}
    assert bpfstats.delta(after, after)["bpf_ns_per_run"] is None


def test_table_adds_bpf_columns_only_when_stats_were_on():
    row = {"sent_pps": 10, "recv_pps": 10, "bpf_runs": 1234, "bpf_ns_per_run": 56.7}
    result = {"kernel": "k", "functions": 1, "packets": 1, "repeat": 1,
              "variants": {"none": dict(row), "aggregate": dict(row)}}
    assert "BPF ns/run" not in bench.table(result)
    text = bench.table(dict(result, bpf_stats=True))
    assert "BPF ns/run" in text and "| 1,234 | 56.7 |" in text


def test_table_shows_the_median_round_and_each_round():
    row = {"sent_pps": 10, "recv_pps": 10, "neighbours_recv_pps": [20, 20], "rounds_ratio_nb": [0.41, 0.33, 0.37]}
    result = {"kernel": "k", "functions": 1, "packets": 1, "repeat": 1, "rounds": 3,
              "variants": {"none": {"sent_pps": 20, "recv_pps": 20}, "aggregate": row}}
    text = bench.table(result)
    assert "| 0.37 (0.41 0.33 0.37) |" in text
    assert "3 rounds" in text
    two = dict(result, rounds=2, variants={"none": result["variants"]["none"],
                                           "aggregate": dict(row, rounds_ratio_nb=[0.24, 0.18])})
    assert "| 0.21 (0.24 0.18) |" in bench.table(two)  # an even count: the mean of the middle two


def test_lab_rerun_result_is_shown_and_saved_and_a_missing_one_fails(tmp_path, capsys):
    import inlab

    out = tmp_path / "r.json"
    assert inlab.show("bench_x", 0, {"rows": [1, 2]}, str(out), lambda r: f"rows={len(r['rows'])}") == 0
    assert capsys.readouterr().out.strip() == "rows=2"
    assert '"rows"' in out.read_text()
    assert inlab.show("bench_x", 3, None, str(tmp_path / "none.json"), lambda r: "unused") == 1
    assert "bench_x: the lab VM run failed (exit status 3)" in capsys.readouterr().err
    assert not (tmp_path / "none.json").exists()



def test_ablations_apply_to_the_program_as_it_is_and_refuse_a_drifted_one():
    import ablation

    from callpath.bpf import program_source

    src = program_source()
    for name in ablation.ABLATIONS:
        out = ablation.ablated_source(name, src)
        assert out != src and name in bench.VARIANTS
    assert "if (CALLPATH_AGGREGATE)\n\t\treturn 0;" in ablation.ablated_source("aggregate-empty", src)
    # the counting clock reads (entry, return) go; streaming's event stamp stays
    assert ablation.ablated_source("aggregate-noclock", src).count("bpf_ktime_get_ns()") == \
        src.count("bpf_ktime_get_ns()") - 2
    with pytest.raises(ValueError, match="aggregate-noclock"):
        ablation.ablated_source("aggregate-noclock", src.replace("st->t0[slot_of(d)] = bpf_ktime_get_ns();", ""))
    # the per-event ablations: the record's stamp goes, the counting clock reads stay
    assert ablation.ablated_source("event-noclock", src).count("bpf_ktime_get_ns()") == \
        src.count("bpf_ktime_get_ns()") - 1
    assert "note_comm((u32)pid_tgid)" not in ablation.ablated_source("event-nocomm", src)
    assert [ablation.mode_of(n) for n in ("event-empty", "aggregate-empty")] == ["fentry-drain", "aggregate"]


def test_an_event_ablation_runs_as_the_per_event_drain(monkeypatch):
    seen, _ = _seen_program(monkeypatch)
    assert bench.run_variant("event-noreserve", SimpleNamespace(), None, None, print) == {"recv_pps": 1}
    assert seen["variant"] == "fentry-drain" and "if (pid_tgid != 0x5eed)" in seen["text"]


def _seen_program(monkeypatch):
    """Make bench.run_callpath record the variant it was asked for and the program text it
    would compile; returns (seen dict, the original bpfgen.program_source)."""
    from callpath.probes import bpfgen

    seen = {}

    def fake_run(variant, plan, socks, args, progress):
        seen["variant"], seen["text"] = variant, bpfgen.program_source()
        return {"recv_pps": 1}

    monkeypatch.setattr(bench, "run_callpath", fake_run)
    return seen, bpfgen.program_source


def test_an_ablation_compiles_the_patched_text_and_puts_the_program_back(monkeypatch):
    from callpath.probes import bpfgen

    seen, original = _seen_program(monkeypatch)
    assert bench.run_variant("aggregate-nopath", SimpleNamespace(), None, None, print) == {"recv_pps": 1}
    assert seen["variant"] == "aggregate" and "if (ns != 0x5eed)" in seen["text"]
    assert bpfgen.program_source is original


def test_a_candidate_program_file_is_a_variant_and_compiles_from_its_text(monkeypatch, tmp_path, capsys):
    from callpath.probes import bpfgen

    cand = tmp_path / "cand.c"
    cand.write_text("/* candidate */")
    seen, original = _seen_program(monkeypatch)
    assert bench.run_variant(f"aggregate@{cand}", SimpleNamespace(), None, None, print) == {"recv_pps": 1}
    assert seen == {"variant": "aggregate", "text": "/* candidate */"} and bpfgen.program_source is original
    with pytest.raises(SystemExit):  # a file that is not there is refused before any boot
        bench.main(["--variants", f"none,aggregate@{tmp_path / 'missing.c'}"])
    assert "aggregate@FILE" in capsys.readouterr().err


def test_perf_profile_is_off_by_default_and_says_why_when_perf_is_missing(monkeypatch):
    """--perf off: nothing runs, the row gets no profile; perf missing: the row says so and
    the measured body still runs."""
    import perfprofile

    row: dict = {}
    with perfprofile.profiled(row, enabled=False):
        ran = True
    assert ran and "profile" not in row
    monkeypatch.setattr(perfprofile.shutil, "which", lambda _name: None)
    with perfprofile.profiled(row):
        ran = "again"
    assert ran == "again" and row["profile"] == ["not profiled: no perf on PATH"]


def test_the_held_sink_holds_the_drain_until_released():
    import threading

    sink = bench.HeldSink()
    done = threading.Event()
    t = threading.Thread(target=lambda: (sink(None), done.set()), daemon=True)
    t.start()
    assert not done.wait(0.2)  # held
    sink.release()
    assert done.wait(5)
