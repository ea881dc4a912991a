"""The probe plan: which documented functions can be probed on this kernel, and how.

Each kernel function named by the specs is resolved against kallsyms and
``available_filter_functions``:

* ``traceable``: the symbol exists and ftrace lists it;
* ``clone``: only compiler clones exist (``foo.isra.0``, ``foo.constprop.0``,
  ``foo.part.0``); the traceable clone is probed and named;
* ``not-traceable``: the symbol exists but ftrace does not list it (``notrace``,
  ``__init`` code freed after boot) or kprobes blacklist it;
* ``absent``: not in kallsyms: inlined into its callers, or renamed/removed;
* ``inlined``: not in kallsyms, but the DWARF of the documents' modules
  (:mod:`probes.inline`) holds inline sites of it: each site gets an entry-only
  kprobe at ``symbol+offset`` in a slot of its own (``inline_sites``);
* ``module-not-loaded``: not in kallsyms because the module that defines it
  (:mod:`probes.modindex`, from the release's module files) is not loaded; with
  ``late_attach`` it still gets a slot, and the loader attaches it when the
  module arrives during the run.

For an ``absent`` or ``not-traceable`` function, :mod:`probes.successors`
looks for what runs in its place (cited renames, ``__name``/``name``
derivations checked against kallsyms and BTF); a successor found is probed in
a slot of its own, after every documented function, marked ``successor_of``.

Statements and pointer labels never reach the plan (see :mod:`analysis.calltext`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .successors import describe_missing, find_successor
from ..analysis.spec import Spec
from .kernel import KernelSymbols
from .modindex import fix_command, home_modules

#: The most functions one program can watch; bpf/callpath.bpf.c defines this many slots.
MAX_FUNCS = 128
#: Plan status (and verdict) of a function whose module is not loaded.
MODULE_NOT_LOADED = "module-not-loaded"


@dataclass
class FunctionPlan:
    """How one documented function is probed on the target kernel.

    Attributes:
        name: the documented name.
        status: ``traceable`` | ``clone`` | ``not-traceable`` | ``absent`` |
            ``module-not-loaded`` (``module`` names it; a slot means "attach on arrival").
        symbol: the kallsyms symbol to attach to (the clone's name for ``clone``).
        module: ``vmlinux`` or the module that holds the symbol.
        func_id: the slot id events carry (0-based), ``None`` unless probed.
        skb_arg: 1-based argument that carries the ``struct sk_buff *`` (from BTF), or None.
        skb_depth: 1 for ``struct sk_buff *``, 2 for ``struct sk_buff **``.
        netdev_arg: 1-based argument that carries a ``struct net_device *``, or None.
        params: parameter names from BTF, ``[]`` when unknown.
        successor: for ``absent`` / ``not-traceable``, the function found to run
            in its place (:func:`probes.successors.find_successor`), or None.
        successor_reason: how the successor was found and what backs it.
        successor_of: set on an entry the plan added only as the successor of
            the named documented function (not itself documented).
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
        tracking: probed only for packet identity (an skb free or clone
            function, :mod:`analysis.packets`), not named by any document.
        inline_sites: for ``inlined``: one dict per inline site (``symbol``,
            ``offset`` in bytes, ``probe`` = ``symbol+offset``, ``file``, ``line``,
            ``module``, ``caller`` (DWARF name of the function whose source holds
            the call), ``func_id`` (its own slot, or None when no slot was left));
            ``func_id`` of the entry is its first probed site's slot.
        fentry: when BTF allows fentry/fexit: ``btf_module`` (``vmlinux`` or the
            module), ``btf_id`` (absolute BTF type id of the FUNC), ``nargs``,
            ``returns`` (False for void); ``{}`` otherwise, ``fentry_reason`` says why.
        probe: how the loader attached it: ``fentry`` (fentry/fexit), ``kprobe``
            (kprobe/kretprobe) or ``inline-site`` (entry-only kprobes); None
            until attached. ``probe_reason``: why not fentry ("" when fentry).
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
    successor_reason: str = ""
    successor_of: str | None = None
    tracking: bool = False
    inline_sites: list[dict] = field(default_factory=list)
    fentry: dict = field(default_factory=dict)
    fentry_reason: str = ""
    probe: str | None = None
    probe_reason: str = ""

    @property
    def probed(self) -> bool:
        return self.func_id is not None


@dataclass
class ProbePlan:
    """The plan for one kernel: ``functions`` keyed by documented name.

    ``mechanism`` is ``kprobe`` (kprobe/kretprobe pairs); ``release`` the kernel.
    ``fields``: the kernel struct fields the BPF program reads and where BTF
    put them (:func:`probes.fields.resolve_fields`), ``{}`` until resolved.
    """

    release: str
    mechanism: str
    functions: dict[str, FunctionPlan] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    fields: dict[str, dict] = field(default_factory=dict)

    def probed(self) -> list[FunctionPlan]:
        """Functions that get a probe, in slot order."""
        return sorted((f for f in self.functions.values() if f.probed), key=lambda f: f.func_id)

    def slot_names(self) -> dict[int, str]:
        """Slot -> documented name, every slot: an inline site's slot names its inlined function."""
        out = {f.func_id: f.name for f in self.functions.values() if f.probed}
        for f in self.functions.values():
            out.update({s["func_id"]: f.name for s in f.inline_sites if s.get("func_id") is not None})
        return out

    def site_slots(self) -> dict[int, dict]:
        """Slot -> inline site dict (with ``function``) for every probed inline site."""
        return {s["func_id"]: s | {"function": f.name} for f in self.functions.values()
                for s in f.inline_sites if s.get("func_id") is not None}

    def to_dict(self) -> dict:
        return {
            "release": self.release,
            "mechanism": self.mechanism,
            "functions": {k: asdict(v) for k, v in self.functions.items()},
            "skipped": list(self.skipped),
            "fields": {k: dict(v) for k, v in self.fields.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ProbePlan":
        return cls(
            release=data["release"],
            mechanism=data.get("mechanism", "kprobe"),
            functions={k: FunctionPlan(**v) for k, v in data["functions"].items()},
            skipped=list(data.get("skipped", [])),
            fields={k: dict(v) for k, v in data.get("fields", {}).items()},
        )


def resolve_function(name: str, syms: KernelSymbols, btf=None, home: list[str] | None = None,
                     index=None, inline=None) -> FunctionPlan:
    """Resolve one documented function against the kernel's symbols (no slot).

    ``btf`` (a ``probes.btf.BtfIndex`` or None) is consulted only to name a
    successor (:func:`probes.successors.find_successor`) for an ``absent`` or
    ``not-traceable`` function. ``home``: the modules that define ``name``
    when kallsyms lacks it (:func:`probes.modindex.home_modules`); ``index``
    the :class:`probes.modindex.ModuleIndex` (tells ``__init`` code apart).
    ``inline``: :class:`probes.inline.InlineFacts` (DWARF), or None when no
    debug info was looked at; an ``absent`` function with inline sites becomes
    ``inlined``, the others say in ``reason`` what DWARF could (not) check.
    """
    fp = _resolve(name, syms)
    if fp.status == "absent" and home:
        _module_home(fp, home, syms, index)
    if fp.status == "absent" and inline is not None and inline.sites.get(name):
        _mark_inlined(fp, inline.sites[name])
        return fp
    if fp.status in ("absent", "not-traceable") and not fp.boot_only:
        succ = find_successor(name, syms, btf)
        if succ:
            fp.successor, fp.successor_reason = succ.name, succ.reason
            if fp.status == "absent":
                fp.reason = f"not in kallsyms; successor {succ.name}: {succ.reason}"
        elif fp.status == "absent":
            fp.reason = describe_missing(name, syms, btf)
    if fp.status == "absent" and not fp.successor:
        if inline is not None and inline.searched:
            fp.reason += f"; no inline site of it in the DWARF searched ({', '.join(inline.searched)})"
        fp.reason += "; " + (inline.note() if inline is not None else _NO_DWARF)
    if fp.status == "absent" and home and len(home) > 1:
        fp.reason += f"; static copies exist in modules {', '.join(home)} (none loaded, none on this document's path)"
    return fp


#: Said of an absent function when no debug info was looked at.
_NO_DWARF = ("inlining not checked: no DWARF looked at (install the kernel's debug info: "
             "`tools/fetch-debuginfo.sh RELEASE`, `make setup` for the lab kernel, or --debuginfo DIR)")
#: Most inline sites probed per inlined function (sites in documented functions first).
MAX_SITES = 8


def _mark_inlined(fp: FunctionPlan, sites) -> None:
    """Make an ``absent`` entry ``inlined`` with its inline sites (``probes.inline.InlineSite``), in place."""
    fp.status, fp.successor, fp.successor_reason = "inlined", None, ""
    fp.inline_sites = [s.to_dict() | {"func_id": None} for s in sites]
    mods = list(dict.fromkeys(s.module for s in sites))
    fp.module = fp.module or (mods[0] if len(mods) == 1 else ", ".join(mods))
    holders = list(dict.fromkeys(f"{s.symbol} ({s.source.rsplit('/', 1)[-1]})" for s in sites))
    fp.reason = (f"inlined (DWARF): {len(sites)} inline site{'s' if len(sites) != 1 else ''} in "
                 + ", ".join(holders[:6]) + (f" and {len(holders) - 6} more" if len(holders) > 6 else "")
                 + "; probed at its inline sites (entry only: an inline site has no return)")


def _assign_site_slots(plan: "ProbePlan", specs: list[Spec], next_id: int, max_funcs: int) -> int:
    """Give inline sites their slots, after every documented function; returns the next free slot.

    Per inlined function at most :data:`MAX_SITES` sites: first those inside
    documented functions (by symbol or DWARF caller), then those in the modules
    of the documents that name the function; sites left without a slot keep
    ``func_id`` None and the reason says how many.
    """
    documented = {f for spec in specs for f in spec.functions()}
    near: dict[str, set] = {}  # function -> modules of the documents naming it
    for spec in specs:
        mods = {plan.functions[f].module for f in spec.functions()
                if f in plan.functions and plan.functions[f].status != "inlined"}
        for f in spec.functions():
            near.setdefault(f, set()).update(mods)
    for fp in plan.functions.values():
        if fp.status != "inlined":
            continue
        order = sorted(range(len(fp.inline_sites)), key=lambda i: (
            fp.inline_sites[i]["symbol"].split(".")[0] not in documented
            and fp.inline_sites[i].get("caller") not in documented,
            fp.inline_sites[i].get("module") not in near.get(fp.name, ()), i))
        for n, i in enumerate(order):
            if n < MAX_SITES and next_id < max_funcs:
                fp.inline_sites[i]["func_id"] = next_id
                next_id += 1
        probed = [s["func_id"] for s in fp.inline_sites if s["func_id"] is not None]
        fp.func_id = min(probed) if probed else None
        left = len(fp.inline_sites) - len(probed)
        if left:
            fp.reason += f"; {left} of {len(fp.inline_sites)} sites not probed (no slot left, or over {MAX_SITES})"
        if not probed:
            plan.skipped.append(fp.name)
    return next_id


def _module_home(fp: FunctionPlan, home: list[str], syms: KernelSymbols, index) -> None:
    """Turn an ``absent`` entry whose function a module defines into what that module's state says (in place)."""
    if len(home) > 1:
        return  # several static copies, none on this document's path: the reason says so later
    mod = fp.module = home[0]
    init = index is not None and index.is_init(mod, fp.name)
    loaded = mod in syms.text.values()
    if init:
        fp.status, fp.boot_only = ("not-traceable", True) if loaded else (MODULE_NOT_LOADED, True)
        fp.reason = (f"module init (__init) of {mod}: runs once while {mod} loads, its code is freed afterwards"
                     + ("" if loaded else f"; {mod} is not loaded"))
    elif loaded:
        fp.reason = f"{mod} is loaded but kallsyms lacks {fp.name}, which its module file defines"
    else:
        clones = [] if index is None or fp.name in index.functions else \
            sorted(c for c in index.clones_in(fp.name, mod) if ".cold" not in c)
        fp.status, fp.symbol = MODULE_NOT_LOADED, (clones[0] if clones else fp.name)
        fp.reason = f"in module {mod}, not loaded when the plan was made; {fix_command(mod)}"


def _resolve(name: str, syms: KernelSymbols) -> FunctionPlan:
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
    return FunctionPlan(name, "absent", reason="not in kallsyms")


def _btf_facts(fp: FunctionPlan, btf) -> None:
    """Fill ``fp``'s argument and return facts from BTF (in place)."""
    bf = btf.function(fp.name)
    if bf is None:
        fp.fentry_reason = "no BTF prototype" + (f" (only the compiler clone {fp.symbol} exists)"
                                                 if fp.status == "clone" else "")
    elif fp.status == "clone":
        # .isra/.constprop clones may drop or reorder arguments:
        # the BTF prototype (of the original) says nothing safe
        # about their registers, so no argument is read
        fp.return_type = bf.return_type
        fp.reason += "; arguments not read (a clone's calling convention may differ)"
        fp.fentry_reason = f"a compiler clone ({fp.symbol}): BTF describes the original, not the clone"
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
        _fentry_facts(fp, bf, btf)


def _fentry_facts(fp: FunctionPlan, bf, btf) -> None:
    """Whether ``fp`` can take fentry/fexit, from its BTF prototype: ``fp.fentry`` or ``fp.fentry_reason``.

    fentry/fexit programs see the arguments as an array of u64 (one per
    parameter: x86-64 BPF trampoline, kernel/bpf/trampoline.c and
    arch/x86/net/bpf_jit_comp.c, 5.5+), so a parameter passed by value as a
    struct or union, or a variadic prototype, rules them out here.
    """
    where = btf.func_type_id(fp.name) if hasattr(btf, "func_type_id") else None
    if fp.symbol != fp.name or where is None:
        fp.fentry_reason = "no BTF FUNC record under its kallsyms name"
        return
    if bf.variadic:
        fp.fentry_reason = "variadic prototype"
        return
    by_value = [p.name or f"argument {i}" for i, p in enumerate(bf.params, 1)
                if p.pointer_depth == 0 and p.target.startswith(("struct ", "union "))]
    if by_value:
        fp.fentry_reason = f"takes a struct by value ({', '.join(by_value)})"
        return
    fp.fentry = {"btf_module": where[0], "btf_id": where[1], "nargs": len(bf.params),
                 "returns": bf.return_type != "void"}


def build_plan(specs: list[Spec], syms: KernelSymbols, btf=None, max_funcs: int = MAX_FUNCS,
               index=None, late_attach: bool = False, tracking: bool = False, inline=None) -> ProbePlan:
    """Build the probe plan for all functions named in ``specs``.

    Args:
        specs: documents already read.
        syms: the target kernel's symbols (:func:`probes.kernel.load_symbols`).
        btf: a ``probes.btf.BtfIndex`` for argument facts, or None.
        max_funcs: slots available in the BPF program.
        index: the release's :class:`probes.modindex.ModuleIndex`, or None:
            names the module of functions kallsyms lacks.
        late_attach: give ``module-not-loaded`` functions (not ``__init``) a
            slot too, for the loader to attach when their module arrives.
        tracking: also probe the packet-tracking functions
            (``analysis.packets.TRACKING_FUNCTIONS``: ``kfree_skbmem``,
            ``skb_clone`` ...) that are traceable, with ``tracking=True``.
        inline: :class:`probes.inline.InlineFacts` from the documents' modules'
            DWARF, or None (not looked at): ``inlined`` functions and their sites.

    Returns:
        A ProbePlan; probed functions get consecutive ``func_id`` slots, documented
        functions first, then successors (entries with ``successor_of`` set). When
        more than ``max_funcs`` are traceable the rest are listed in ``skipped``.
    """
    plan = ProbePlan(release=syms.release, mechanism="kprobe")
    next_id = 0
    for spec in specs:
        homes = home_modules(spec.functions(), index, syms.text, syms.clones)
        for name in spec.functions():
            if name in plan.functions:
                continue
            fp = resolve_function(name, syms, btf, homes.get(name), index, inline)
            if btf is not None and fp.status == "absent":
                bf = btf.function(name)
                if bf is not None and bf.module != "vmlinux":
                    # in the module's BTF but not in kallsyms: a module __init
                    # function, whose code is freed once the module has loaded
                    fp.status, fp.boot_only, fp.module = "not-traceable", True, bf.module
                    fp.successor, fp.successor_reason = None, ""
                    fp.reason = (f"module init (__init) of {bf.module}: runs once at module load, "
                                 "its code is freed afterwards")
            if btf is not None and fp.symbol:
                _btf_facts(fp, btf)
            if fp.status in ("traceable", "clone") or (late_attach and fp.status == MODULE_NOT_LOADED
                                                         and not fp.boot_only):
                if next_id < max_funcs:
                    fp.func_id = next_id
                    next_id += 1
                else:
                    plan.skipped.append(name)
            plan.functions[name] = fp
    # inline sites, then successors of absent / not-traceable functions: probed
    # after every documented function, so they never take a documented function's slot
    next_id = _assign_site_slots(plan, specs, next_id, max_funcs)
    for fp in list(plan.functions.values()):
        if not fp.successor or fp.successor in plan.functions:
            continue
        sp = resolve_function(fp.successor, syms)
        if sp.status not in ("traceable", "clone"):
            continue
        sp.successor_of = fp.name
        sp.reason = f"successor of {fp.name}: {fp.successor_reason}"
        if btf is not None:
            _btf_facts(sp, btf)
        if next_id < max_funcs:
            sp.func_id = next_id
            next_id += 1
        else:
            plan.skipped.append(sp.name)
        plan.functions[sp.name] = sp
    if tracking:
        _add_tracking(plan, syms, btf, next_id, max_funcs)
    return plan


def _add_tracking(plan: ProbePlan, syms: KernelSymbols, btf, next_id: int, max_funcs: int) -> None:
    """Probe the skb free and fork functions of :mod:`analysis.packets` (packet
    identity), after every documented function and successor, marked ``tracking``."""
    from ..analysis.packets import TRACKING_FUNCTIONS

    for name in TRACKING_FUNCTIONS:
        if name in plan.functions or next_id >= max_funcs:
            continue
        tp = resolve_function(name, syms)
        if tp.status != "traceable":
            continue
        if btf is not None:
            _btf_facts(tp, btf)
        tp.tracking, tp.func_id = True, next_id
        tp.reason = "packet tracking (skb free / clone): not documented, never a step"
        next_id += 1
        plan.functions[name] = tp
