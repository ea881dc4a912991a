"""Build synthetic event tables (the shape a real recording has) for analysis tests."""

import pandas as pd

from callpath.analysis.trace import events_from_rows


class EventBuilder:
    """Append entry/return events; ``names`` gives func ids in order of first use."""

    def __init__(self):
        self.rows = []
        self.ids: dict[str, int] = {}
        self.t = 1_000

    def _id(self, name):
        return self.ids.setdefault(name, len(self.ids))

    def entry(self, name, tid=100, cpu=0, skb=0, ifindex=0, dt=100):
        self.t += dt
        self.rows.append((len(self.rows), self.t, 0, self._id(name), tid, tid, cpu, skb, ifindex, 0, 0, b"test"))
        return self

    def ret(self, name, tid=100, cpu=0, retval=0, dt=100):
        self.t += dt
        self.rows.append((len(self.rows), self.t, 1, self._id(name), tid, tid, cpu, 0, 0, 0, retval, b"test"))
        return self

    def call(self, name, *children, tid=100, skb=0, retval=0, dt=100):
        """A call of ``name`` enclosing ``children`` (each a callable taking the builder)."""
        self.entry(name, tid=tid, skb=skb)
        for c in children:
            c(self)
        return self.ret(name, tid=tid, retval=retval, dt=dt)

    def events(self) -> pd.DataFrame:
        return events_from_rows(self.rows, {v: k for k, v in self.ids.items()})

    def plan(self, absent=(), not_traceable=(), skb=(), probed=(), successors=None, unprobed=(), omit=()):
        """A plan dict (ProbePlan.to_dict()['functions'] shape) for every function used,
        plus ``probed`` names that were probed but never called.

        ``successors``: documented name -> successor (the documented name must be in
        ``absent`` or ``not_traceable``; the successor is probed, ``successor_of`` set).
        ``unprobed``: traceable names planned without a slot. ``omit``: names left out
        of the plan altogether (a trace recorded for other documents).
        """
        successors = successors or {}
        out = {}
        for name in probed:
            self._id(name)
        for succ in successors.values():
            self._id(succ)
        for name, i in self.ids.items():
            out[name] = {"status": "traceable", "symbol": name, "func_id": i, "skb_arg": 1 if name in skb else None,
                         "reason": "synthetic"}
        for doc, succ in successors.items():
            out[succ]["successor_of"] = doc
        for name in absent:
            out[name] = {"status": "absent", "symbol": None, "func_id": None, "reason": "not in kallsyms", "successor": None}
        for name in not_traceable:
            out[name] = {"status": "not-traceable", "symbol": name, "func_id": None, "reason": "notrace"}
        for doc, succ in successors.items():
            out[doc]["successor"] = succ
        for name in unprobed:
            out[name] = {"status": "traceable", "symbol": name, "func_id": None, "reason": "no slot left"}
        for name in omit:
            out.pop(name, None)
        return out


def c(name, *children, **kw):
    """Shorthand: a child call for EventBuilder.call."""
    return lambda b: b.call(name, *children, **kw)
