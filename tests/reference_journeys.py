"""Reference for tests: the per-packet loop that classified journeys before issue 11.

Everything around it (which calls are a path's visits, statistics, hand-overs,
report blocks) is :mod:`analysis.journeys` itself; only the classifier differs,
so tests/test_journey_columns.py compares the columnar
:func:`analysis.journey_columns.journeys_of` with this loop on the same input.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from callpath.analysis import journeys
from callpath.analysis.journeys import JOURNEY_COLUMNS, VISIT_COLUMNS


def loop_journeys(calls: pd.DataFrame, step, entry: str, exits: list[str], n_steps: int):
    """The per-packet loop that :func:`analysis.journey_columns.journeys_of` replaced:
    same arguments, same ``(visits, journeys)`` DataFrames."""
    calls = calls.assign(step=step)
    visits, journeys_ = [], []
    for packet, g in calls.groupby("packet", sort=True):
        rows = g.to_dict("records")
        runs: list[list[dict]] = []
        for r in rows:
            if not runs or r["step"] == entry:
                runs.append([])
            runs[-1].append(r)
        run = max(runs, key=lambda rr: (len({x["step"] for x in rr}), -runs.index(rr)))
        distinct = {x["step"] for x in run}
        first, last = run[0], run[-1]
        if distinct == {entry} and n_steps > 1:
            status, reason = "entry-only", "seen only at the entry step"
        elif first["step"] == entry and last["step"] in exits:
            status, reason = "complete", ""
        elif first["step"] != entry:
            status, reason = "partial", f"entry step {entry} not seen (first seen at {first['step']} {first['function']})"
        else:
            status, reason = "partial", f"not seen after {last['step']} {last['function']} (not a last step)"
        latency = float(last["start_ns"] - first["start_ns"]) if status == "complete" else np.nan
        journeys_.append([int(packet), status, reason, first["step"], last["step"], int(first["start_ns"]),
                         int(last["start_ns"]), latency,
                         len(distinct), len({x["tid"] for x in run}), len({x["cpu"] for x in run})])
        for i, r in enumerate(run):
            visits.append([int(packet), i, r["step"], r["function"], int(r["start_ns"]), int(r["tid"]), int(r["cpu"]),
                           int(r["ifindex"]), int(r["netns"]), r["via"], int(r["frame"])])
    return pd.DataFrame(visits, columns=VISIT_COLUMNS), pd.DataFrame(journeys_, columns=JOURNEY_COLUMNS)


path_journeys = functools.partial(journeys.path_journeys, classify=loop_journeys)
report_blocks = functools.partial(journeys.report_blocks, classify=loop_journeys)
