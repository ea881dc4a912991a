"""Packet identity: skb lifetimes, forks, hand-over, the address-window fallback."""

from pathlib import Path

import pytest

from callpath.analysis.calltree import build_forest
from callpath.analysis.packets import FORK_FUNCTIONS, FREE_FUNCTIONS, assign_packets
from callpath.analysis.trace import events_from_rows, read_trace

FIXTURE = Path(__file__).parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
A, B = 0xFFFF888000001000, 0xFFFF888000002000


class Ev:
    def __init__(self):
        self.rows, self.ids, self.t = [], {}, 1_000

    def e(self, fn, skb=0, tid=10, cpu=0, ifindex=2, dt=100):
        self.t += dt
        self.rows.append((len(self.rows), self.t, 0, self.ids.setdefault(fn, len(self.ids)), tid, tid, cpu, skb, ifindex, 7, 0, b"t"))
        return self

    def r(self, fn, tid=10, cpu=0, retval=0, dt=100):
        self.t += dt
        self.rows.append((len(self.rows), self.t, 1, self.ids.setdefault(fn, len(self.ids)), tid, tid, cpu, 0, 0, 0, retval, b"t"))
        return self

    def run(self, plan_skb=(), mode=None, window_ns=10**9):
        ev = events_from_rows(self.rows, {v: k for k, v in self.ids.items()})
        plan = {n: {"func_id": i, "skb_arg": 1 if n in plan_skb else None} for n, i in self.ids.items()}
        return assign_packets(build_forest(ev), plan, window_ns=window_ns, mode=mode)


def _packet(p, fn):
    return p.calls.loc[p.calls["function"] == fn, "packet"].tolist()


def test_free_ends_the_packet_and_a_reused_address_is_a_new_one():
    ev = Ev()
    ev.e("xmit", A).r("xmit").e("kfree_skbmem", A).r("kfree_skbmem").e("xmit", A).r("xmit")
    p = ev.run(plan_skb=("xmit", "kfree_skbmem"))
    assert p.mode == "tracked" and p.free_events == 1
    first, second = _packet(p, "xmit")
    assert first != second
    assert p.lifetimes["ended"].tolist()[0] == "free"


def test_without_free_the_same_address_is_one_packet_across_threads_and_cpus():
    ev = Ev()
    ev.e("xmit", A, tid=10, cpu=0).r("xmit", tid=10).e("rcv", A, tid=20, cpu=1).r("rcv", tid=20, cpu=1)
    p = ev.run(plan_skb=("xmit", "rcv"))
    assert p.mode == "address-window"
    assert len(set(p.calls["packet"])) == 1
    assert set(p.calls["tid"]) == {10, 20}


def test_clone_return_value_joins_the_original_packet():
    ev = Ev()
    ev.e("bcast", A).e("skb_clone", A).r("skb_clone", retval=B - (1 << 64)).r("bcast")  # retval is signed in the trace
    ev.e("netif_rx", B, tid=30).r("netif_rx", tid=30)
    p = ev.run(plan_skb=("bcast", "skb_clone", "netif_rx"))
    assert _packet(p, "netif_rx") == _packet(p, "bcast")
    lt = p.lifetimes.set_index("skb")
    assert lt.at[B, "born"] == "fork" and lt.at[B, "parent"] == lt.at[A, "lifetime"]


def test_address_window_splits_on_idle_and_on_a_repeat_on_the_same_device():
    ev = Ev()
    ev.e("xmit", A).r("xmit").e("xmit", A, ifindex=3).r("xmit")  # same function, other device: same packet
    ev.e("xmit", A, ifindex=3).r("xmit")                          # again on device 3: a new packet
    ev.e("rcv", A, dt=5_000).r("rcv")                             # idle longer than the window: new
    p = ev.run(plan_skb=("xmit", "rcv"), window_ns=2_000)
    ids = p.calls["packet"].tolist()
    assert ids[0] == ids[1] != ids[2] != ids[3]
    assert set(p.lifetimes["ended"]) >= {"repeat", "idle"}


def test_calls_without_skb_inherit_from_callee_then_caller():
    ev = Ev()
    ev.e("rx_core").e("handle_frame", A).e("lookup").r("lookup").r("handle_frame").r("rx_core")
    p = ev.run(plan_skb=("handle_frame",))
    via = dict(zip(p.calls["function"], p.calls["via"]))
    assert via == {"rx_core": "callee", "handle_frame": "arg", "lookup": "caller"}
    assert len(set(p.calls["packet"])) == 1


def test_netlink_skbs_are_not_packets():
    ev = Ev()
    ev.e("rtnl_newlink", A).r("rtnl_newlink")
    ev2 = events_from_rows(ev.rows, {v: k for k, v in ev.ids.items()})
    p = assign_packets(build_forest(ev2), {"rtnl_newlink": {"func_id": 0, "skb_arg": 1, "netlink": True}})
    assert not len(p.calls)


def test_tracking_function_names_exist_in_this_kernel():
    """The names are checked against kallsyms when it is readable (the 6.18 dev machine)."""
    try:
        syms = {line.split()[2] for line in open("/proc/kallsyms") if " t " in line.lower()}
    except OSError:
        pytest.skip("no /proc/kallsyms")
    missing = [f for f in FREE_FUNCTIONS + FORK_FUNCTIONS if f != "pskb_copy" and f not in syms]
    assert not missing


def test_real_fixture_trace():
    trace = read_trace(FIXTURE)
    plan = trace.meta["plan"]["functions"]
    p = assign_packets(build_forest(trace.events), plan)
    assert p.mode == "address-window" and "guess" in p.describe()
    assert p.fork_events == (trace.events["function"] == "skb_clone").sum() // 2
    assert not p.calls["function"].isin(["rtnl_newlink", "__rtnl_newlink"]).any()
    # macvlan_hash_lookup takes no skb: it gets the packet of macvlan_start_xmit around it
    assert set(p.calls.loc[p.calls["function"] == "macvlan_hash_lookup", "via"]) == {"caller"}


def test_plan_adds_tracking_probes_after_documented_functions():
    from callpath.analysis.outline import parse_outline
    from callpath.probes.kernel import KernelSymbols
    from callpath.probes.plan import build_plan

    spec = parse_outline("1. a_fn(skb)\n1.1 skb_clone(skb)\n", "t.txt")
    s = KernelSymbols(release="test", text={n: "vmlinux" for n in ("a_fn", "skb_clone", "kfree_skbmem")}, clones={},
                      traceable={"a_fn", "skb_clone", "kfree_skbmem"}, traceable_known=True, blacklist=set())
    assert "kfree_skbmem" not in build_plan([spec], s).functions  # off unless asked (lint, static checks)
    plan = build_plan([spec], s, tracking=True)
    free = plan.functions["kfree_skbmem"]
    assert free.tracking and free.func_id == 2
    assert not plan.functions["skb_clone"].tracking  # documented: stays a step
    assert "skb_copy" not in plan.functions  # not in this kernel's kallsyms: not planned
