"""Reader for the numbered-outline format (user documents such as specs/*.txt).

Format (``../shared/seeds/README.md``): ``N.N.N text`` lines separated by ``====``
rules; a step's number gives its parent (``1.2.1`` is called from ``1.2``);
sections numbered ``0.`` hold data-structure diagrams and are skipped; lines
starting with ``;`` are comments and unnumbered lines (C declarations such as
``static int __init net_dev_init(void)``) are kept as notes on the step above.
"""

from __future__ import annotations

import re
from pathlib import Path as FsPath

from .calltext import parse_step_text
from .spec import Path, Spec, SpecError, Step

_STEP_RE = re.compile(r"^(\d+(?:\.\d+)*)(\.?)\s+(\S.*)$")
_RULE_RE = re.compile(r"^\s*[=\-]{3,}\s*$")
#: Deepest step number read (``1.2.3`` has depth 3) and longest number part, in
#: digits; deeper or longer numbers are kept as notes with a warning.
MAX_DEPTH = 64
MAX_PART_DIGITS = 9


def _number_problem(number: str) -> str | None:
    parts = number.split(".")
    if len(parts) > MAX_DEPTH:
        return f"has {len(parts)} levels (at most {MAX_DEPTH} are read)"
    if any(len(x) > MAX_PART_DIGITS for x in parts):
        return f"has a part longer than {MAX_PART_DIGITS} digits"
    return None


def looks_like_outline(text: str) -> bool:
    """True when at least one line is a numbered step (``1. ...`` or ``1.1 ...``)."""
    return any(_STEP_RE.match(line) for line in text.splitlines())


def decode_document(data: bytes, source: str) -> str:
    """Decode a document's bytes as UTF-8.

    Raises:
        SpecError: naming the line of the first undecodable byte, or the file when
            it is empty or holds NUL bytes (binary).
    """
    if not data.strip():
        raise SpecError(source, 1, "the document is empty")
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise SpecError(source, line, "binary data (NUL byte): not a text document")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SpecError(source, line, f"not UTF-8 text (byte 0x{data[err.start]:02x})") from None


def parse_outline(text: str, source: str) -> Spec:
    """Read an outline document into a :class:`Spec`.

    Args:
        text: the document text.
        source: name used in messages and in ``Path.source`` (``file`` of ``file:line``).

    Returns:
        A Spec whose paths are the top-level sections other than ``0.``.

    Raises:
        SpecError: ``file:line`` when no call path is found. Steps whose parent is
            missing are attached to their nearest present ancestor with a warning.
    """
    spec = Spec(source=source, format="outline", title=FsPath(source).name)
    current: Path | None = None
    by_number: dict[str, Path] = {}  # section number -> its first path (a dict keeps reading linear)
    numbers: dict[int, set[str]] = {}  # id(path) -> step numbers seen in it
    last_child: dict[tuple[int, str], int] = {}  # (id(path), parent) -> highest child index seen
    in_diagram = False
    last_step: Step | None = None
    last_number: tuple[int, ...] = ()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or _RULE_RE.match(line):
            continue
        # inside a diagram only an unindented number can start a new section
        m = _STEP_RE.match(stripped) if (line == stripped or not in_diagram) else None
        bad_number = _number_problem(m.group(1)) if m else None
        if bad_number:
            spec.warnings.append(f"{source}:{lineno}: step number {m.group(1)[:24]}... {bad_number}; line kept as a note")
            m = None
        if m:
            number, body = m.group(1), m.group(3)
            top = number.split(".")[0]
            if top == "0":
                in_diagram = True
                current = None
                continue
            if in_diagram and "." in number:
                continue
            in_diagram = False
            key = tuple(int(x) for x in number.split("."))
            if last_number and key <= last_number and number not in {"", None}:
                spec.warnings.append(
                    f"{source}:{lineno}: step {number} comes after {'.'.join(map(str, last_number))}: "
                    "numbering goes backwards; read in document order"
                )
            last_number = key
            parsed = parse_step_text(body)
            if "." not in number:
                if top in by_number:
                    spec.warnings.append(f"{source}:{lineno}: section {top} is numbered twice; read as a new path")
                current = Path(number=number, name=body.strip(), source=f"{source}:{lineno}")
                spec.paths.append(current)
                by_number.setdefault(top, current)
                numbers[id(current)] = {number}
                parent = None
            else:
                if current is None or top != current.number:
                    spec.warnings.append(
                        f"{source}:{lineno}: step {number} appears outside section {top}; read as part of it"
                    )
                    current = by_number.get(top)
                    if current is None:
                        current = Path(number=top, name=f"section {top}", source=f"{source}:{lineno}")
                        spec.paths.append(current)
                        by_number[top] = current
                        numbers[id(current)] = set()
                known = numbers[id(current)]
                if number in known:
                    spec.warnings.append(f"{source}:{lineno}: step {number} is numbered twice; both kept")
                written_parent = number.rsplit(".", 1)[0]
                parent = written_parent
                while parent not in known and "." in parent:
                    parent = parent.rsplit(".", 1)[0]
                if parent not in known:
                    parent = current.steps[0].number if current.steps else None
                if parent != written_parent:
                    spec.warnings.append(
                        f"{source}:{lineno}: step {number} has no parent step {written_parent}; "
                        f"attached to {parent}"
                    )
                known.add(number)
                index = int(number.rsplit(".", 1)[1])
                previous = last_child.get((id(current), written_parent), 0)
                if index > previous + 1:
                    missing = f"{written_parent}.{previous + 1}"
                    spec.warnings.append(f"{source}:{lineno}: step {number} skips {missing} (numbering has a gap)")
                last_child[(id(current), written_parent)] = max(previous, index)
            step = Step(
                number=number,
                parent=parent,
                text=body.strip(),
                kind=parsed.kind,  # type: ignore[arg-type]
                chain=parsed.chain,
                args=parsed.args,
                labels=parsed.labels,
                result=parsed.result,
                condition=parsed.condition,
                branch=parsed.branch,
                remark=parsed.remark,
                statement_kind=parsed.statement_kind,
                line=lineno,
            )
            for problem in parsed.problems:
                spec.warnings.append(f"{source}:{lineno}: step {number}: {problem}")
                step.notes.append(f"not a call: {problem}")
            current.steps.append(step)
            last_step = step
            continue
        if in_diagram:
            continue
        if last_step is not None and current is not None:
            last_step.notes.append(stripped)
        else:
            spec.warnings.append(f"{source}:{lineno}: text before the first step ignored: {stripped[:60]!r}")
    if not spec.paths:
        raise SpecError(source, 1, "no numbered call path found (expected lines like '1. func()' and '1.1 callee()')")
    return spec
