"""Write a command's outputs so that a failed or interrupted run loses nothing.

A run writes into a staging directory inside its output folder (same file
system, so publishing is a rename; and it needs no permission beyond the
folder's own) and the files are moved into place only
when the run succeeds: until then the previous ``report.md``, ``report.json``
or ``trace.parquet`` stay untouched. On an error, Ctrl-C or SIGTERM the
staging directory is removed; after a SIGKILL ``callpath cleanup`` (or the
next run's sweep) removes it, because it is registered in
:mod:`callpath.probes.runstate` before it is created.

Usage::

    with staged_dir(out_dir) as tmp:
        (tmp / "report.md").write_text(text)
    # here report.md is in out_dir; on an exception nothing in out_dir changed

Errors a user can cause (an output path that is a file, not writable, a
symlink loop, two inputs mapped to one output) are :class:`OutputError`, one
line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Staging names start like every temporary name callpath registers, so a sweep may remove them.
STAGE_PREFIX = "callpath-"


class OutputError(ValueError):
    """An output path cannot be used. ``str(err)`` is one line: ``path: what is wrong``."""


def _runstate():
    try:
        from .probes import runstate
    except ImportError:  # pragma: no cover - the registry module is part of callpath
        return None
    return runstate


def _register(path: Path) -> None:
    rs = _runstate()
    if rs is not None:
        rs.register("dir", str(path))


def _unregister(path: Path) -> None:
    rs = _runstate()
    if rs is not None:
        rs.unregister("dir", str(path))


def _why(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not writable ({err.strerror})"
    return err.strerror or str(err)


def check_out_dir(target: str | Path) -> Path:
    """``target`` as a Path when it is an existing folder or does not exist yet.

    Raises:
        OutputError: it exists and is not a folder, or cannot be examined (symlink loop).
    """
    target = Path(target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as err:
        raise OutputError(f"{target}: {_why(err)}") from None
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{target}: exists and is not a folder (give a folder for the outputs)")
    return target


def _make_stage(parent: Path, what: Path) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{parent}: cannot create the folder for {what}: {_why(err)}") from None
    tmp = parent / f"{STAGE_PREFIX}{os.getpid()}-stage-{secrets.token_hex(4)}"
    # the name is this run's own: a sweep after SIGKILL removes it (runstate kind "dir")
    _register(tmp)
    try:
        os.mkdir(tmp, 0o700)
    except OSError as err:
        _unregister(tmp)
        raise OutputError(f"{parent}: cannot write the outputs there: {_why(err)}") from None
    return tmp


def _drop_stage(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.lexists(tmp):
        _unregister(tmp)


def _publish(src: Path, dst: Path) -> None:
    """Move every entry of ``src`` into ``dst`` (rename; same names replaced, others kept)."""
    try:
        dst.mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(f"{dst}: cannot create: {_why(err)}") from None
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _publish(entry, target)
            continue
        try:
            os.replace(entry, target)
        except OSError as err:
            raise OutputError(f"{target}: cannot replace: {_why(err)}") from None


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit move its files into ``target``.

    The staging folder is ``target/callpath-PID-stage-RANDOM``. ``target`` is
    created when missing (and removed again if the run fails and it is still
    empty); files it holds that the run did not write stay. Same-named files
    are replaced by a rename each (never half written). On an exception the
    staging folder is deleted and the files in ``target`` are unchanged.

    Raises:
        OutputError: ``target`` is not a folder, or cannot be created or written.
    """
    target = check_out_dir(target)
    created = not target.exists()
    tmp = _make_stage(target, target)
    ok = False
    try:
        yield tmp
        _publish(tmp, target)
        ok = True
    finally:
        _drop_stage(tmp)
        if created and not ok:
            with contextlib.suppress(OSError):
                target.rmdir()  # only when empty


@contextlib.contextmanager
def staged_file(target: str | Path) -> Iterator[Path]:
    """Yield a path to write ``target``'s new content at; renamed onto ``target`` on a clean exit.

    The previous ``target`` stays until then; on an exception it is unchanged.

    Raises:
        OutputError: ``target`` is a folder, or its folder is not writable.
    """
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder (give a file name)")
    tmp = _make_stage(target.parent, target)
    try:
        yield tmp / target.name
        try:
            os.replace(tmp / target.name, target)
        except FileNotFoundError:
            raise OutputError(f"{target}: the run wrote nothing") from None
        except OSError as err:
            raise OutputError(f"{target}: cannot replace: {_why(err)}") from None
    finally:
        _drop_stage(tmp)


def check_distinct(targets: Iterable[tuple[str, str | Path]]) -> None:
    """Refuse two inputs that would be written to the same output.

    Args:
        targets: ``(input name, output path)`` pairs.

    Raises:
        OutputError: ``out: both A and B would be written here`` for the first clash.
    """
    seen: dict[str, str] = {}
    for name, out in targets:
        key = os.path.normcase(os.path.abspath(out))
        if key in seen:
            raise OutputError(f"{out}: both {seen[key]} and {name} would be written here; "
                              "convert them separately or rename one")
        seen[key] = name
