"""Probes for modules that arrive during the run: the loader queues their functions and attaches
them when the module shows up (a fake bcc object stands in for the kernel)."""

from callpath.analysis.outline import parse_outline
from callpath.probes.kernel import KernelSymbols
from callpath.probes.loader import ProbeError, Recorder
from callpath.probes.modindex import ModuleIndex
from callpath.probes.plan import build_plan

import pytest


class FakeBpf:
    """Records attach calls; refuses symbols of modules that are not loaded, like the kernel."""

    def __init__(self, loaded_symbols):
        self.loaded_symbols = loaded_symbols
        self.kprobes, self.kretprobes = [], []
        self.cfg = {}

    def attach_kprobe(self, event, fn_name):
        if event not in self.loaded_symbols:
            raise Exception(f"cannot attach kprobe, probe entry may not exist\nFailed to attach {event}")
        self.kprobes.append(event)

    def attach_kretprobe(self, event, fn_name, maxactive=0):
        self.kretprobes.append(event)

    def __getitem__(self, name):
        return self.cfg


def _plan():
    idx = ModuleIndex(release="t")
    idx.add("bridge", "bridge.ko", ["br_handle_frame", "br_forward"])
    spec = parse_outline("1. veth_xmit(skb)\n2. br_handle_frame(skb)\n2.1 br_forward(skb)\n", "b.txt")
    syms = KernelSymbols(release="t", text={"veth_xmit": "veth"}, traceable={"veth_xmit"}, traceable_known=True)
    return build_plan([spec], syms, index=idx, late_attach=True)


def test_functions_of_a_late_module_attach_when_it_arrives():
    plan = _plan()
    rec = Recorder(plan)
    rec._bpf = FakeBpf({"veth_xmit"})
    modules = set()
    rec.loaded_modules = lambda: set(modules)
    rec._configure_late = lambda mod, fps: None  # no BTF here
    rec.attach_all()
    assert rec.attach.attached == ["veth_xmit"] and list(rec.pending) == ["bridge"]
    assert rec.attach_arrived() == []  # not there yet: nothing tried, nothing failed
    assert rec.attach.failed == {}
    modules.add("bridge")
    rec._bpf.loaded_symbols |= {"br_handle_frame", "br_forward"}
    assert rec.attach_arrived() == ["bridge"]
    assert rec.pending == {} and "bridge" in rec.arrived
    assert rec._bpf.kprobes == ["veth_xmit", "br_handle_frame", "br_forward"]
    fp = plan.functions["br_forward"]
    assert fp.status == "traceable" and "attached when bridge arrived" in fp.reason
    assert rec.attach_arrived() == []  # once only


def test_only_late_functions_is_not_an_error_but_nothing_at_all_is():
    plan = _plan()
    plan.functions["veth_xmit"].func_id = None
    rec = Recorder(plan)
    rec._bpf = FakeBpf(set())
    rec.attach_all()  # waiting for bridge: fine
    plan.functions["br_handle_frame"].func_id = plan.functions["br_forward"].func_id = None
    rec2 = Recorder(plan)
    rec2._bpf = FakeBpf(set())
    with pytest.raises(ProbeError):
        rec2.attach_all()


def test_module_that_never_arrived_gets_its_verdict():
    """After the run the plan says 'module X not loaded during the run' with the fix, and the
    conformance verdict is module-not-loaded, never absent."""
    from callpath.analysis.conformance import Matcher
    from callpath.probes.record import _settle_late_modules

    plan = _plan()
    _settle_late_modules(plan)
    fp = plan.functions["br_forward"]
    assert fp.func_id is None and fp.reason.startswith("module bridge not loaded during the run")
    assert "modprobe bridge" in fp.reason and "--load-modules" in fp.reason

    class NoForest:
        frames = []

        def frames_of(self, name):
            raise AssertionError("a module-not-loaded step is never matched")

    spec = parse_outline("2. br_handle_frame(skb)\n2.1 br_forward(skb)\n", "b.txt")
    m = Matcher(NoForest(), plan.to_dict()["functions"])
    res = m.check_path(spec.paths[0])
    assert [s.verdict for s in res.steps] == ["module-not-loaded", "module-not-loaded"]
    assert "module bridge not loaded during the run" in res.steps[1].detail


class FakeBpfConfigure(FakeBpf):
    """Also what Recorder.configure() touches: workers, func_cfg, raw tracepoints."""

    def __init__(self, refuse_raw_tp=False):
        super().__init__(set())
        self.raw_tps, self.refuse_raw_tp = [], refuse_raw_tp

    def load_func(self, name, kind):
        return type("Fn", (), {"fd": 3})()

    def __getitem__(self, name):
        class Table(dict):
            def __setitem__(self, key, value):  # ctypes keys: kept by value
                super().__setitem__(getattr(key, "value", key), value)
        return self.cfg.setdefault(name, Table())

    def attach_raw_tracepoint(self, tp, fn_name):
        if self.refuse_raw_tp:
            raise Exception("Failed to attach BPF to raw tracepoint")
        self.raw_tps.append((tp, fn_name))


@pytest.mark.parametrize("aggregate, raw_tps", [(True, [(b"sched_switch", b"on_sched_switch")]), (False, [])])
def test_sched_switch_is_hooked_only_where_the_program_keeps_per_thread_stacks(aggregate, raw_tps):
    rec = Recorder(_plan(), aggregate=aggregate)
    rec._bpf = FakeBpfConfigure()
    rec.configure()
    assert rec._bpf.raw_tps == raw_tps


def test_a_refused_sched_switch_hook_stops_counting_with_a_reason():
    rec = Recorder(_plan(), aggregate=True)
    rec._bpf = FakeBpfConfigure(refuse_raw_tp=True)
    with pytest.raises(ProbeError, match="sched_switch raw tracepoint"):
        rec.configure()
