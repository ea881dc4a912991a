"""The documented-path model every reader produces and every later stage consumes.

A *spec* is one user document. It holds *paths* (one per top-level section such as
``3. macvlan_start_xmit(skb, dev)``); a path holds *steps*. A step is one numbered
line of the document: either a call (possibly a chain ``a() -> b()`` that lands in
``b``) or a statement that is not a kernel function (``skb->dev = ...``,
``memcpy(...)``, ``INIT_LIST_HEAD(...)``).

Nothing here touches the kernel; the model is plain data and JSON-serialisable
with :func:`dataclasses.asdict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StepKind = Literal["call", "statement"]


class SpecError(ValueError):
    """A document cannot be read. ``str(err)`` is one line: ``file:line: what is wrong``."""

    def __init__(self, source: str, line: int, message: str):
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}")


@dataclass
class Step:
    """One documented step.

    Attributes:
        number: dotted step number as written, e.g. ``"3.1.2"``; synthetic numbers
            are used for prose documents.
        parent: number of the enclosing step, ``None`` for a path's root step.
        text: the step's text as written (number removed, trailing blanks stripped).
        kind: ``"call"`` when the step names at least one kernel function to check,
            ``"statement"`` otherwise (assignment, macro, builtin, loop header).
        chain: kernel functions in call order; ``a() -> b()`` gives ``["a", "b"]``
            (each later one is expected inside the earlier one's extent). Pointer
            labels are not in it.
        args: for each function of ``chain``, the argument texts as written
            (``[["src_net", "dev", ""]]``; empty strings are elided arguments);
            ``[]`` when the document gives none (prose).
        labels: pointer labels of the chain (``setup``, ``ops->newlink``), never probed.
        result: name the call's result is kept in (``dev`` in ``dev = f(...)``).
        condition: a condition written after the call (``if addr``).
        branch: a branch label (``"A: broadcast"``).
        remark: any other text after the call.
        statement_kind: for statements, why it is not a call: ``assignment``,
            ``macro``, ``builtin``, ``loop``, ``declaration`` or ``text``.
        line: 1-based source line.
        notes: extra lines attached to the step (``;`` comments, C declarations, prose).
    """

    number: str
    parent: str | None
    text: str
    kind: StepKind
    chain: list[str] = field(default_factory=list)
    args: list[list[str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    result: str | None = None
    condition: str | None = None
    branch: str | None = None
    remark: str | None = None
    statement_kind: str | None = None
    line: int = 0
    notes: list[str] = field(default_factory=list)
    expected_returns: list[str] = field(default_factory=list)

    @property
    def function(self) -> str | None:
        """The function the step lands in (last of the chain), ``None`` for statements."""
        return self.chain[-1] if self.chain else None

    @property
    def depth(self) -> int:
        """Nesting depth: 1 for ``3.``, 2 for ``3.1`` ..."""
        return self.number.count(".") + 1 if not self.number.endswith(".") else 1


@dataclass
class Path:
    """One documented call path (a top-level section of a document).

    Attributes:
        number: the root step's number (``"3"``).
        name: a short readable name, the root step's text.
        source: ``file:line`` of the root step.
        steps: all steps of the path in document order, root first.
        trigger: a command that exercises the path, when the document gives one
            (``ip link add ve-host type veth peer name ve-guest``).
        notes: prose kept with the path that carries no call.
        workloads: built-in workloads that exercise the path (``veth``,
            ``macvlan``, ``ipvlan``); readers suggest them from function names.
    """

    number: str
    name: str
    source: str
    steps: list[Step] = field(default_factory=list)
    trigger: str | None = None
    notes: list[str] = field(default_factory=list)
    workloads: list[str] = field(default_factory=list)

    def step(self, number: str) -> Step:
        """Return the step numbered ``number``; raises ``KeyError``."""
        for s in self.steps:
            if s.number == number:
                return s
        raise KeyError(number)

    def children(self, number: str) -> list[Step]:
        """Direct children of step ``number`` in document order."""
        return [s for s in self.steps if s.parent == number]

    def functions(self) -> list[str]:
        """Every kernel function named by the path, first mention order, no repeats."""
        seen: dict[str, None] = {}
        for s in self.steps:
            for f in s.chain:
                seen.setdefault(f, None)
        return list(seen)


@dataclass
class Spec:
    """One document read into paths.

    Attributes:
        source: the file it was read from (as given).
        format: ``"outline"`` or ``"prose"``.
        title: the document's title when it has one, else the file name.
        paths: the call paths found, in document order.
        warnings: ``file:line: message`` strings for input read with a best guess.
        notes: document text outside any path that carries no call.
    """

    source: str
    format: str
    title: str
    paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def functions(self) -> list[str]:
        """Every kernel function named anywhere in the document, first mention order."""
        seen: dict[str, None] = {}
        for p in self.paths:
            for f in p.functions():
                seen.setdefault(f, None)
        return list(seen)
