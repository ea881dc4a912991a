"""Read a user document in whichever format it is written: outline, Markdown prose or TOML.

Documents are untrusted input. Before a byte is read, a document must be a
regular file (not a FIFO, socket, device or directory; a symlink loop is named
as such) no larger than the document limit, :data:`DEFAULT_MAX_DOC_BYTES`
unless ``max_bytes`` or the environment variable ``CALLPATH_MAX_DOC_BYTES``
says otherwise. The file is opened non-blocking and read at most limit + 1
bytes, so a file that grows or is swapped for a FIFO after the check cannot
make callpath block or fill memory. Every reader is linear in input size.

A folder argument stands for the documents directly inside it: names ending in
``.txt``, ``.md``, ``.markdown`` or ``.toml`` in any letter case, not starting
with ``.``. A folder with no document is an error that lists what was skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .outline import decode_document, looks_like_outline, parse_outline
from .ownspec import loads as parse_callpath_toml
from .ownspec import suggest_workloads
from .prose import parse_prose
from .spec import Spec, SpecError

#: Where the documents shipped with callpath live (the repository's specs/).
SHIPPED_SPECS = Path(__file__).resolve().parent.parent / "specs"

#: Largest document read, in bytes (16 MiB); see :func:`max_doc_bytes`.
DEFAULT_MAX_DOC_BYTES = 16 * 1024 * 1024
#: Environment variable that overrides :data:`DEFAULT_MAX_DOC_BYTES`.
MAX_DOC_BYTES_ENV = "CALLPATH_MAX_DOC_BYTES"
#: Warnings kept per document; the rest are counted in one last warning.
MAX_WARNINGS = 200
#: Name endings (compared in lower case) that make a folder entry a document.
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".toml")

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def max_doc_bytes(override: int | None = None) -> int:
    """The document size limit in bytes: ``override``, else ``$CALLPATH_MAX_DOC_BYTES``, else 16 MiB.

    Raises:
        SpecError: the environment variable is not a positive whole number.
    """
    if override is not None:
        return override
    env = os.environ.get(MAX_DOC_BYTES_ENV)
    if not env:
        return DEFAULT_MAX_DOC_BYTES
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value <= 0:
        raise SpecError(MAX_DOC_BYTES_ENV, 0, f"{env[:40]!r} is not a positive number of bytes")
    return value


def _not_regular(source: str, mode: int) -> SpecError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    if stat.S_ISDIR(mode):
        return SpecError(source, 0, "is a directory (give the documents inside it)")
    return SpecError(source, 0, f"is {kind}, not a regular file: give a text document")


def _os_error(source: str, err: OSError) -> SpecError:
    if err.errno == errno.ENOENT:
        return SpecError(source, 0, "no such file")
    if err.errno == errno.ELOOP:
        return SpecError(source, 0, "symlink loop (too many levels of symbolic links)")
    return SpecError(source, 0, f"cannot read: {err.strerror or err}")


def read_document_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of one document, after checking that it is a regular file under the limit.

    Args:
        path: the document.
        max_bytes: size limit in bytes (default :func:`max_doc_bytes`).

    Raises:
        SpecError: ``file:0: reason``: missing, a symlink loop, not a regular
            file (directory, FIFO, socket, device), over the limit, unreadable.
    """
    source = str(path)
    limit = max_doc_bytes(max_bytes)
    try:
        st = os.stat(path)
    except OSError as err:
        raise _os_error(source, err) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(source, st.st_mode)
    too_big = SpecError(source, 0, f"larger than the document limit of {limit} bytes "
                        f"(raise it with --max-doc-bytes or {MAX_DOC_BYTES_ENV})")
    if st.st_size > limit:
        raise too_big
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise _os_error(source, err) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped after the check
            raise _not_regular(source, st.st_mode)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as err:
        raise _os_error(source, err) from None
    finally:
        os.close(fd)
    if total > limit:
        raise too_big
    return b"".join(chunks)


def read_spec(path: str | Path, max_bytes: int | None = None) -> Spec:
    """Read one document.

    ``.toml`` files are callpath's own format (:mod:`analysis.ownspec`);
    Markdown files (``.md``) and documents without numbered steps are read as
    prose bullets; everything else as a numbered outline. Paths read from the
    user's formats get suggested workloads from their function names.

    Args:
        path: the document; its text as given is the ``file`` of ``file:line``.
        max_bytes: size limit in bytes (default :func:`max_doc_bytes`).

    Raises:
        SpecError: ``file:line: reason`` (see :func:`read_document_bytes`; empty,
            binary, not UTF-8, no call path).
    """
    path = Path(path)
    source = str(path)
    text = decode_document(read_document_bytes(path, max_bytes), source)
    if path.suffix.lower() == ".toml":
        return parse_callpath_toml(text, source)
    if path.suffix.lower() in (".md", ".markdown") or not looks_like_outline(text):
        spec = parse_prose(text, source)
    else:
        spec = parse_outline(text, source)
    for p in spec.paths:
        p.workloads = suggest_workloads(p)
    if len(spec.warnings) > MAX_WARNINGS:  # one per line of a hostile document would flood the terminal
        more = len(spec.warnings) - MAX_WARNINGS
        spec.warnings[MAX_WARNINGS:] = [f"{source}:0: {more} more warnings not shown"]
    return spec


@dataclass
class Selection:
    """What the document arguments stand for.

    Attributes:
        documents: files to read, in argument order (a folder's sorted by name).
        skipped: folder entries that are not documents (other name endings,
            hidden names, subfolders).
    """

    documents: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def _is_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(p).st_mode)
    except OSError:  # missing, loop, no permission: reported when read
        return False


def _listing(names: list[Path], limit: int = 6) -> str:
    shown = ", ".join(p.name for p in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "nothing"


def select_documents(args: list[str]) -> Selection:
    """Expand folders into the documents inside them (sorted); default: the shipped specs.

    Raises:
        SpecError: ``folder:0:`` when a folder cannot be listed or holds no
            document (the message names what was skipped).
    """
    sel = Selection()
    for a in args or [str(SHIPPED_SPECS)]:
        p = Path(a)
        if not _is_dir(p):
            sel.documents.append(p)
            continue
        try:
            entries = sorted(p.iterdir())
        except OSError as err:
            raise SpecError(str(p), 0, f"cannot list the folder: {err.strerror or err}") from None
        docs = [q for q in entries if q.suffix.lower() in DOC_SUFFIXES and not q.name.startswith(".") and not _is_dir(q)]
        skipped = [q for q in entries if q not in docs]
        if not docs:
            raise SpecError(str(p), 0, "no documents in this folder (documents end in "
                            f"{', '.join(DOC_SUFFIXES)} in any letter case); skipped: {_listing(skipped)}")
        sel.documents.extend(docs)
        sel.skipped.extend(skipped)
    return sel


def expand_spec_args(args: list[str]) -> list[Path]:
    """The documents the arguments name (see :func:`select_documents`)."""
    return select_documents(args).documents


def read_each(paths: list[Path], max_bytes: int | None = None, display=lambda p: p) -> tuple[list[tuple[Path, Spec]], list[SpecError]]:
    """Read every document, collecting errors instead of stopping at the first.

    Args:
        paths: documents (already expanded).
        max_bytes: size limit per document in bytes.
        display: maps a path to the name used in messages (``file`` of ``file:line``).

    Returns:
        ``([(path, spec)] for the good ones, [SpecError] for the bad ones)``, both in input order.
    """
    good, bad = [], []
    for p in paths:
        try:
            good.append((p, read_spec(display(p), max_bytes)))
        except SpecError as err:
            bad.append(err)
    return good, bad


def read_specs(args: list[str], max_bytes: int | None = None) -> list[Spec]:
    """Read every document named (folders expanded). Raises the first SpecError after trying all."""
    good, bad = read_each(expand_spec_args(args), max_bytes)
    if bad:
        raise bad[0]
    return [s for _, s in good]
