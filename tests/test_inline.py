"""Inline-site discovery from real DWARF (probes/inline.py), and how plans, call trees and
verdicts treat inline sites (probes/plan.py, analysis/instants.py)."""

from __future__ import annotations

import lzma
from pathlib import Path

import pandas as pd
import pytest
from elftools.elf.elffile import ELFFile

from callpath.analysis.calltree import build_forest
from callpath.analysis.conformance import check_specs
from callpath.analysis.outline import parse_outline
from callpath.probes.inline import InlineError, InlineSite, InlineFacts, find_inline_sites, module_sites

FIX = Path(__file__).parent / "fixtures" / "dwarf"


def _symbols(path):
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        return {s.name: (s["st_value"], s["st_size"]) for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC"}


def _lines_at(path, symbol_start, offset):
    """Source lines the line table gives for the instruction at ``symbol_start + offset``."""
    with open(path, "rb") as fh:
        dwarf = ELFFile(fh).get_dwarf_info()
        addr = symbol_start + offset
        out = set()
        for cu in dwarf.iter_CUs():
            prev = None
            for entry in dwarf.line_program_for_CU(cu).get_entries():
                st = entry.state
                if st is None:
                    continue
                if prev is not None and prev.address <= addr < st.address:
                    out.add(prev.line)
                prev = None if st.end_sequence else st
        return out


@pytest.mark.parametrize("name", ["inline2.o", "inline2.so"])
def test_two_inline_sites_found_with_offsets_inside_their_symbols(name):
    path = FIX / name
    sites = find_inline_sites(path, {"bump"}, "fixture")["bump"]
    assert [(s.symbol, s.line) for s in sites] == [("first", 13), ("second", 20)]
    syms = _symbols(path)
    for s in sites:
        start, size = syms[s.symbol]
        assert 0 < s.offset < size
        # the instruction at the site belongs to bump's body (inline2.c lines 6-7)
        assert _lines_at(path, start, s.offset) & {6, 7}, (s, _lines_at(path, start, s.offset))
        assert s.file.endswith("inline2.c") and s.module == "fixture" and s.caller == s.symbol


def test_relocatable_object_offsets_are_exact():
    # gcc 12.2 -O2 -g on Debian 12 (fixture README); objdump -d shows bump's first instruction there
    sites = find_inline_sites(FIX / "inline2.o", {"bump"})["bump"]
    assert [s.probe for s in sites] == ["first+6", "second+18"]


def test_functions_not_inlined_anywhere_give_nothing():
    assert find_inline_sites(FIX / "inline2.o", {"first", "no_such_function"}) == {}


def test_not_elf_or_no_dwarf_raises(tmp_path):
    bad = tmp_path / "x.ko"
    bad.write_bytes(b"not elf")
    with pytest.raises(InlineError):
        find_inline_sites(bad, {"bump"})
    with pytest.raises(InlineError):
        find_inline_sites(tmp_path / "missing.ko", {"bump"})


@pytest.fixture(scope="module")
def macvlan_dbg(tmp_path_factory):
    out = tmp_path_factory.mktemp("dbg") / "macvlan.ko"
    out.write_bytes(lzma.decompress((FIX / "macvlan-6.1.0-56-amd64.ko.xz").read_bytes()))
    return out


def test_real_module_matches_perf_probe(macvlan_dbg):
    # perf probe -m macvlan.ko -D ... on Debian's 6.1.0-56 debug file (issue 10)
    got = find_inline_sites(macvlan_dbg, {"macvlan_queue_xmit", "macvlan_broadcast_one", "macvlan_port_create"},
                            "macvlan")
    assert [s.probe for s in got["macvlan_queue_xmit"]] == ["macvlan_start_xmit+33"]
    assert {s.probe for s in got["macvlan_broadcast_one"]} == {"macvlan_broadcast+179", "macvlan_handle_frame+357"}
    assert [s.probe for s in got["macvlan_port_create"]] == ["macvlan_common_newlink+584"]
    assert got["macvlan_queue_xmit"][0].source.endswith("drivers/net/macvlan.c:578")


def test_module_sites_cache_round_trip(macvlan_dbg, tmp_path):
    first = module_sites(macvlan_dbg, "macvlan", tmp_path)
    assert (tmp_path / "inline-macvlan.json").is_file()
    again = module_sites(macvlan_dbg, "macvlan", tmp_path)
    assert again["macvlan_queue_xmit"] == first["macvlan_queue_xmit"]
    assert sum(map(len, again.values())) == sum(map(len, first.values()))


# -- the plan ------------------------------------------------------------------

class _Syms:
    release = "test"
    traceable_known = True
    blacklist: set = set()
    init_text: set = set()
    clones: dict = {}

    def __init__(self, text):
        self.text = text
        self.traceable = set(text)


DOC = """1. macvlan_start_xmit(skb, dev)
1.1 macvlan_queue_xmit(skb, dev)
1.1.1 dev_forward_skb(vlan->lowerdev, skb)
"""


def _spec():
    return parse_outline(DOC, source="doc.txt")


def _facts():
    site = InlineSite("macvlan_queue_xmit", "macvlan_start_xmit", 33, "drivers/net/macvlan.c", 578, "macvlan",
                      "macvlan_start_xmit")
    return InlineFacts({"macvlan_queue_xmit": [site]}, {"macvlan": "/x/macvlan.ko"}, [], {})


def test_plan_marks_inlined_and_gives_each_site_a_slot_after_documented_functions():
    from callpath.probes.plan import build_plan

    syms = _Syms({"macvlan_start_xmit": "macvlan", "dev_forward_skb": "vmlinux"})
    plan = build_plan([_spec()], syms, inline=_facts())
    fp = plan.functions["macvlan_queue_xmit"]
    assert fp.status == "inlined" and "macvlan_start_xmit" in fp.reason
    assert [s["probe"] for s in fp.inline_sites] == ["macvlan_start_xmit+33"]
    slot = fp.inline_sites[0]["func_id"]
    assert slot == fp.func_id and slot > max(plan.functions[n].func_id for n in ("macvlan_start_xmit", "dev_forward_skb"))
    assert plan.slot_names()[slot] == "macvlan_queue_xmit"
    assert fp.skb_arg is None  # arguments at an inline site are not read


def test_plan_without_dwarf_says_inlining_was_not_checked():
    from callpath.probes.plan import build_plan

    syms = _Syms({"macvlan_start_xmit": "macvlan", "dev_forward_skb": "vmlinux"})
    fp = build_plan([_spec()], syms).functions["macvlan_queue_xmit"]
    assert fp.status == "absent" and "inlining not checked" in fp.reason and "--debuginfo" in fp.reason
    searched = InlineFacts({}, {"macvlan": "/x"}, [], {})
    fp = build_plan([_spec()], syms, inline=searched).functions["macvlan_queue_xmit"]
    assert fp.status == "absent" and "DWARF of macvlan searched" in fp.reason


# -- call trees and verdicts -----------------------------------------------------

def _events(rows):
    cols = ["seq", "ts_ns", "kind", "func_id", "function", "tid", "tgid", "cpu", "skb", "ifindex", "netns", "retval",
            "comm", "mechanism"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def _trace_rows(site_inside=True):
    # slot 0 macvlan_start_xmit, 1 dev_forward_skb, 2 the inline site of macvlan_queue_xmit
    k, s = "kprobe", "inline-site"
    t_site = 150 if site_inside else 500
    rows = [(0, 100, 0, 0, "macvlan_start_xmit", 7, 7, 0, 1, 0, 0, 0, "x", k),
            (1, t_site, 0, 2, "macvlan_queue_xmit", 7, 7, 0, 0, 0, 0, 0, "x", s),
            (2, 200, 0, 1, "dev_forward_skb", 7, 7, 0, 1, 0, 0, 0, "x", k),
            (3, 300, 1, 1, "dev_forward_skb", 7, 7, 0, 0, 0, 0, 0, "x", k),
            (4, 400, 1, 0, "macvlan_start_xmit", 7, 7, 0, 0, 0, 0, 0, "x", k)]
    return sorted(rows, key=lambda r: r[1])


def _plan_dict():
    from callpath.probes.plan import build_plan

    syms = _Syms({"macvlan_start_xmit": "macvlan", "dev_forward_skb": "vmlinux"})
    return build_plan([_spec()], syms, inline=_facts()).to_dict()["functions"]


def test_inline_site_is_an_instant_leaf_without_duration():
    forest = build_forest(_events(_trace_rows()))
    fr = forest.frames
    site = fr[fr["mechanism"].astype(str) == "inline-site"].iloc[0]
    assert forest.function_of(int(site["parent"])) == "macvlan_start_xmit"
    assert pd.isna(site["duration_ns"]) and pd.isna(site["end_ns"]) and not site["complete"]
    # it encloses nothing: dev_forward_skb's parent is macvlan_start_xmit, not the site
    dfs = fr[fr["function"].astype(str) == "dev_forward_skb"].iloc[0]
    assert forest.function_of(int(dfs["parent"])) == "macvlan_start_xmit"
    assert forest.unterminated == 0  # an inline site is not a call that lost its return


def test_inlined_step_observed_at_its_site_and_callee_matched_inside_the_holder():
    plan = _plan_dict()
    (_spec_, [pr]), = check_specs([_spec()], build_forest(_events(_trace_rows())), plan)
    by = {s.function: s for s in pr.steps}
    q = by["macvlan_queue_xmit"]
    assert q.verdict == "observed" and q.count == 1 and q.mechanism == "inline-site" and q.mean_ns is None
    assert "seen at inline site macvlan_start_xmit+33 1×" in q.detail and "no return" in q.detail
    assert q.evidence == ["macvlan_start_xmit", "macvlan_queue_xmit"]
    assert by["dev_forward_skb"].verdict == "observed"


def test_site_outside_the_documented_caller_is_not_observed():
    plan = _plan_dict()
    (_spec_, [pr]), = check_specs([_spec()], build_forest(_events(_trace_rows(site_inside=False))), plan)
    q = {s.function: s for s in pr.steps}["macvlan_queue_xmit"]
    assert q.verdict == "not-exercised" and "inline site" in q.detail


def test_lint_names_the_sites_and_does_not_count_inlined_as_absent():
    from callpath.probes.lint import lint, render_text
    from callpath.probes.plan import build_plan

    syms = _Syms({"macvlan_start_xmit": "macvlan", "dev_forward_skb": "vmlinux"})
    plan = build_plan([_spec()], syms, max_funcs=10**6, inline=_facts())
    result = lint([_spec()], plan, True)
    (doc,) = result["documents"]
    q = {f["function"]: f for f in doc["functions"]}["macvlan_queue_xmit"]
    assert q["status"] == "inlined" and q["inlined_into"] == ["macvlan_start_xmit+33 (drivers/net/macvlan.c:578)"]
    assert result["absent"] == 0 and doc["counts"]["inlined"] == 1
    assert "inline site macvlan_start_xmit+33 (drivers/net/macvlan.c:578)" in render_text(result)


def test_report_says_inline_site_no_return_and_makes_no_latency_row(tmp_path):
    from callpath.analysis.report import build_report, render_markdown
    from callpath.analysis.trace import Trace

    plan = {"functions": _plan_dict(), "release": "test", "mechanism": "kprobe"}
    for fp in plan["functions"].values():
        if fp["name"] in ("macvlan_start_xmit", "dev_forward_skb"):
            fp["skb_arg"] = 1  # hot-path functions: they get latency rows
    trace = Trace(events=_events(_trace_rows()), meta={"kernel": "test", "plan": plan,
                                                       "inline": {"checked": True, "note": "DWARF of macvlan searched"}})
    report = build_report(trace, [_spec()])
    (row,) = report["inline_sites"]
    assert row["function"] == "macvlan_queue_xmit" and row["latency"] == "inline site: no return"
    assert row["sites"] == [{"probe": "macvlan_start_xmit+33", "source": "drivers/net/macvlan.c:578", "count": 1}]
    assert "macvlan_queue_xmit" not in {r["function"] for r in report["latency"]}
    md = render_markdown(report)
    assert "inline site: no return" in md and "Inlining: DWARF of macvlan searched" in md


def test_inline_facts_handed_to_a_lab_guest(tmp_path, monkeypatch):
    """The host writes the inline sites it read; the guest uses them, no DWARF needed there."""
    import shlex

    from callpath.probes import inline

    site = inline.InlineSite("macvlan_queue_xmit", "macvlan_start_xmit", 33, "drivers/net/macvlan.c", 566,
                             "macvlan", "macvlan_start_xmit")
    facts = inline.InlineFacts({"macvlan_queue_xmit": [site]}, {"macvlan": "/x/macvlan.ko"}, [], {})
    monkeypatch.setattr(inline, "discover", lambda *a, **k: facts)
    line = inline.prepare_for_lab([], "6.1.0-test", tmp_path)
    monkeypatch.undo()
    name, value = line.removeprefix("export ").split("=", 1)
    monkeypatch.setenv(name, shlex.split(value)[0])
    got = inline.discover([], {}, None, "6.1.0-test")
    assert got.sites == facts.sites and got.searched == facts.searched
    assert inline._handed_over("6.12.0-other") is None  # facts of another kernel are not used
