"""Static successor discovery: what runs in place of a documented function.

When a documented function is absent from kallsyms, or present but not
traceable (a header ``static inline`` wrapper whose out-of-line copies are
``notrace``, a ``notrace`` function, a kprobe-blacklisted one), the code the
document describes usually still runs under another name. This module finds
that name from the target kernel itself, so it can be probed and the step
judged on the successor's own evidence (``successor-observed`` in
:mod:`analysis.conformance`):

1. **cited facts**: renames recorded with their source in
   :data:`analysis.kernelfacts.RENAMED` (``netif_rx_ni`` -> ``netif_rx``,
   removed in v5.18). A fact only *names* a candidate; it counts only when the
   kernel has it, and the verdict comes from the candidate's recorded calls.
2. **name derivations**: ``__name`` (the implementation behind a wrapper or a
   macro: ``dev_queue_xmit`` -> ``__dev_queue_xmit``, include/linux/netdevice.h
   in v6.1; ``class_register`` -> ``__class_register``, include/linux/device/class.h
   in v6.1) and the name with its leading underscores changed (``__foo`` documented,
   ``foo`` or ``___foo`` in the kernel).

A candidate counts only when it is a text symbol in kallsyms (itself or a
compiler clone ``cand.isra.0``) that ftrace can attach to (listed in
``available_filter_functions``, not kprobe-blacklisted; unknown traceability
is accepted and said). When BTF is available its FUNC records are consulted
too: BTF has a FUNC record only for functions with code of their own (never
for inlined-only ones), so a candidate with a BTF FUNC is a real function,
and a documented name with neither a symbol nor a BTF FUNC was inlined
everywhere or removed. Without DWARF (a later issue) those two cannot be told
apart; :func:`describe_missing` says so.

The static sources cannot show *callees*: that ``br_dev_queue_push_xmit``
really calls ``__dev_queue_xmit`` is shown by the recorded trace (the
successor's frames inside the documented caller), or, in the lab VM, by
ftrace's function_graph tracer filtered on the documented caller
(``set_graph_function``), which lists every traced callee.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.kernelfacts import RENAMED
from .kernel import KernelSymbols


@dataclass
class Successor:
    """A function that runs in place of a documented one.

    Attributes:
        name: the successor's function name (base name, no clone suffix).
        symbol: the kallsyms symbol to attach to (a clone's name when only a
            clone exists).
        module: ``vmlinux`` or the module that holds ``symbol``.
        source: ``"fact"`` (a cited rename in ``analysis.kernelfacts``) or
            ``"derived"`` (a ``__name``/``name`` derivation).
        reason: one line a person can read: how it was found and what backs it.
        in_btf: True/False when BTF was consulted, None without BTF.
        traceable: True when ``available_filter_functions`` lists it, None when
            that file was unreadable (traceability unknown).
    """

    name: str
    symbol: str
    module: str | None
    source: str
    reason: str
    in_btf: bool | None = None
    traceable: bool | None = True


def derived_names(name: str) -> list[str]:
    """Candidate names derived from ``name``, most likely first, without ``name`` itself.

    For a plain name, ``__name`` first (the implementation behind a wrapper or
    macro); for a name with leading underscores, the plain name first.

    >>> derived_names("dev_queue_xmit")
    ['__dev_queue_xmit', '_dev_queue_xmit', '___dev_queue_xmit']
    >>> derived_names("__foo")
    ['foo', '_foo', '___foo', '____foo']
    """
    base = name.lstrip("_")
    if name == base:
        out = [f"__{name}", f"_{base}", f"___{base}"]
    else:
        out = [base, f"_{base}", f"__{base}", f"___{base}", f"__{name}"]
    return [c for c in dict.fromkeys(out) if c and c != name]


def in_btf(btf, name: str) -> bool | None:
    """True when ``btf`` (anything with ``function(name)``) has a FUNC record ``name``; None without BTF."""
    if btf is None:
        return None
    try:
        return btf.function(name) is not None
    except Exception:  # noqa: BLE001 - a corrupt record says nothing either way
        return None


def _listed(sym: str, syms: KernelSymbols) -> bool:
    return (not syms.traceable_known or sym in syms.traceable) and sym not in syms.blacklist


def probe_symbol(name: str, syms: KernelSymbols) -> tuple[str, str | None] | None:
    """The attachable symbol of ``name`` (itself, else a traceable compiler clone), with its module.

    Returns None when ``name`` has no attachable text symbol (absent, ``__init``,
    not in ``available_filter_functions``, blacklisted).
    """
    if name in syms.init_text:
        return None
    if name in syms.text:
        return (name, syms.text[name]) if _listed(name, syms) else None
    good = sorted(c for c in syms.clones.get(name, []) if _listed(c, syms) and ".cold" not in c)
    return (good[0], syms.text.get(good[0])) if good else None


def find_successor(name: str, syms: KernelSymbols, btf=None) -> Successor | None:
    """The function most likely running in place of ``name`` on this kernel, or None.

    Args:
        name: a documented function that is absent or not traceable here.
        syms: the target kernel's symbols (:func:`probes.kernel.load_symbols`).
        btf: a ``probes.btf.BtfIndex`` (anything with ``function(name)``) or None.

    Returns:
        A :class:`Successor` whose symbol can be probed, or None when no cited
        fact and no derivation names an attachable function.
    """
    cands: list[tuple[str, str, str]] = []
    if name in RENAMED:
        succ, why = RENAMED[name]
        cands.append((succ, "fact", why))
    for cand in derived_names(name):
        cands.append((cand, "derived", f"`{cand}` derived from the name"))
    for cand, source, why in cands:
        got = probe_symbol(cand, syms)
        if got is None:
            continue
        symbol, module = got
        found = in_btf(btf, cand)
        facts = [f"in kallsyms ({module or 'vmlinux'})" + (f" as {symbol}" if symbol != cand else "")]
        if found is not None:
            facts.append("a BTF FUNC (code of its own)" if found else "no BTF FUNC record")
        facts.append("traceable" if syms.traceable_known else "traceability unknown")
        return Successor(cand, symbol, module, source, f"{why}; {', '.join(facts)}", found,
                         True if syms.traceable_known else None)
    return None


def describe_missing(name: str, syms: KernelSymbols, btf=None) -> str:
    """Why ``name`` has no symbol, as far as kallsyms and BTF can tell (one line).

    Without DWARF an inlined function and a removed one look the same (no
    symbol, no BTF FUNC): the text says so instead of guessing.
    """
    if in_btf(btf, name):
        return "not in kallsyms but a BTF FUNC exists: its code is not loaded (a module not loaded, or __init code freed)"
    where = "kallsyms or BTF" if btf is not None else "kallsyms"
    return (f"not in {where}: inlined into its callers, or removed "
            "(without DWARF debug info these cannot be told apart); no renamed successor found")
