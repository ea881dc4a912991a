"""callpath's own spec format: TOML validated by a published JSON Schema.

The schema is ``analysis/spec.schema.json`` (shipped with the package; README
shows an example). A document::

    callpath_spec = 1
    title = "macvlan transmit"

    [[path]]
    id = "3"
    name = "macvlan_start_xmit"
    workload = ["macvlan"]

    [[path.step]]
    id = "3"
    text = "macvlan_start_xmit(skb, dev)"
    calls = ["macvlan_start_xmit"]

    [[path.step]]
    id = "3.1"
    caller = "3"
    text = "macvlan_hash_lookup(port, eth->h_dest), B: unicast"
    calls = ["macvlan_hash_lookup"]
    branch = "B: unicast"

Steps name their caller by id; siblings are expected in the order listed.
Both document readers convert into this format (:func:`dumps`), and
:func:`loads` reads it back into the same :class:`~analysis.spec.Spec`.
"""

from __future__ import annotations

import json
import re
import tomllib
from functools import lru_cache
from pathlib import Path as FsPath

import jsonschema
import tomli_w

from .spec import Path, Spec, SpecError, Step

SCHEMA_PATH = FsPath(__file__).with_name("spec.schema.json")

#: Function-name fragments -> the built-in workload that exercises them.
_WORKLOAD_HINTS = (("macvlan", "macvlan"), ("macvtap", "macvlan"), ("ipvlan", "ipvlan"), ("ipvtap", "ipvlan"), ("veth", "veth"))


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON Schema of the format (a dict)."""
    return json.loads(SCHEMA_PATH.read_text())


def suggest_workloads(path: Path) -> list[str]:
    """Built-in workloads whose traffic reaches the path's functions, by name fragment."""
    out: list[str] = []
    for f in path.functions():
        for frag, wl in _WORKLOAD_HINTS:
            if frag in f and wl not in out:
                out.append(wl)
    return out


def _drop_empty(d: dict) -> dict:
    return {k: v for k, v in d.items() if v not in (None, [], "")}


def to_document(spec: Spec) -> dict:
    """The spec as a dict following the schema (ready for TOML)."""
    doc = {"callpath_spec": 1, "title": spec.title, "converted_from": spec.source, "format": spec.format,
           "notes": list(spec.notes), "path": []}
    for p in spec.paths:
        pd = _drop_empty({"id": p.number, "name": p.name, "source": p.source, "trigger": p.trigger,
                          "workload": p.workloads, "notes": list(p.notes)})
        pd["step"] = [
            _drop_empty({
                "id": s.number, "caller": s.parent, "text": s.text, "calls": list(s.chain), "args": [list(a) for a in s.args], "labels": list(s.labels),
                "statement": s.statement_kind if s.kind == "statement" else None, "result": s.result,
                "condition": s.condition, "branch": s.branch, "remark": s.remark,
                "returns": list(s.expected_returns), "line": s.line, "notes": list(s.notes),
            })
            for s in p.steps
        ]
        doc["path"].append(pd)
    return _drop_empty(doc) | {"path": doc["path"]}


def dumps(spec: Spec) -> str:
    """The spec as TOML text in callpath's format."""
    head = "# callpath spec (schema: analysis/spec.schema.json)\n"
    return head + tomli_w.dumps(to_document(spec), multiline_strings=False)


def _line_of(text: str, needle: str) -> int:
    """First line holding ``needle`` (1 when none). Linear; used once per error."""
    at = text.find(needle) if needle else -1
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


_TABLE_RE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\s]+?)\s*\]\]")
_ID_RE = re.compile(r"^\s*id\s*=")


def _path_lines(text: str, count: int) -> list[int] | None:
    """The line of each ``[[path]]`` table's ``id`` key (else of its header), in one pass.

    Returns ``None`` when the text does not hold exactly ``count`` ``[[path]]``
    headers (paths written as inline tables); the caller then searches per path.
    """
    lines: list[int] = []
    in_path = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _TABLE_RE.match(line) if "[" in line else None
        if m:
            in_path = re.sub(r"\s+", "", m.group(1)) == "path"
            if in_path:
                lines.append(lineno)
            continue
        if line.lstrip().startswith("["):
            in_path = False
        elif in_path and _ID_RE.match(line):
            lines[-1] = lineno
            in_path = False
    return lines if len(lines) == count else None


def _check_callers(pd: dict, source: str, text: str) -> None:
    ids = [s["id"] for s in pd["step"]]
    seen: set[str] = set()
    for sid in ids:
        if sid in seen:
            raise SpecError(source, _line_of(text, f'id = "{sid}"'), f"path {pd['id']}: step id {sid!r} is used twice")
        seen.add(sid)
    caller = {s["id"]: s.get("caller") for s in pd["step"]}
    for sid, c in caller.items():
        if c is not None and c not in caller:
            raise SpecError(source, _line_of(text, f'caller = "{c}"'), f"path {pd['id']}: step {sid} names caller {c!r}, which is not a step of the path")
    reaches_root: set[str] = set()  # steps whose caller chain is known to end: linear overall
    for sid in caller:
        chain, on_chain, cur = [sid], {sid}, caller[sid]
        while cur is not None and cur not in reaches_root:
            if cur in on_chain:
                loop = " -> ".join(chain[chain.index(cur):] + [cur])
                raise SpecError(source, _line_of(text, f'id = "{cur}"'), f"path {pd['id']}: callers form a cycle: {loop}")
            chain.append(cur)
            on_chain.add(cur)
            cur = caller[cur]
        reaches_root.update(chain)
    roots = [sid for sid, c in caller.items() if c is None]
    if len(roots) != 1:
        raise SpecError(source, _line_of(text, f'id = "{pd["id"]}"'),
                        f"path {pd['id']}: needs exactly one step without a caller (the root), found {len(roots)}")


def from_document(doc: dict, source: str, text: str = "") -> Spec:
    """Build a Spec from a parsed document.

    Raises:
        SpecError: schema violation (``file:line: where: what``), duplicate step ids,
            an unknown caller, a cycle of callers, or not exactly one root per path.
    """
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(x) for x in e.absolute_path) or "document"
        needle = str(e.instance)[:40] if isinstance(e.instance, (str, int)) else ""
        raise SpecError(source, _line_of(text, needle) if needle else 1, f"{where}: {e.message}")
    spec = Spec(source=source, format=doc.get("format", "callpath"), title=doc.get("title", FsPath(source).name),
                notes=list(doc.get("notes", [])))
    id_lines = _path_lines(text, len(doc["path"]))
    for i, pd in enumerate(doc["path"]):
        _check_callers(pd, source, text)
        if "source" in pd:
            where = pd["source"]
        else:
            where = f"{source}:{id_lines[i] if id_lines else _line_of(text, 'id = ' + json.dumps(pd['id']))}"
        path = Path(number=pd["id"], name=pd["name"], source=where,
                    trigger=pd.get("trigger"), notes=list(pd.get("notes", [])), workloads=list(pd.get("workload", [])))
        for sd in pd["step"]:
            calls = list(sd.get("calls", []))
            path.steps.append(Step(
                number=sd["id"], parent=sd.get("caller"), text=sd["text"], kind="call" if calls else "statement",
                chain=calls, args=[list(a) for a in sd.get("args", [])], labels=list(sd.get("labels", [])), result=sd.get("result"), condition=sd.get("condition"),
                branch=sd.get("branch"), remark=sd.get("remark"),
                statement_kind=None if calls else sd.get("statement", "text"), line=sd.get("line", 0),
                notes=list(sd.get("notes", [])), expected_returns=list(sd.get("returns", [])),
            ))
        # the root first, then document order (callers before callees is not required)
        spec.paths.append(path)
    return spec


def loads(text: str, source: str) -> Spec:
    """Read callpath-format TOML text.

    Raises:
        SpecError: TOML syntax error (with its line), or see :func:`from_document`.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        raise SpecError(source, int(m.group(1)) if m else 1, f"not valid TOML: {err}") from None
    return from_document(doc, source, text)
