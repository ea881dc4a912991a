"""Convert ftrace text output into callpath's event model.

Two kinds of text, both read from tracefs's ``trace`` file:

* **function_graph** (boot-time, ``ftrace=function_graph
  ftrace_graph_filter=FUNC`` on the kernel command line): nested calls with
  durations; kernel/trace/trace_functions_graph.c prints ``CPU) DURATION |
  name() {``, ``name();`` and ``} /* name */``. It gives durations, not start
  times: start times are rebuilt per CPU by laying calls end to end (exact
  nesting and order, exact durations, approximate absolute times).
* **kprobe events** (``p:``/``r:`` lines in ``kprobe_events``), used while a
  module loads: ``TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: (func+0x0/0x..)`` for
  entries and ``(caller+off <- func)`` for returns (kernel/trace/trace_kprobe.c).

Both return rows in ``probes.event.TRACE_COLUMNS`` order, so the call-tree
rebuild and the matching apply unchanged.
"""

from __future__ import annotations

import re

ENTRY, RETURN = 0, 1

_GRAPH_RE = re.compile(
    r"^\s*(?P<cpu>\d+)\)\s*(?:[+!#*@$]\s*)?(?:(?P<dur>\d+(?:\.\d+)?)\s*us\s*)?\|\s(?P<body>.*)$"
)
#: A function of a module is printed with its module: ``br_handle_frame [bridge]() {``
#: (kernel/trace/trace_functions_graph.c via ``%ps``, seen on Debian 6.1).
_ENTRY_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?:\s+\[[\w-]+\])?\(\)\s*\{\s*$")
_LEAF_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?:\s+\[[\w-]+\])?\(\);\s*$")
_CLOSE_RE = re.compile(r"^\}(?:\s*/\*\s*(?P<name>[\w.]+)\s*\*/)?\s*$")


def parse_function_graph(text: str) -> tuple[list[tuple], dict]:
    """Parse function_graph output.

    Args:
        text: the content of ``/sys/kernel/tracing/trace`` with the
            function_graph tracer.

    Returns:
        ``(rows, stats)``: rows as ``(seq, ts_ns, kind, func_id, tid, tgid, cpu,
        skb, ifindex, netns, retval, comm, function)`` — ``func_id`` 0 and the
        name in the extra last field; ``stats`` counts ``lines``, ``calls``,
        ``unmatched_closes`` and ``functions`` (set of names).
    """
    rows: list[tuple] = []
    clock: dict[int, int] = {}
    stacks: dict[int, list[tuple[str, int]]] = {}
    stats = {"lines": 0, "calls": 0, "unmatched_closes": 0, "functions": set()}

    def emit(ts, kind, cpu, name):
        rows.append((len(rows), ts, kind, 0, 0, 0, cpu, 0, 0, 0, 0, "boot", name))

    for line in text.splitlines():
        m = _GRAPH_RE.match(line)
        if not m:
            continue
        stats["lines"] += 1
        cpu = int(m.group("cpu"))
        dur_ns = int(float(m.group("dur")) * 1000) if m.group("dur") else None
        body = m.group("body").strip()
        t = clock.setdefault(cpu, 0)
        stack = stacks.setdefault(cpu, [])
        if e := _ENTRY_RE.match(body):
            name = e.group("name")
            emit(t, ENTRY, cpu, name)
            stack.append((name, t))
            clock[cpu] = t + 1
            stats["calls"] += 1
            stats["functions"].add(name)
        elif e := _LEAF_RE.match(body):
            name = e.group("name")
            d = dur_ns or 0
            emit(t, ENTRY, cpu, name)
            emit(t + d, RETURN, cpu, name)
            clock[cpu] = t + d + 1
            stats["calls"] += 1
            stats["functions"].add(name)
        elif e := _CLOSE_RE.match(body):
            if not stack:
                stats["unmatched_closes"] += 1
                continue
            name, start = stack.pop()
            end = max(t, start + (dur_ns or 0))
            emit(end, RETURN, cpu, name)
            clock[cpu] = end + 1
    stats["functions"] = sorted(stats["functions"])
    return rows, stats


_KPROBE_RE = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+"
    r"(?P<event>[\w.]+):\s+\((?P<what>[^)]*)\)(?:\s+arg1=(?P<arg1>\S+))?"
)


def parse_kprobe_events(text: str, events: dict[str, tuple[str, int]]) -> list[tuple]:
    """Parse kprobe-event lines from the ftrace ``trace`` file.

    Args:
        text: trace content.
        events: event name -> ``(function, kind)`` with kind ENTRY or RETURN
            (the names the caller used in ``kprobe_events``).

    Returns:
        rows like :func:`parse_function_graph` (with real timestamps in ns,
        task ids and comms; return events carry ``arg1=$retval`` when present).
    """
    rows: list[tuple] = []
    for line in text.splitlines():
        m = _KPROBE_RE.match(line)
        if not m or m.group("event") not in events:
            continue
        function, kind = events[m.group("event")]
        ts = int(round(float(m.group("ts")) * 1e9))
        pid = int(m.group("pid"))
        ret = 0
        if kind == RETURN and m.group("arg1"):
            try:
                ret = int(m.group("arg1"), 0)
            except ValueError:
                ret = 0
            if ret >= 1 << 63:
                ret -= 1 << 64
        rows.append((len(rows), ts, kind, 0, pid, pid, int(m.group("cpu")), 0, 0, 0, ret, m.group("comm").strip(), function))
    return rows
