"""Kernel facts callpath knows by name: renamed or removed functions and their successors.

Each entry cites where the change happened. Facts are only *suggestions*: a
successor is reported only when the running kernel's kallsyms has it.
"""

from __future__ import annotations

#: old name -> (successor, what happened and where)
RENAMED: dict[str, tuple[str, str]] = {
    "netif_rx_ni": (
        "netif_rx",
        "netif_rx_ni() was removed in v5.18 (net/core/dev.c, 'net: dev: Remove netif_rx_ni()'); "
        "netif_rx() is safe from any context since then",
    ),
    "netif_rx_any_context": (
        "netif_rx",
        "netif_rx_any_context() was removed in v5.18 (net/core/dev.c); use netif_rx()",
    ),
}


def known_successor(name: str, symbols: dict[str, str] | set[str]) -> tuple[str, str] | None:
    """A likely successor of a function missing from kallsyms.

    Args:
        name: the documented function name.
        symbols: names present in the kernel (kallsyms text symbols).

    Returns:
        ``(successor, explanation)`` when a known rename applies and the successor
        exists in ``symbols``; else ``("__" + name, ...)`` or ``(name minus a leading
        "__", ...)`` when exactly that variant exists; else None.
    """
    if name in RENAMED and RENAMED[name][0] in symbols:
        return RENAMED[name]
    for cand in (f"__{name}", name[2:] if name.startswith("__") else None):
        if cand and cand in symbols:
            return cand, f"renamed or split: {cand} exists"
    return None


#: Function-name prefixes -> the module that holds them in distribution kernels
#: (drivers/net/{macvtap,macvlan,ipvlan/ipvtap,ipvlan/ipvlan_main,veth,tap}.c).
MODULE_PREFIXES = (("macvtap_", "macvtap"), ("macvlan_", "macvlan"), ("ipvtap_", "ipvtap"),
                   ("ipvlan_", "ipvlan"), ("veth_", "veth"), ("tap_", "tap"))


def module_of(function: str) -> str | None:
    """The module that likely holds ``function``, by name prefix (None: unknown).

    Used to name ``MODULE:function`` before a module is loaded and to explain
    why a function is missing when its module is not available.
    """
    return next((mod for prefix, mod in MODULE_PREFIXES if function.startswith(prefix)), None)
