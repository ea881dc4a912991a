"""Reader for Markdown prose notes with nested bullets (user documents such as specs/*.md).

Each ``## heading`` is a topic; each top-level bullet under it is one path. Function
names are written in backticks. The relations read are:

* ```X` is called by `Y` `` -> ``Y`` calls ``X`` (``Y`` becomes the path's root);
* ```X` calls `Y` [or `Z`]`` -> ``X`` calls ``Y`` (and ``Z``, an alternative branch);
* ``... is handled by `Y` `` -> a step ``Y`` (``ops`` tables such as
  ``veth_link_ops`` are kept as notes; ```X` is handled by `Y` `` nests Y in X);
* ```X` sets up / initilizes / registers / create(s) / configures / is called ...``
  -> a step ``X`` under the enclosing step;
* ``... calls `Y` to ...`` or ``... `Y` is called to ...`` without a subject -> a
  step ``Y`` under the enclosing step;
* ``it creates ... first`` -> an ordering note (children keep document order);
* ```ip link add ...` `` -> the command that triggers the path;
* ```NAME` is returned`` -> an expected return value kept on the enclosing step;
* any other text -> a note, never an error.

Reading is linear in the document's size and takes any bullet depth (no recursion).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .spec import Path, Spec, SpecError, Step

_BULLET_RE = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_TICK_RE = re.compile(r"`([^`]+)`")
_FUNC_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_SUBJECT_VERBS = re.compile(
    r"^\s*(sets up|set up|initi\w*|registers?|creates?|configures?|is called|are called|"
    r"is for|handles?|calls?|adds?|allocates?|frees?|transmits?|receives?|moves?)\b"
)
#: Names in backticks that are types, members or ops tables, never functions.
_NOT_FUNCTIONS = frozenset({"net_device", "sk_buff", "peer", "vlan", "dev", "skb", "eth0", "port"})


def _is_function(name: str) -> bool:
    return bool(_FUNC_RE.match(name)) and not name.endswith("_ops") and name not in _NOT_FUNCTIONS


@dataclass
class _Bullet:
    indent: int
    text: str
    line: int
    children: list["_Bullet"] = field(default_factory=list)
    more: list[str] = field(default_factory=list)  # continuation lines, joined at the end


def _bullets(lines: list[tuple[int, str]]) -> list[_Bullet]:
    """Build the bullet tree; continuation lines are joined to their bullet."""
    roots: list[_Bullet] = []
    stack: list[_Bullet] = []
    every: list[_Bullet] = []
    for lineno, line in lines:
        m = _BULLET_RE.match(line)
        if not m:
            if stack and line.strip():
                stack[-1].more.append(line.strip())
            continue
        b = _Bullet(indent=len(m.group(1).expandtabs(4)), text=m.group(2).strip(), line=lineno)
        every.append(b)
        while stack and stack[-1].indent >= b.indent:
            stack.pop()
        (stack[-1].children if stack else roots).append(b)
        stack.append(b)
    for b in every:
        if b.more:
            b.text = " ".join([b.text, *b.more])
            b.more = []
    return roots


class _PathBuilder:
    def __init__(self, path: Path, source: str):
        self.path = path
        self.source = source
        self.counts: dict[str | None, int] = {}
        self.by_number: dict[str, Step] = {}
        self.first_call: dict[tuple[str | None, str], Step] = {}  # (parent, function) -> first such step

    def add(self, parent: str | None, function: str | None, text: str, line: int, **kw) -> Step:
        if parent is None:
            number = self.path.number
        else:
            self.counts[parent] = self.counts.get(parent, 0) + 1
            number = f"{parent}.{self.counts[parent]}"
        step = Step(
            number=number,
            parent=parent,
            text=text,
            kind="call" if function else "statement",
            chain=[function] if function else [],
            statement_kind=None if function else "text",
            line=line,
            **kw,
        )
        self.path.steps.append(step)
        self.by_number[number] = step
        if function:
            self.first_call.setdefault((parent, function), step)
        return step


def _read_bullet(b: _Bullet, builder: _PathBuilder, parent: str | None, spec: Spec) -> None:
    """Turn one bullet and its children, depth first, into steps under ``parent``."""
    todo = [(b, parent)]
    while todo:
        bullet, under = todo.pop()
        anchor = _read_one(bullet, builder, under)
        todo.extend((child, anchor) for child in reversed(bullet.children))


def _read_one(b: _Bullet, builder: _PathBuilder, parent: str | None) -> str | None:
    """Turn one bullet into steps under ``parent``; returns the step its children go under."""
    text = b.text
    ticks = _TICK_RE.findall(text)
    funcs = [t for t in ticks if _is_function(t)]
    anchor = parent
    lead = re.sub(r"^(if|otherwise)[^`]*?,\s*", "", text)
    cond_m = re.match(r"^(if [^,]+|otherwise),", text)
    condition = cond_m.group(1) if cond_m else None

    called_by = re.search(r"`([^`]+)`\s+is called by\s+`([^`]+)`", text)
    handled_by = re.search(r"\bis handled by\s+`([^`]+)`", text)
    subj = re.match(r"^`([^`]+)`(.*)$", lead)
    if ticks and ticks[0].startswith("ip link"):
        builder.path.trigger = ticks[0]
        if parent is None:
            root = builder.add(None, None, ticks[0], b.line)
            root.statement_kind = "command"
            anchor = root.number
    elif called_by and _is_function(called_by.group(1)) and _is_function(called_by.group(2)):
        callee, caller = called_by.group(1), called_by.group(2)
        if parent is None:
            root = builder.add(None, caller, caller, b.line)
            step = builder.add(root.number, callee, text, b.line)
        else:
            step = builder.add(parent, callee, text, b.line)
        anchor = step.number
    elif handled_by and _is_function(handled_by.group(1)):
        # "X is handled by `Y`": Y does the work; when X is itself a function
        # (`X` is handled by `Y`), X hands over to Y, so Y is X's callee
        y = handled_by.group(1)
        if subj and _is_function(subj.group(1)):
            outer = builder.add(parent, subj.group(1), text, b.line, condition=condition)
            step = builder.add(outer.number, y, f"{subj.group(1)} is handled by {y}", b.line)
        else:
            step = builder.add(parent, y, text, b.line, condition=condition)
        anchor = step.number
    elif subj and _is_function(subj.group(1)) and _SUBJECT_VERBS.match(subj.group(2)):
        x = subj.group(1)
        step = builder.add(parent, x, text, b.line, condition=condition)
        anchor = step.number
        rest = subj.group(2)
        calls_m = re.match(r"^\s*calls?\s+(.*)$", rest)
        if calls_m:
            callees = [t for t in _TICK_RE.findall(calls_m.group(1)) if _is_function(t)]
            # "X calls `A` or `B` ... by `C`": the callees are the names before
            # any "by"/"to"/"such that" clause
            head = re.split(r"\b(by|such that|to intercept)\b", calls_m.group(1))[0]
            callees = [t for t in _TICK_RE.findall(head) if _is_function(t)] or callees[:1]
            alt = len(callees) > 1 and " or " in head
            for i, c in enumerate(callees):
                builder.add(step.number, c, f"{x} calls {c}", b.line,
                            branch=f"{chr(65 + i)}: alternative" if alt else None)
    elif funcs and re.search(r"\bcalls?\s+`|`\s+is called to\b", text):
        m = re.search(r"\bcalls?\s+`([^`]+)`", text) or re.search(r"`([^`]+)`\s+is called to\b", text)
        name = m.group(1) if m and _is_function(m.group(1)) else funcs[0]
        same = builder.first_call.get((parent, name))
        if same is not None:  # a restatement of a relation already read: keep the text only
            same.notes.append(text)
            anchor = same.number
        else:
            step = builder.add(parent, name, text, b.line, condition=condition)
            anchor = step.number
    elif re.search(r"`([A-Z][A-Z0-9_]+)`\s+is\s+returned", text):
        ret = re.search(r"`([A-Z][A-Z0-9_]+)`\s+is\s+returned", text).group(1)
        target = builder.by_number.get(parent) if parent else None
        if target is not None:
            target.expected_returns.append(ret)
            target.notes.append(text)
        else:
            builder.path.notes.append(text)
    else:
        if parent is not None:
            builder.by_number[parent].notes.append(text)
        else:
            builder.path.notes.append(text)
    return anchor


def parse_prose(text: str, source: str) -> Spec:
    """Read a Markdown prose document into a :class:`Spec`.

    Args:
        text: the document text.
        source: name used in messages and in ``Path.source``.

    Returns:
        A Spec with one path per top-level bullet that names a function.
        Bullets that carry no call are kept as notes.

    Raises:
        SpecError: when no bullet names a function in backticks.
    """
    lines = text.splitlines()
    title = next((l.strip() for l in lines if l.strip() and not l.startswith("#")), source)
    spec = Spec(source=source, format="prose", title=title)
    sections: list[tuple[str, list[tuple[int, str]]]] = []
    for lineno, line in enumerate(lines, start=1):
        h = re.match(r"^#{2,}\s+(.*)$", line)
        if h:
            sections.append((h.group(1).strip(), []))
        elif sections:
            sections[-1][1].append((lineno, line.rstrip()))
    number = 0
    for heading, body in sections:
        for bullet in _bullets(body):
            number += 1
            path = Path(number=str(number), name="", source=f"{source}:{bullet.line}")
            builder = _PathBuilder(path, source)
            _read_bullet(bullet, builder, None, spec)
            if not path.steps:
                number -= 1
                spec.notes.append(bullet.text)
                continue
            first_fn = next((s.function for s in path.steps if s.function), None)
            path.name = f"{heading}: " + (path.trigger or (f"{first_fn}" if first_fn else bullet.text[:50]))
            spec.paths.append(path)
    if not any(p.steps for p in spec.paths):
        raise SpecError(source, 1, "no bullet names a kernel function in backticks")
    return spec
