"""Read a user document in whichever format it is written: outline or Markdown prose."""

from __future__ import annotations

from pathlib import Path

from .outline import decode_document, looks_like_outline, parse_outline
from .ownspec import loads as parse_callpath_toml
from .ownspec import suggest_workloads
from .prose import parse_prose
from .spec import Spec, SpecError

#: Where the documents shipped with callpath live (the repository's specs/).
SHIPPED_SPECS = Path(__file__).resolve().parent.parent / "specs"


def read_spec(path: str | Path) -> Spec:
    """Read one document.

    ``.toml`` files are callpath's own format (:mod:`analysis.ownspec`);
    Markdown files (``.md``) and documents without numbered steps are read as
    prose bullets; everything else as a numbered outline. Paths read from the
    user's formats get suggested workloads from their function names.

    Raises:
        SpecError: ``file:line: reason`` (missing file, empty, binary, not UTF-8,
            no call path).
    """
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(source, 0, "no such file") from None
    except IsADirectoryError:
        raise SpecError(source, 0, "is a directory (give the documents inside it)") from None
    except OSError as err:
        raise SpecError(source, 0, f"cannot read: {err.strerror}") from None
    text = decode_document(data, source)
    if path.suffix.lower() == ".toml":
        return parse_callpath_toml(text, source)
    if path.suffix.lower() in (".md", ".markdown") or not looks_like_outline(text):
        spec = parse_prose(text, source)
    else:
        spec = parse_outline(text, source)
    for p in spec.paths:
        p.workloads = suggest_workloads(p)
    return spec


def expand_spec_args(args: list[str]) -> list[Path]:
    """Expand directories into the documents inside them (sorted); default: the shipped specs."""
    if not args:
        args = [str(SHIPPED_SPECS)]
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix in (".txt", ".md", ".markdown", ".toml")))
        else:
            out.append(p)
    return out


def read_specs(args: list[str]) -> list[Spec]:
    """Read every document named (directories expanded). Raises SpecError on the first bad one."""
    return [read_spec(p) for p in expand_spec_args(args)]
