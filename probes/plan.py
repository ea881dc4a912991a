"""The probe plan: which documented functions can be probed on this kernel, and how.

Each kernel function named by the specs is resolved against kallsyms and
``available_filter_functions``:

* ``traceable``: the symbol exists and ftrace lists it;
* ``clone``: only compiler clones exist (``foo.isra.0``, ``foo.constprop.0``,
  ``foo.part.0``); the traceable clone is probed and named;
* ``not-traceable``: the symbol exists but ftrace does not list it (``notrace``,
  ``__init`` code freed after boot) or kprobes blacklist it;
* ``absent``: not in kallsyms: inlined into its callers, or renamed/removed
  (a known successor is named).

Statements and pointer labels never reach the plan (see :mod:`analysis.calltext`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..analysis.kernelfacts import known_successor
from ..analysis.spec import Spec
from .kernel import KernelSymbols

#: The most functions one program can watch; bpf/callpath.bpf.c defines this many slots.
MAX_FUNCS = 128


@dataclass
class FunctionPlan:
    """How one documented function is probed on the target kernel.

    Attributes:
        name: the documented name.
        status: ``traceable`` | ``clone`` | ``not-traceable`` | ``absent``.
        symbol: the kallsyms symbol to attach to (the clone's name for ``clone``).
        module: ``vmlinux`` or the module that holds the symbol.
        func_id: the slot id events carry (0-based), ``None`` unless probed.
        skb_arg: 1-based argument that carries the ``struct sk_buff *`` (from BTF), or None.
        skb_depth: 1 for ``struct sk_buff *``, 2 for ``struct sk_buff **``.
        netdev_arg: 1-based argument that carries a ``struct net_device *``, or None.
        params: parameter names from BTF, ``[]`` when unknown.
        successor: for ``absent``, a likely replacement present in kallsyms.
        reason: one line a person can read.
        return_type: C spelling of the return type from BTF (``"int"``,
            ``"struct net_device *"``, ``"void"``), None when unknown.
        netlink: True when the function takes a ``struct nlmsghdr *``: its skb is
            a netlink message (rtnetlink handlers), not a packet.
        boot_only: an ``__init`` function: runs once at boot (or module load)
            and its code is freed afterwards, so it cannot be probed later.
        return_names: for an enum return type, value (as a decimal string) ->
            enumerator name, from BTF (``{"3": "RX_HANDLER_PASS"}``).
        observed_by: mechanisms other than the kprobe program that recorded
            this function (``function_graph`` at boot, ``kprobe_events`` during
            module load); such a function is matched even when not kprobe-able.
    """

    name: str
    status: str
    symbol: str | None = None
    module: str | None = None
    func_id: int | None = None
    skb_arg: int | None = None
    skb_depth: int = 1
    netdev_arg: int | None = None
    params: list[str] = field(default_factory=list)
    successor: str | None = None
    reason: str = ""
    return_type: str | None = None
    netlink: bool = False
    boot_only: bool = False
    return_names: dict[str, str] = field(default_factory=dict)
    observed_by: list[str] = field(default_factory=list)

    @property
    def probed(self) -> bool:
        return self.func_id is not None


@dataclass
class ProbePlan:
    """The plan for one kernel: ``functions`` keyed by documented name.

    ``mechanism`` is ``kprobe`` (kprobe/kretprobe pairs); ``release`` the kernel.
    """

    release: str
    mechanism: str
    functions: dict[str, FunctionPlan] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def probed(self) -> list[FunctionPlan]:
        """Functions that get a probe, in slot order."""
        return sorted((f for f in self.functions.values() if f.probed), key=lambda f: f.func_id)

    def to_dict(self) -> dict:
        return {
            "release": self.release,
            "mechanism": self.mechanism,
            "functions": {k: asdict(v) for k, v in self.functions.items()},
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ProbePlan":
        return cls(
            release=data["release"],
            mechanism=data.get("mechanism", "kprobe"),
            functions={k: FunctionPlan(**v) for k, v in data["functions"].items()},
            skipped=list(data.get("skipped", [])),
        )


def resolve_function(name: str, syms: KernelSymbols) -> FunctionPlan:
    """Resolve one documented function against the kernel's symbols (no BTF, no slot)."""
    def listed(sym: str) -> bool:
        return (not syms.traceable_known or sym in syms.traceable) and sym not in syms.blacklist

    if name in syms.init_text:
        return FunctionPlan(name, "not-traceable", symbol=name, module="vmlinux", boot_only=True,
                            reason="boot-only (__init): runs once at boot and its code is freed afterwards")
    if name in syms.text:
        module = syms.text[name]
        if listed(name):
            how = "traceable" if syms.traceable_known else "available_filter_functions unreadable, traceability unknown"
            return FunctionPlan(name, "traceable", symbol=name, module=module, reason=f"in kallsyms ({module}); {how}")
        why = "kprobe blacklist" if name in syms.blacklist else "not in available_filter_functions (notrace, or __init code freed after boot)"
        return FunctionPlan(name, "not-traceable", symbol=name, module=module, reason=f"in kallsyms ({module}) but {why}")
    clones = syms.clones.get(name, [])
    good = [c for c in clones if listed(c) and ".cold" not in c]
    if good:
        sym = sorted(good)[0]
        return FunctionPlan(name, "clone", symbol=sym, module=syms.text.get(sym), reason=f"present only as compiler clone {sym}")
    if clones:
        return FunctionPlan(name, "not-traceable", symbol=clones[0], module=syms.text.get(clones[0]),
                            reason=f"only clones {', '.join(clones)}, none traceable")
    succ = known_successor(name, syms.text)
    if succ:
        return FunctionPlan(name, "absent", successor=succ[0], reason=f"not in kallsyms: {succ[1]}")
    return FunctionPlan(name, "absent", reason="not in kallsyms: inlined into its callers, or renamed/removed in this kernel")


def build_plan(specs: list[Spec], syms: KernelSymbols, btf=None, max_funcs: int = MAX_FUNCS) -> ProbePlan:
    """Build the probe plan for all functions named in ``specs``.

    Args:
        specs: documents already read.
        syms: the target kernel's symbols (:func:`probes.kernel.load_symbols`).
        btf: a ``probes.btf.BtfIndex`` for argument facts, or None.
        max_funcs: slots available in the BPF program.

    Returns:
        A ProbePlan; probed functions get consecutive ``func_id`` slots. When more
        than ``max_funcs`` are traceable the rest are listed in ``skipped``.
    """
    plan = ProbePlan(release=syms.release, mechanism="kprobe")
    next_id = 0
    for spec in specs:
        for name in spec.functions():
            if name in plan.functions:
                continue
            fp = resolve_function(name, syms)
            if btf is not None and fp.status == "absent":
                bf = btf.function(name)
                if bf is not None and bf.module != "vmlinux":
                    # in the module's BTF but not in kallsyms: a module __init
                    # function, whose code is freed once the module has loaded
                    fp.status, fp.boot_only, fp.module = "not-traceable", True, bf.module
                    fp.reason = (f"module init (__init) of {bf.module}: runs once at module load, "
                                 "its code is freed afterwards")
            if btf is not None and fp.symbol:
                bf = btf.function(name)
                if bf is not None and fp.status == "clone":
                    # .isra/.constprop clones may drop or reorder arguments:
                    # the BTF prototype (of the original) says nothing safe
                    # about their registers, so no argument is read
                    fp.return_type = bf.return_type
                    fp.reason += "; arguments not read (a clone's calling convention may differ)"
                elif bf is not None:
                    fp.params = [p.name for p in bf.params]
                    fp.return_type = bf.return_type
                    fp.return_names = {str(v): n for v, n in bf.return_enum}
                    fp.netlink = any(p.target == "struct nlmsghdr" for p in bf.params)
                    skb = bf.skb_arg()
                    if skb and skb[0] <= 6:
                        fp.skb_arg, fp.skb_depth = skb
                    nd = bf.netdev_arg()
                    if nd and nd <= 6:
                        fp.netdev_arg = nd
            if fp.status in ("traceable", "clone"):
                if next_id < max_funcs:
                    fp.func_id = next_id
                    next_id += 1
                else:
                    plan.skipped.append(name)
            plan.functions[name] = fp
    return plan
