"""Match documented steps against rebuilt call trees and give each step one verdict.

Verdicts (a fixed vocabulary, :data:`VERDICTS`):

``observed``
    the function ran inside the dynamic extent of its documented callers
    (every recorded function of the enclosing steps and of the step's own
    chain, in nesting order, possibly through undocumented frames);
``observed-out-of-order``
    observed, but within the same caller call it ran before a sibling the
    document puts first, in at least as many caller calls as it ran in order;
``successor-observed``
    the documented function is absent or not traceable here, and the function
    found to run in its place (``successor`` in the probe plan, found by
    ``probes.successors``) was recorded inside the documented callers; the
    detail names both, evidence and count are the successor's. Counted as
    observed in summaries;
``not-exercised``
    recorded (the function, or its successor, named in the detail) but never
    seen where the document puts it during this run;
``not-recorded``
    the trace holds no evidence either way: the function, or a documented
    caller it must be matched inside, was not probed by this trace (not in
    the trace's probe plan, or planned without a probe slot);
``module-not-loaded``
    a module of this kernel defines the function (``probes.modindex``), but
    the module was not loaded during the run; the detail names the module and
    the command that loads it;
``absent``
    not in the kernel's kallsyms, and no successor was recorded: inlined into
    its callers, or renamed/removed (the detail says which can be told);
``not-traceable``
    in kallsyms, but kprobes/ftrace cannot attach (``notrace``, ``__init``,
    blacklisted), or attaching failed, and no successor was recorded;
``not-a-call``
    the step is a statement, macro, builtin or pointer label: nothing to probe.

What the documented callers require (:meth:`Matcher.requirement`): a caller
recorded in the trace must enclose the step; a caller the trace's plan found
cannot be probed on this kernel (``absent``/``not-traceable``) is replaced by
its recorded successor when there is one, and is otherwise skipped, so the
step is matched inside the nearest enclosing recorded step
(``macvlan_queue_xmit`` is inlined on Debian's 6.1 kernel, so
``macvlan_hash_lookup`` is looked for inside ``macvlan_start_xmit``); a caller
the trace did not record at all makes the step ``not-recorded``: an unrelated
recorded ancestor never stands in for it.

Nesting rule: a frame proves that a later entry of its thread ran inside it
only when it is complete (closed by its own return; see
:mod:`analysis.calltree`). A step is observed only when a frame of its
function has every required caller among its ancestors, in order, each of
those ancestor frames complete. The step's own frame needs no return (its
entry inside a complete caller frame is enough), and a root-level step with
no required caller is observed by its entry alone. Frames that match only
through an ancestor without its own return (lost kretprobe, or still open at
trace end) are counted in ``StepResult.unproven`` and said in the detail,
never counted as observations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .aggregate import AggregateForest, order_counts, weighted_mean_ns
from .calltree import CallForest
from .instants import is_inlined, site_detail
from .matching import nested_in, shortest_chain, sibling_order
from .spec import Path, Spec, Step

VERDICTS = ("observed", "observed-out-of-order", "successor-observed", "not-exercised", "not-recorded",
            "module-not-loaded", "absent", "not-traceable", "not-a-call")
#: Verdicts that count as observed in summaries.
OBSERVED = ("observed", "observed-out-of-order", "successor-observed")
#: Verdicts of steps that were recorded, so could have been observed.
CHECKABLE = OBSERVED + ("not-exercised",)


def _relation(name: str, status: str, reason: str = "") -> str:
    """How a documented function relates to its successor, from its plan status and reason."""
    if status == "not-traceable":
        if "blacklist" in reason:
            return f"`{name}` is not traceable here (kprobe blacklist)"
        return (f"`{name}` is not traceable here (in kallsyms, not in available_filter_functions: "
                "an inline wrapper, whose out-of-line copies are notrace, or a notrace function)")
    return f"`{name}` is not a symbol here (inlined into its callers, or renamed)"


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
        successor: the function that runs in place of the documented one (for
            ``successor-observed`` its frames are the evidence and the count),
            or None.
        unproven: calls of the function that sat where the document puts it only
            through ancestor frames without their own return (nesting not proven,
            not counted in ``count``).
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
    successor: str | None = None
    unproven: int = 0


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
        """Steps observed (in order or not, or through their successor)."""
        return sum(s.verdict in OBSERVED for s in self.steps)

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


class Matcher:
    """Matches the steps of specs against one :class:`CallForest`.

    Args:
        forest: the rebuilt call trees (None when only :meth:`coverage` is used).
        plan: the probe plan as a dict ``name -> {status, symbol, func_id, successor, reason}``
            (``ProbePlan.to_dict()["functions"]``).
        attach_failed: names whose probes failed to attach.
    """

    def __init__(self, forest: CallForest | None, plan: dict[str, dict], attach_failed: dict[str, str] | None = None):
        self.forest = forest
        self.plan = plan
        self.attach_failed = attach_failed or {}
        self._frames_cache: dict[str, np.ndarray] = {}

    def coverage(self, name: str) -> str:
        """What the trace can say about ``name``.

        Returns:
            ``"recorded"`` (some mechanism recorded it: absence of frames means
            something), ``"absent"`` / ``"not-traceable"`` (the trace's plan found
            it cannot be probed on this kernel, or its probe failed to attach), or
            ``"not-recorded"`` (not in the trace's plan, or planned without a slot).
        """
        fp = self.plan.get(name)
        if not fp:
            return "not-recorded"
        if fp.get("observed_by"):
            return "recorded"
        if fp.get("status") == "module-not-loaded":
            return "module-not-loaded"
        if fp.get("status") in ("absent", "not-traceable"):
            return fp["status"]
        if name in self.attach_failed:
            return "not-traceable"
        if fp.get("func_id") is None:
            return "not-recorded"
        return "recorded"

    def probed(self, name: str) -> bool:
        """True when some mechanism recorded ``name`` (so absence of frames means something)."""
        return self.coverage(name) == "recorded"

    def stand_in(self, name: str) -> str | None:
        """The recorded function carrying ``name``'s evidence: ``name`` itself when recorded,
        else its recorded successor when ``name`` cannot be probed here, else None."""
        cov = self.coverage(name)
        if cov == "recorded":
            return name
        if cov in ("absent", "not-traceable"):
            succ = self.plan[name].get("successor")
            if succ and self.coverage(succ) == "recorded":
                return succ
        return None

    def _frames(self, name: str) -> np.ndarray:
        if name not in self._frames_cache:
            self._frames_cache[name] = self.forest.frames_of(name)
        return self._frames_cache[name]

    def requirement(self, path: Path, step: Step) -> tuple[list[str], list[str]]:
        """What must enclose the step's frame.

        Returns:
            ``(required, unrecorded)``: recorded functions (documented callers, or
            their recorded successors) that must enclose the step's landing frame,
            outermost first; and documented callers the trace did not record
            (when not empty, the step cannot be checked).
        """
        req: list[str] = []
        unrecorded: list[str] = []
        callers = [f for anc in _ancestry(path, step) for f in anc.chain] + list(step.chain[:-1])
        for f in callers:
            if is_inlined(self.plan.get(f)):
                continue  # issue 10 hook: an inlined caller's frames are instants, they enclose nothing
            s = self.stand_in(f)
            if s:
                if not req or req[-1] != s:
                    req.append(s)
            elif self.coverage(f) in ("not-recorded", "module-not-loaded") and f not in unrecorded:
                unrecorded.append(f)
        # a step restating its caller (``1.1.1.1 setup() -> ... -> f`` then
        # ``1.1.1.1.1 f()``) is satisfied by the caller's own frame
        target = self.stand_in(step.function) or step.function
        while req and req[-1] == target:
            req.pop()
        return req, unrecorded

    def required_ancestors(self, path: Path, step: Step) -> list[str]:
        """Recorded functions that must enclose the step's landing frame, outermost first."""
        return self.requirement(path, step)[0]

    def match_frames(self, path: Path, step: Step, target: str | None = None) -> tuple[np.ndarray, list[str], int]:
        """Frames of ``target`` (default: the step's function) inside the documented callers.

        Returns:
            ``(frames, required, unproven)``: ids (int64 array, start order) of
            frames whose nesting is proven by complete ancestor frames; the
            requirement; and how many more frames matched only through ancestor
            frames without their own return.
        """
        req, _ = self.requirement(path, step)
        target = target or step.function
        frames = self._frames(target)
        proven, anywhere = nested_in(self.forest, frames, req)
        return frames[proven], req, self.forest.count(frames[anywhere & ~proven])

    def _static_verdict(self, step: Step) -> tuple[str, str] | None:
        if step.kind != "call" or not step.function:
            why = {
                "assignment": "a statement (assignment)", "macro": "a macro", "builtin": "a compiler builtin",
                "loop": "a loop macro", "command": "the command that triggers the path",
            }.get(step.statement_kind or "", "not a kernel function call")
            return "not-a-call", why
        name = step.function
        fp = self.plan.get(name)
        cov = self.coverage(name)
        if cov == "not-recorded":
            if fp is None:
                return "not-recorded", "not probed by this trace (not in its probe plan: recorded for other documents)"
            return "not-recorded", "not probed by this trace (traceable, but no probe slot was left)"
        if cov == "module-not-loaded":
            return "module-not-loaded", fp.get("reason", "")
        if self.stand_in(name):
            return None
        succ = fp.get("successor")
        tail = f"; successor `{succ}` exists but was not recorded in this trace" if succ else ""
        if name in self.attach_failed and fp.get("status") not in ("absent", "not-traceable"):
            return "not-traceable", f"attach failed: {self.attach_failed[name]}" + tail
        if fp["status"] == "absent":
            return "absent", fp.get("reason", "not in kallsyms") + tail
        return "not-traceable", fp.get("reason", "") + tail

    def _where(self, req: list[str]) -> str:
        return "inside " + " > ".join(req) if req else "in the run"

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
                res.successor = fp.get("successor")
                results[step.number] = res
                continue
            target = self.stand_in(step.function)
            via = target != step.function
            req, unrecorded = self.requirement(path, step)
            if unrecorded:
                res.verdict = "not-recorded"
                res.detail = (f"documented caller{'s' if len(unrecorded) > 1 else ''} "
                              + ", ".join(unrecorded) + " not recorded in this trace: nesting cannot be checked")
                results[step.number] = res
                continue
            frames, req, unproven = self.match_frames(path, step, target)
            tp = self.plan.get(target, {})
            res.expected_chain = req + [target]
            res.unproven = unproven
            lead = ""
            if via:
                res.successor, res.symbol = target, tp.get("symbol")
                lead = _relation(step.function, fp.get("status", ""), fp.get("reason", "")) + f"; successor `{target}` "
            matched[step.number] = frames
            if len(frames):
                res.verdict = "successor-observed" if via else "observed"
                res.count = self.forest.count(frames)
                # the shortest satisfying chain reads best
                best = shortest_chain(self.forest, frames)
                res.evidence = self.forest.chain(best)
                res.mechanism = str(self.forest.frames.at[best, "mechanism"])
                if self.forest.weights is None:
                    durations = self.forest.frames["duration_ns"].iloc[frames].dropna()
                    durations = durations[durations >= 0]
                    res.mean_ns = float(durations.mean()) if len(durations) else None
                else:  # counting mode: a frame stands for its calls (analysis/aggregate.py)
                    res.mean_ns = weighted_mean_ns(self.forest, frames)
                if returns_value(tp.get("return_type")):
                    names = tp.get("return_names") or {}
                    fr = self.forest.frames[["mechanism", "complete", "retval"]].iloc[frames]
                    # function_graph records durations, not return values
                    rv = fr.loc[(fr["mechanism"] != "function_graph") & fr["complete"].astype(bool), "retval"]
                    rv = rv.dropna().astype("int64").value_counts()
                    res.returns = {names.get(str(k), str(k)): int(v) for k, v in rv.items()}
                    missing = [r for r in step.expected_returns if r not in res.returns]
                    if step.expected_returns and not res.returns and isinstance(self.forest, AggregateForest):
                        res.detail_returns = ("return values are not counted in aggregate mode (documented returns "
                                              + ", ".join(step.expected_returns) + ")")
                    elif step.expected_returns:
                        res.detail_returns = (
                            "documented returns " + ", ".join(f"{r} ({res.returns.get(r, 0)}×)" for r in step.expected_returns)
                            + (f"; never returned: {', '.join(missing)}" if missing else "")
                        )
                if via:
                    res.detail = f"{lead}observed {res.count}× {self._where(req)}"
                else:
                    calls = f"{res.count} call{'s' if res.count != 1 else ''}"
                    res.detail = f"{calls} {self._where(req)}"
                    if is_inlined(fp):  # issue 10 hook: the inline sites are the evidence
                        res.detail = (site_detail(fp, self.forest.frames, frames, self.forest.weights)
                                      + f"; {self._where(req)}")
            else:
                res.verdict = "not-exercised"
                anywhere = self.forest.count(self._frames(target))
                unseen = [f for f in req if len(self._frames(f)) == 0]
                if unseen:
                    why = f"caller {unseen[0]} never ran in this run"
                elif unproven:
                    why = (f"ran {unproven} times {self._where(req)} only through caller frames without "
                           "their own return: nesting not proven")
                elif anywhere:
                    why = f"ran {anywhere} times, never " + self._where(req)
                else:
                    why = "never ran in this run"
                res.detail = f"{lead}recorded, {why}" if via else why
                if is_inlined(fp):  # issue 10 hook
                    n_sites = sum(x.get("func_id") is not None for x in fp.get("inline_sites", []))
                    res.detail = f"inlined; probed at {n_sites} inline sites: {why}"
            if unproven and len(frames):
                res.detail += (f"; {unproven} more call{'s' if unproven != 1 else ''} only through caller frames "
                               "without their own return (nesting not proven, not counted)")
            results[step.number] = res
        self._check_order(path, results, matched)
        return PathResult(number=path.number, name=path.name, source=path.source, trigger=path.trigger,
                          steps=[results[s.number] for s in path.steps])

    def _check_order(self, path: Path, results: dict[str, StepResult], matched: dict[str, np.ndarray]) -> None:
        """Compare the order of documented siblings within each call of their caller
        (:func:`analysis.matching.sibling_order`)."""
        by_parent: dict[str | None, list[Step]] = {}
        for s in path.steps:
            if s.number in matched and len(matched[s.number]):
                by_parent.setdefault(s.parent, []).append(s)
        for parent, sibs in by_parent.items():
            if len(sibs) < 2:
                continue
            req, _ = self.requirement(path, sibs[0])
            anchor = req[-1] if req else None
            if anchor is None:
                continue
            order = order_counts if isinstance(self.forest, AggregateForest) else sibling_order
            for s, (ok, bad) in zip(sibs, order(self.forest, [matched[s.number] for s in sibs], anchor)):
                results[s.number].in_order += ok
                results[s.number].out_of_order += bad
        for r in results.values():
            if r.verdict == "observed" and r.out_of_order and r.out_of_order >= r.in_order:
                r.verdict = "observed-out-of-order"
                r.detail += f"; ran before a sibling documented earlier in {r.out_of_order} caller calls (in order in {r.in_order})"


def unrecorded_functions(specs: list[Spec], plan: dict[str, dict], attach_failed=None) -> list[str]:
    """Documented functions the trace holds no evidence about (coverage ``not-recorded``), document order."""
    m = Matcher(None, plan, attach_failed)
    names = dict.fromkeys(f for spec in specs for f in spec.functions())
    return [f for f in names if m.coverage(f) == "not-recorded"]


def check_specs(specs: list[Spec], forest: CallForest, plan: dict[str, dict], attach_failed=None) -> list[tuple[Spec, list[PathResult]]]:
    """Verdicts for every path of every spec, in document order."""
    m = Matcher(forest, plan, attach_failed)
    return [(spec, [m.check_path(p) for p in spec.paths]) for spec in specs]
