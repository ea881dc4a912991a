"""Match documented steps against rebuilt call trees and give each step one verdict.

Verdicts (a fixed vocabulary, :data:`VERDICTS`):

``observed``
    the function ran inside the dynamic extent of its documented callers
    (every probed function of the enclosing steps and of the step's own chain,
    in nesting order, possibly through undocumented frames);
``observed-out-of-order``
    observed, but within the same caller call it ran before a sibling the
    document puts first, in at least as many caller calls as it ran in order;
``not-exercised``
    probed but never seen where the document puts it during this run;
``absent``
    not in the kernel's kallsyms: inlined into its callers, or renamed/removed;
``not-traceable``
    in kallsyms, but kprobes/ftrace cannot attach (``notrace``, ``__init``,
    blacklisted), or attaching failed;
``not-a-call``
    the step is a statement, macro, builtin or pointer label: nothing to probe.

A step whose documented caller is absent (inlined) is matched inside the
nearest enclosing step that was probed: ``macvlan_queue_xmit`` is inlined on
Debian's 6.1 kernel, so ``macvlan_hash_lookup`` is looked for inside
``macvlan_start_xmit``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .calltree import CallForest
from .spec import Path, Spec, Step

VERDICTS = ("observed", "observed-out-of-order", "not-exercised", "absent", "not-traceable", "not-a-call")
CHECKABLE = ("observed", "observed-out-of-order", "not-exercised")


@dataclass
class StepResult:
    """The verdict of one step.

    Attributes:
        number, function, text, kind: from the step.
        verdict: one of :data:`VERDICTS`.
        count: frames that satisfied the step (0 unless observed).
        evidence: one observed chain (outermost first) that satisfied it, or [].
        expected_chain: documented functions the match required, outermost first.
        detail: one line a person can read (why this verdict).
        in_order / out_of_order: caller calls where the step ran after / before
            the siblings the document puts first.
        symbol: the kernel symbol probed (differs for compiler clones).
        returns: observed return values -> count (``{"0": 12}``), enum values by
            name (``{"RX_HANDLER_PASS": 20}``, names from BTF); only for functions
            that return a value (not void, not a pointer).
        detail_returns: for steps whose document names return values, how often
            each was seen and which never were.
        mechanism: what recorded the evidence (``kprobe``, ``function_graph``,
            ``kprobe_events``; see ``analysis.trace.MECHANISMS``).
        mean_ns: mean duration of the satisfying frames, ns.
    """

    number: str
    function: str | None
    text: str
    kind: str
    verdict: str
    count: int = 0
    evidence: list[str] = field(default_factory=list)
    expected_chain: list[str] = field(default_factory=list)
    detail: str = ""
    in_order: int = 0
    out_of_order: int = 0
    symbol: str | None = None
    returns: dict[str, int] = field(default_factory=dict)
    mean_ns: float | None = None
    detail_returns: str = ""
    mechanism: str | None = None
    branch: str | None = None
    condition: str | None = None
    line: int = 0


@dataclass
class PathResult:
    """All step verdicts of one path plus its conformance summary."""

    number: str
    name: str
    source: str
    trigger: str | None
    steps: list[StepResult]

    @property
    def observed(self) -> int:
        """Steps observed (in order or not)."""
        return sum(s.verdict in ("observed", "observed-out-of-order") for s in self.steps)

    @property
    def checkable(self) -> int:
        """Steps that were probed, so could have been observed."""
        return sum(s.verdict in CHECKABLE for s in self.steps)

    def counts(self) -> dict[str, int]:
        """Verdict -> number of steps, every verdict present."""
        out = {v: 0 for v in VERDICTS}
        for s in self.steps:
            out[s.verdict] += 1
        return out

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items()}
        d["summary"] = {"observed": self.observed, "checkable": self.checkable, "verdicts": self.counts()}
        return d


def returns_value(return_type: str | None) -> bool:
    """True when a function's return value is worth showing: not void, not a pointer.

    ``None`` (BTF unknown) counts as a value.
    """
    if return_type is None:
        return True
    rt = return_type.strip()
    return rt != "void" and not rt.endswith("*")


def _ancestry(path: Path, step: Step) -> list[Step]:
    """Enclosing steps of ``step``, outermost first."""
    chain = []
    parent = step.parent
    while parent is not None:
        try:
            s = path.step(parent)
        except KeyError:
            break
        chain.append(s)
        parent = s.parent
    return list(reversed(chain))


def _is_subsequence(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(any(h == n for h in it) for n in needle)


class Matcher:
    """Matches the steps of specs against one :class:`CallForest`.

    Args:
        forest: the rebuilt call trees.
        plan: the probe plan as a dict ``name -> {status, symbol, func_id, successor, reason}``
            (``ProbePlan.to_dict()["functions"]``).
        attach_failed: names whose probes failed to attach.
    """

    def __init__(self, forest: CallForest, plan: dict[str, dict], attach_failed: dict[str, str] | None = None):
        self.forest = forest
        self.plan = plan
        self.attach_failed = attach_failed or {}
        self._frames_cache: dict[str, np.ndarray] = {}

    def probed(self, name: str) -> bool:
        """True when some mechanism recorded ``name`` (so absence of frames means something)."""
        fp = self.plan.get(name)
        if not fp:
            return False
        return (fp.get("func_id") is not None and name not in self.attach_failed) or bool(fp.get("observed_by"))

    def _frames(self, name: str) -> np.ndarray:
        if name not in self._frames_cache:
            self._frames_cache[name] = self.forest.frames_of(name)
        return self._frames_cache[name]

    def required_ancestors(self, path: Path, step: Step) -> list[str]:
        """Probed functions that must enclose the step's landing frame, outermost first."""
        req: list[str] = []
        for anc in _ancestry(path, step):
            req.extend(f for f in anc.chain if self.probed(f))
        req.extend(f for f in step.chain[:-1] if self.probed(f))
        # a step restating its caller (``1.1.1.1 setup() -> ... -> f`` then
        # ``1.1.1.1.1 f()``) is satisfied by the caller's own frame
        while req and req[-1] == step.function:
            req.pop()
        return req

    def match_frames(self, path: Path, step: Step) -> tuple[list[int], list[str]]:
        """Frames of the step's function inside its documented callers; and the requirement."""
        req = self.required_ancestors(path, step)
        out = []
        for fid in self._frames(step.function):
            fid = int(fid)
            anc = [self.forest.function_of(a) for a in reversed(self.forest.ancestors(fid))]
            if _is_subsequence(req, anc):
                out.append(fid)
        return out, req

    def _static_verdict(self, step: Step) -> tuple[str, str] | None:
        if step.kind != "call" or not step.function:
            why = {
                "assignment": "a statement (assignment)", "macro": "a macro", "builtin": "a compiler builtin",
                "loop": "a loop macro", "command": "the command that triggers the path",
            }.get(step.statement_kind or "", "not a kernel function call")
            return "not-a-call", why
        fp = self.plan.get(step.function)
        if fp is None:
            return "not-traceable", "not in the probe plan"
        if fp.get("observed_by"):
            return None  # recorded by function_graph / kprobe events: match it
        if fp["status"] == "absent":
            return "absent", fp.get("reason", "not in kallsyms") + (f"; successor: {fp['successor']}" if fp.get("successor") else "")
        if fp["status"] == "not-traceable":
            return "not-traceable", fp.get("reason", "")
        if step.function in self.attach_failed:
            return "not-traceable", f"attach failed: {self.attach_failed[step.function]}"
        if fp.get("func_id") is None:
            return "not-traceable", "traceable but not probed (more functions than BPF slots)"
        return None

    def check_path(self, path: Path) -> PathResult:
        results: dict[str, StepResult] = {}
        matched: dict[str, list[int]] = {}
        for step in path.steps:
            res = StepResult(number=step.number, function=step.function, text=step.text, kind=step.kind,
                             verdict="not-a-call", branch=step.branch, condition=step.condition, line=step.line)
            fp = self.plan.get(step.function or "", {})
            res.symbol = fp.get("symbol")
            static = self._static_verdict(step)
            if static:
                res.verdict, res.detail = static
                results[step.number] = res
                continue
            frames, req = self.match_frames(path, step)
            res.expected_chain = req + [step.function]
            matched[step.number] = frames
            if frames:
                res.verdict = "observed"
                res.count = len(frames)
                # the shortest satisfying chain reads best
                best = min(frames, key=lambda f: (len(self.forest.ancestors(f)), f))
                res.evidence = self.forest.chain(best)
                res.mechanism = str(self.forest.frames.at[best, "mechanism"])
                durations = self.forest.frames.loc[frames, "duration_ns"].dropna()
                res.mean_ns = float(durations.mean()) if len(durations) else None
                if returns_value(fp.get("return_type")):
                    names = fp.get("return_names") or {}
                    fr = self.forest.frames.loc[frames]
                    # function_graph records durations, not return values
                    rv = fr.loc[fr["mechanism"] != "function_graph", "retval"].dropna().astype("int64").value_counts()
                    res.returns = {names.get(str(k), str(k)): int(v) for k, v in rv.items()}
                    missing = [r for r in step.expected_returns if r not in res.returns]
                    if step.expected_returns:
                        res.detail_returns = (
                            "documented returns " + ", ".join(f"{r} ({res.returns.get(r, 0)}×)" for r in step.expected_returns)
                            + (f"; never returned: {', '.join(missing)}" if missing else "")
                        )
                calls = f"{len(frames)} call{'s' if len(frames) != 1 else ''}"
                res.detail = f"{calls} inside " + " > ".join(req) if req else f"{calls} in the run"
            else:
                res.verdict = "not-exercised"
                anywhere = len(self._frames(step.function))
                unseen = [f for f in req if len(self._frames(f)) == 0]
                if unseen:
                    res.detail = f"caller {unseen[0]} never ran in this run"
                elif anywhere:
                    res.detail = f"ran {anywhere} times, never inside " + " > ".join(req)
                else:
                    res.detail = "never ran in this run"
            results[step.number] = res
        self._check_order(path, results, matched)
        return PathResult(number=path.number, name=path.name, source=path.source, trigger=path.trigger,
                          steps=[results[s.number] for s in path.steps])

    def _instance_of(self, fid: int, anchor: str | None) -> int:
        """The nearest enclosing frame of function ``anchor`` (the caller call), or -1."""
        if anchor is None:
            return -1
        for a in self.forest.ancestors(fid):
            if self.forest.function_of(a) == anchor:
                return a
        return -1

    def _check_order(self, path: Path, results: dict[str, StepResult], matched: dict[str, list[int]]) -> None:
        """Compare the order of documented siblings within each call of their caller."""
        starts = self.forest.frames["start_ns"].to_numpy() if len(self.forest.frames) else np.empty(0)
        by_parent: dict[str | None, list[Step]] = {}
        for s in path.steps:
            if s.number in matched and matched[s.number]:
                by_parent.setdefault(s.parent, []).append(s)
        for parent, sibs in by_parent.items():
            if len(sibs) < 2:
                continue
            req = self.required_ancestors(path, sibs[0])
            anchor = req[-1] if req else None
            if anchor is None:
                continue
            per_instance: dict[int, dict[str, list[int]]] = {}
            for s in sibs:
                for fid in matched[s.number]:
                    inst = self._instance_of(fid, anchor)
                    per_instance.setdefault(inst, {}).setdefault(s.number, []).append(int(starts[fid]))
            for inst, occ in per_instance.items():
                if inst < 0 or len(occ) < 2:
                    continue
                t = -1
                used: dict[str, set[int]] = {}
                for s in sibs:
                    times = sorted(occ.get(s.number, []))
                    if not times:
                        continue
                    later = [x for x in times if x > t and x not in used.setdefault(s.function, set())]
                    if later:
                        t = later[0]
                        used[s.function].add(t)
                        results[s.number].in_order += 1
                    else:
                        results[s.number].out_of_order += 1
        for r in results.values():
            if r.verdict == "observed" and r.out_of_order and r.out_of_order >= r.in_order:
                r.verdict = "observed-out-of-order"
                r.detail += f"; ran before a sibling documented earlier in {r.out_of_order} caller calls (in order in {r.in_order})"


def check_specs(specs: list[Spec], forest: CallForest, plan: dict[str, dict], attach_failed=None) -> list[tuple[Spec, list[PathResult]]]:
    """Verdicts for every path of every spec, in document order."""
    m = Matcher(forest, plan, attach_failed)
    return [(spec, [m.check_path(p) for p in spec.paths]) for spec in specs]
