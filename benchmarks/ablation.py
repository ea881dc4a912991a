"""callpath's BPF program with parts of its body taken out: where its cost goes.

Each ablation is callpath's program text (``callpath.bpf.program_source``) with
exact replacements, compiled and attached as the loader does it, so a flood
with it measures the program less that part:

  aggregate-empty     handle_dev() returns at once: the fentry/fexit trampolines,
                      kprobes and tail calls alone
  aggregate-state     handle() finds the thread's stack (thread_state) and returns:
                      the per-CPU lookup and thread check, no push or pop
  aggregate-noclock   no bpf_ktime_get_ns() at entry or return (durations wrong)
  aggregate-nopath    no path interning at entry nor path count (or child order) at return
                      (no path counts, no orders)

The ``event-`` ablations are the per-event program (``fentry-drain``: the drain's sink
only counts) less a part:

  event-empty         handle_dev() returns at once: the trampolines, kprobes and the
                      entry's device facts alone, nothing reserved, nothing drained
  event-noreserve     emit() returns before the ring buffer reserve: all but the ring
                      buffer and the drain (thread name, pid/tgid, filters)
  event-nocomm        no note_comm() at entry (thread names missing)
  event-noclock       no bpf_ktime_get_ns() in the record (timestamps 0)

The results are wrong by construction; only their cost means anything. A
replacement that no longer matches the program raises ``ValueError``, so the
ablations cannot silently drift from the program they stand for.
"""

from __future__ import annotations

#: ablation -> [(text in the program, replacement)]
ABLATIONS: dict[str, list[tuple[str, str]]] = {
    "aggregate-empty": [("\tstruct devinfo d = *dev;\n\tint keep = 1;\n",
                         "\tstruct devinfo d = *dev;\n\tint keep = 1;\n\tif (CALLPATH_AGGREGATE)\n\t\treturn 0;\n")],
    "aggregate-state": [("\t\tst->busy++;\n", "\t\tst->busy++;\n\t\tif (CALLPATH_AGGREGATE) {\n\t\t\tst->busy--;\n"
                         "\t\t\treturn 0;\n\t\t}\n")],
    "aggregate-noclock": [("st->t0[slot_of(d)] = bpf_ktime_get_ns();", "st->t0[slot_of(d)] = 0;"),
                          ("bpf_ktime_get_ns() - st->t0[slot_of(found)]", "1000")],
    # the update stays in the code (behind a test the compiler cannot drop) but never runs
    "aggregate-nopath": [("\tif (parent >= CP_PATHS || id >= CALLPATH_MAX_FUNCS)\n",
                          "\tif (parent != 0x5eed || parent >= CP_PATHS || id >= CALLPATH_MAX_FUNCS)\n"),
                         ("\tstruct pathval *v = path_stats.lookup(&path);\n",
                          "\tstruct pathval *v;\n\n\tif (ns != 0x5eed)\n\t\treturn;\n"
                          "\tv = path_stats.lookup(&path);\n")],
    "event-empty": [("\tstruct devinfo d = *dev;\n\tint keep = 1;\n",
                     "\tstruct devinfo d = *dev;\n\tint keep = 1;\n\tif (!CALLPATH_AGGREGATE)\n\t\treturn 0;\n")],
    # the reserve stays in the code (behind a test the compiler cannot drop) but never runs
    "event-noreserve": [("\te = events.ringbuf_reserve(sizeof(*e));\n",
                         "\tif (pid_tgid != 0x5eed)\n\t\treturn 0;\n\te = events.ringbuf_reserve(sizeof(*e));\n")],
    "event-nocomm": [("\t\tnote_comm((u32)pid_tgid);\n", "\t\t;\n")],
    "event-noclock": [("\te->ts_ns = bpf_ktime_get_ns();\n", "\te->ts_ns = 0;\n")],
}


def mode_of(name: str) -> str:
    """The bench variant an ablation is measured as: ``fentry-drain`` for ``event-*``,
    else ``aggregate``."""
    return "fentry-drain" if name.startswith("event-") else "aggregate"


def ablated_source(name: str, source: str) -> str:
    """``source`` (the program text) with ablation ``name`` applied.

    Raises ``KeyError`` for an unknown name, ``ValueError`` when a replacement's text is
    not in ``source`` exactly once.
    """
    for old, new in ABLATIONS[name]:
        if source.count(old) != 1:
            raise ValueError(f"{name}: {old.strip()[:60]!r} is not in the program exactly once")
        source = source.replace(old, new)
    return source
