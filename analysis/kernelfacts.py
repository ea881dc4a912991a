"""Kernel facts callpath knows by name: renamed or removed functions and their successors.

Each entry cites where the change happened. Facts only *name* a candidate:
``probes.successors.find_successor`` accepts it only when the target kernel's
kallsyms has it and ftrace can attach to it, and the step's verdict then comes
from the successor's recorded calls, never from this list.
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
    """The cited rename of ``name`` when its successor exists in ``symbols``.

    Args:
        name: the documented function name.
        symbols: names present in the kernel (kallsyms text symbols).

    Returns:
        ``(successor, explanation with its source)`` or None. Name derivations
        (``__name``) and the checks against BTF and traceability live in
        ``probes.successors``.
    """
    if name in RENAMED and RENAMED[name][0] in symbols:
        return RENAMED[name]
    return None

