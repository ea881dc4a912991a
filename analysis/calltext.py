"""Parse the text of one documented step: calls, chains, kept results, remarks.

The grammar is the one the user's outline notes use (``../shared/seeds/README.md``):

* ``a() -> b()``: a call through a pointer or a wrapper that lands in ``b``;
  an arrow after a closing parenthesis is a chain arrow, an arrow inside a name
  (``ops->newlink``) is a member access and makes that element a pointer label;
* ``x = f(...)`` or ``type *x = f(...)``: a call whose result is kept;
* ``f(...), text``: ``text`` is a condition (``if ...``), a branch label
  (``A: broadcast``) or a remark;
* anything without a call at the top level (``skb->dev = ...``), a macro
  (``INIT_LIST_HEAD(...)``), a compiler builtin (``memcpy``) or a loop header
  (``for_each_possible_cpu(i)``) is a statement: never probed;
* text that is not C before the first call (``<script>alert(1)``, ``foo-bar(x)``,
  a non-ASCII name) makes the step a statement, and an arrow that leads to no
  function (``c() -> -> ()``) ends the chain; both are reported in
  ``ParsedText.problems`` so that readers warn instead of guessing silently.

Parsing is linear in the length of the text.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CALLEE_RE = re.compile(rf"({IDENT}(?:\s*(?:->|\.)\s*{IDENT})*)\s*$")  # what _callee_start matches
_BRANCH_RE = re.compile(r"^([A-Z])\s*:\s*(.+)$")
_WORD = frozenset(string.ascii_letters + string.digits + "_")
#: What may stand before the first call of a step: a declaration, an
#: assignment target (``type *x =``, ``x->f =``, ``&``), a cast. Anything else
#: (``<``, ``-`` not in ``->``, quotes, non-ASCII) is not C the reader knows.
_HEAD_RE = re.compile(r"^(?:[A-Za-z0-9_\s*&=.\[\]()!]|->)*$")

#: Functions the compiler provides or that are never worth a probe.
BUILTINS = frozenset(
    {
        "memcpy", "memset", "memmove", "memcmp", "strcpy", "strncpy", "strlen",
        "strscpy", "sizeof", "offsetof", "container_of", "likely", "unlikely",
        "READ_ONCE", "WRITE_ONCE", "BUG_ON", "WARN_ON",
    }
)

#: Names of function-pointer members of kernel ops structures. A bare ``setup()``
#: in ``setup() -> ipvtap_setup()`` is the ``setup`` member of ``struct
#: rtnl_link_ops`` (include/net/rtnetlink.h), not a function called ``setup``.
OPS_MEMBERS = frozenset(
    {
        "setup", "newlink", "dellink", "changelink", "validate", "poll", "output",
        "input", "func", "rx_handler", "xmit", "init", "exit", "open", "stop",
        "probe", "remove", "handler", "callback", "fn",
    }
)


@dataclass
class ParsedText:
    """What one step's text says; see :mod:`analysis.spec` ``Step`` for the fields."""

    kind: str
    chain: list[str] = field(default_factory=list)
    args: list[list[str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    result: str | None = None
    condition: str | None = None
    branch: str | None = None
    remark: str | None = None
    statement_kind: str | None = None
    problems: list[str] = field(default_factory=list)


def _callee_start(text: str, end: int) -> int | None:
    """Start of the callee name that ends just before ``text[end]`` (blanks allowed), or None.

    The name is an identifier or a member chain (``ops->newlink``, ``a.b``);
    the same match as ``(IDENT(\\s*(->|\\.)\\s*IDENT)*)\\s*$`` on ``text[:end]``,
    scanned backwards in time linear in the name's length.
    """
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    start = None
    while True:
        j = i
        while j > 0 and text[j - 1] in _WORD:
            j -= 1
        k = j
        while k < i and text[k].isdigit():  # an identifier does not start with a digit
            k += 1
        if k == i:
            return start
        start = k
        if k != j:
            return start
        m = j
        while m > 0 and text[m - 1].isspace():
            m -= 1
        if m >= 2 and text.startswith("->", m - 2):
            m -= 2
        elif m >= 1 and text[m - 1] == ".":
            m -= 1
        else:
            return start
        while m > 0 and text[m - 1].isspace():
            m -= 1
        i = m


def _top_level_calls(text: str) -> list[tuple[int, int, int]]:
    """Find top-level ``name(...)`` groups.

    Returns ``(name_start, open_paren, close_paren)`` index triples for every
    parenthesised group at depth 0. An unbalanced group runs to the end of the text.
    """
    out = []
    depth = 0
    quote = None
    start = -1
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "(":
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0:
                out.append((start, i))
    if depth:
        out.append((start, len(text) - 1))
    result = []
    for open_i, close_i in out:
        name_start = _callee_start(text, open_i)
        if name_start is not None:
            result.append((name_start, open_i, close_i))
    return result


def split_args(inner: str) -> list[str]:
    """Split an argument list at top-level commas: ``"a, f(b, c), "`` -> ``["a", "f(b, c)", ""]``."""
    out, depth, cur, quote = [], 0, [], None
    for ch in inner:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    last = "".join(cur).strip()
    if out or last:
        out.append(last)
    return out


def is_label(name: str) -> bool:
    """True when a callee name is a pointer label, not a kernel function."""
    if "->" in name or "." in name:
        return True
    return name in OPS_MEMBERS or name.startswith("ndo_")


def is_macro(name: str) -> bool:
    """True for upper-case macro names (``INIT_LIST_HEAD``) and loop macros (``for_each_*``)."""
    return name.isupper() or name.startswith("for_each_") or name.startswith("list_for_each")


def _split_tail(tail: str, parsed: ParsedText) -> None:
    tail = tail.strip().lstrip(",;").strip().rstrip(";").strip()
    if not tail:
        return
    m = _BRANCH_RE.match(tail)
    if m:
        parsed.branch = f"{m.group(1)}: {m.group(2).strip()}"
    elif re.match(r"^if\b", tail):
        parsed.condition = tail
    else:
        parsed.remark = tail


def parse_step_text(text: str) -> ParsedText:
    """Parse one step's text (number already removed).

    Args:
        text: e.g. ``"dev = rtnl_create_link(, , macvtap_link_ops )"``.

    Returns:
        A :class:`ParsedText`; ``kind`` is ``"call"`` when ``chain`` is not empty.
        Never raises on odd input: text it cannot read becomes a statement.
    """
    body = text.strip().rstrip(";").strip()
    body = re.sub(r"^return\s+", "", body)
    calls = _top_level_calls(body)
    if not calls:
        parsed = ParsedText(kind="statement", statement_kind="assignment" if "=" in body else "text")
        # a trailing ", remark" on a statement
        if "," in body and "(" not in body:
            _split_tail(body.split(",", 1)[1], parsed)
        return parsed

    # Group the top-level calls into a chain: a call belongs to the chain when
    # it is the first one or the text between the previous call's ')' and its
    # name is exactly an arrow.
    chain_calls = [calls[0]]
    for prev, cur in zip(calls, calls[1:]):
        between = body[prev[2] + 1 : cur[0]]
        if between.strip() == "->":
            chain_calls.append(cur)
        else:
            break
    first_start = chain_calls[0][0]
    last_close = chain_calls[-1][2]
    head = body[:first_start].strip()
    tail = body[last_close + 1 :]

    parsed = ParsedText(kind="call")
    first = re.sub(r"\s+", "", body[first_start : chain_calls[0][1]])
    if head and not _HEAD_RE.match(head):
        parsed.kind, parsed.statement_kind = "statement", "text"
        parsed.problems.append(f"{first}(...) follows text that is not C ({head[:40]!r}): not read as a call")
        _split_tail(tail, parsed)
        return parsed
    if head.endswith("->"):
        parsed.problems.append(f"'->' before {first}(...) follows no function: an empty element of the call chain")
    last = re.sub(r"\s+", "", body[chain_calls[-1][0] : chain_calls[-1][1]])
    if tail.lstrip().startswith("->"):
        parsed.problems.append(f"'->' after {last}(...) leads to no function: the chain ends at {last}, "
                               "the rest is kept as a remark")
    if head:
        if head.endswith("&"):  # &per_cpu(...): taking an address, not a call
            parsed.kind, parsed.statement_kind = "statement", "assignment"
            _split_tail(tail, parsed)
            return parsed
        if head.endswith("="):
            lhs = head[:-1].strip()
            m = re.search(rf"({IDENT})\s*$", lhs)
            if m and ("->" in lhs or "." in lhs):
                # storing into a member: ``x->f = g(...)`` is still a call of g
                parsed.result = lhs
            elif m:
                parsed.result = m.group(1)
    for name_start, open_i, close_i in chain_calls:
        name = re.sub(r"\s+", "", body[name_start:open_i])
        if is_label(name):
            parsed.labels.append(name)
        elif name in BUILTINS:
            parsed.kind, parsed.statement_kind = "statement", "builtin"
        elif is_macro(name):
            parsed.kind = "statement"
            parsed.statement_kind = "loop" if "for_each" in name else "macro"
        else:
            parsed.chain.append(name)
            parsed.args.append(split_args(body[open_i + 1 : close_i]))
    if parsed.kind == "statement":
        parsed.chain = []
        parsed.args = []
    elif not parsed.chain:
        parsed.kind, parsed.statement_kind = "statement", "text"
    _split_tail(tail, parsed)
    return parsed
