"""A registry of what a run creates on the host, that outlives a SIGKILL.

Every kernel or host object a callpath process creates -- a network
namespace, a mount, a tracefs instance, a kprobe event, a temporary
directory, a child process group (the lab VM's vng and QEMU), a loaded
module -- is written here *before* it is created and struck off after it is
removed. The registry is one JSON-lines file per live process under
``/run/callpath/`` (``$XDG_RUNTIME_DIR/callpath`` or ``/tmp/callpath-UID``
when not root), named ``<pid>-<start>-<boot>.jsonl`` with ``start`` the process
start time in clock ticks since boot (``/proc/PID/stat`` field 22), so a
reused pid is never taken for the dead run, and ``boot`` the kernel's boot id,
so files of another boot -- or the host's, seen from inside a lab VM -- are
never swept.

:func:`sweep` (run at the start of ``verify``/``record`` and by
``callpath cleanup``) undoes what dead runs left, newest object first, and
deletes their files. A normal exit undoes what is still registered and
deletes the process's own file (``atexit``).

Lines are ``{"op": "add"|"del", "kind": KIND, "value": STR}``; ``pid``
entries also carry ``"start"`` (the process group leader's start time).
Kinds and what undoing them does:

``netns``             remove the named namespace (``/run/netns/NAME``)
``mount``             unmount PATH (``MNT_DETACH``) if it is a mount point
``tracefs-instance``  ``rmdir`` the instance directory
``kprobe-event``      ``TRACEFS|GROUP/EVENT``: disable it, then ``-:GROUP/EVENT``
``dir``               delete the directory tree (only names starting ``callpath-``)
``pid``               SIGKILL the process group (vng and its QEMU)
``module``            ``modprobe -r NAME``

``CALLPATH_RUN_DIR`` overrides the directory (tests); like the default, it
must be a directory owned by the user and writable by nobody else.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

KINDS = ("netns", "mount", "tracefs-instance", "kprobe-event", "dir", "pid", "module")
ROOT_RUN_DIR = Path("/run/callpath")
DIR_PREFIX = "callpath-"


class RunStateError(RuntimeError):
    """The registry cannot be written (its directory is unsafe or unwritable)."""


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _safe_dir(path: Path) -> bool:
    """True when ``path`` is a real directory owned by us and writable by nobody else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat as _stat

    return _stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def run_dir() -> Path:
    """The registry directory: ``/run/callpath`` as root, else a per-user one (mode 0700).

    Raises:
        RunStateError: no safe directory can be made.
    """
    if os.environ.get("CALLPATH_RUN_DIR"):  # tests; must still be ours and private
        candidates = [Path(os.environ["CALLPATH_RUN_DIR"])]
    elif os.geteuid() == 0:
        candidates = [ROOT_RUN_DIR]
    else:
        candidates = []
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg:
            candidates.append(Path(xdg) / "callpath")
    candidates.append(Path(tempfile.gettempdir()) / f"callpath-{os.geteuid()}")
    for cand in candidates:
        with contextlib.suppress(OSError):
            cand.mkdir(mode=0o700, parents=False, exist_ok=True)
        if _safe_dir(cand):
            return cand
    raise RunStateError(f"no safe directory for the run registry (tried {', '.join(map(str, candidates))})")


class _Registry:
    """This process's registry file; created on the first :func:`register`."""

    def __init__(self) -> None:
        self.pid = 0
        self.path: Path | None = None
        self.live: list[dict] = []  # registered, not yet unregistered, in order
        self.created = 0  # entries registered by this process, ever
        self.warned = False

    def _file(self) -> Path | None:
        if self.pid != os.getpid():  # first use, or a forked child: start afresh
            self.pid, self.path, self.live, self.created = os.getpid(), None, [], 0
        if self.path is None:
            try:
                self.path = run_dir() / f"{self.pid}-{process_start(self.pid)}-{boot_id()}.jsonl"
            except RunStateError:
                return None
            atexit.register(_at_exit, self.pid)
        return self.path

    def write(self, entry: dict) -> None:
        path = self._file()
        try:
            if path is None:
                raise OSError("no safe registry directory")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as err:
            if not self.warned:
                self.warned = True
                print(f"callpath: warning: run registry not written ({err}); after a SIGKILL, "
                      "`callpath cleanup` cannot find what this run made", file=sys.stderr)


_reg = _Registry()


def register(kind: str, value: str) -> None:
    """Record that this run is about to create ``value`` of ``kind`` (call BEFORE creating it).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown run-state kind {kind!r}")
    entry = {"op": "add", "kind": kind, "value": str(value)}
    if kind == "pid":
        entry["start"] = process_start(int(value))
    _reg.write(entry)  # also resets the in-memory state in a forked child
    _reg.live.append(entry)
    _reg.created += 1


def unregister(kind: str, value: str) -> None:
    """Record that ``value`` of ``kind`` is gone (removed by the code that made it)."""
    value = str(value)
    for i in range(len(_reg.live) - 1, -1, -1):
        if _reg.live[i]["kind"] == kind and _reg.live[i]["value"] == value:
            del _reg.live[i]
            break
    if _reg.pid == os.getpid() and _reg.path is not None:
        _reg.write({"op": "del", "kind": kind, "value": value})


def created() -> int:
    """How many objects this process registered (0: it created nothing on the host)."""
    return _reg.created if _reg.pid == os.getpid() else 0


def leftover() -> list[tuple[str, str]]:
    """``(kind, value)`` of objects this process registered and has not removed yet."""
    return [(e["kind"], e["value"]) for e in _reg.live] if _reg.pid == os.getpid() else []


def _read(path: Path) -> list[dict]:
    """Entries still registered in a registry file, in registration order."""
    live: list[dict] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return live
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if not isinstance(e, dict) or e.get("kind") not in KINDS or not isinstance(e.get("value"), str):
            continue
        if e.get("op") == "add":
            live.append(e)
        elif e.get("op") == "del":
            for i in range(len(live) - 1, -1, -1):
                if live[i]["kind"] == e["kind"] and live[i]["value"] == e["value"]:
                    del live[i]
                    break
    return live


def boot_id() -> str:
    """This boot of this kernel (first 8 hex digits of ``/proc/sys/kernel/random/boot_id``)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "0"


def _alive(name: str) -> bool:
    """Is the run of registry file ``PID-START-BOOT.jsonl`` still running? A file of
    another boot or kernel (a lab VM guest seeing the host's files) counts as alive:
    its pids mean nothing here, so it is never swept from here."""
    pid, start, boot = (name.removesuffix(".jsonl").split("-") + ["", ""])[:3]
    if boot != boot_id():
        return True
    return pid.isdigit() and process_start(int(pid)) == start


def _is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            return any(len(p) > 4 and p[4] == path for p in (line.split() for line in fh))
    except OSError:
        return os.path.ismount(path)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def undo(kind: str, value: str, start: str | None = None) -> bool:
    """Remove one registered object. Returns True when something was removed; never raises."""
    try:
        if kind == "netns":
            if "/" in value or not os.path.lexists(f"/run/netns/{value}"):
                return False
            from pyroute2 import netns as pr_netns  # noqa: PLC0415

            pr_netns.remove(value)
            return True
        if kind == "mount":
            if not _is_mountpoint(value):
                return False
            libc = ctypes.CDLL(None, use_errno=True)
            return libc.umount2(value.encode(), 2) == 0  # MNT_DETACH
        if kind == "tracefs-instance":
            if not os.path.isdir(value):
                return False
            with contextlib.suppress(OSError):
                _write(os.path.join(value, "tracing_on"), "0\n")
            os.rmdir(value)
            return True
        if kind == "kprobe-event":
            tracefs, _, event = value.partition("|")
            if not event or not os.path.exists(os.path.join(tracefs, "events", event)):
                return False
            for enable in [os.path.join(tracefs, "events", event, "enable")] + [
                    os.path.join(tracefs, "instances", d, "events", event, "enable")
                    for d in _listdir(os.path.join(tracefs, "instances")) if d.startswith(DIR_PREFIX)]:
                with contextlib.suppress(OSError):
                    _write(enable, "0\n")
            _write(os.path.join(tracefs, "kprobe_events"), f"-:{event}\n")
            return True
        if kind == "dir":
            if not Path(value).name.startswith(DIR_PREFIX) or not os.path.isdir(value) or os.path.islink(value):
                return False
            shutil.rmtree(value, ignore_errors=True)
            return not os.path.exists(value)
        if kind == "pid":
            pgid = int(value)
            now = process_start(pgid)
            if now is not None and start is not None and now != start:
                return False  # the leader's pid was reused: not ours
            os.killpg(pgid, signal.SIGKILL)
            return True
        if kind == "module":
            if not os.path.exists(f"/sys/module/{value}/initstate"):
                return False
            return subprocess.run(["modprobe", "-r", "--", value], capture_output=True, timeout=60).returncode == 0
    except (OSError, ValueError, subprocess.SubprocessError, ImportError):
        return False
    except Exception:  # noqa: BLE001 - pyroute2 raises its own kinds; a sweep never fails
        return False
    return False


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def sweep(progress=lambda m: None) -> list[str]:
    """Undo what dead callpath runs left behind, and delete their registry files.

    A run is dead when no process has its pid and start time. Concurrent live
    runs are left alone; two sweeps at once do not undo the same file twice
    (``flock``). Namespaces named ``cp-<pid>-...`` by a dead pid that no
    registry names (an older callpath) are removed too.

    Returns:
        ``"KIND VALUE"`` for every object removed.
    """
    removed: list[str] = []
    try:
        directory = run_dir()
    except RunStateError as err:
        progress(f"cleanup: {err}")
        return removed
    own = _reg.path.name if _reg.pid == os.getpid() and _reg.path else None
    for path in sorted(directory.glob("*.jsonl")):
        if path.name == own or _alive(path.name):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # another sweep has it
            for e in reversed(_read(path)):
                if undo(e["kind"], e["value"], e.get("start")):
                    removed.append(f"{e['kind']} {e['value']}")
                    progress(f"cleanup: removed {e['kind']} {e['value']} (left by dead run {path.stem})")
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    removed += _sweep_unregistered_namespaces(progress)
    return removed


def _sweep_unregistered_namespaces(progress) -> list[str]:
    if os.geteuid() != 0 or not any(n.startswith("cp-") for n in _listdir("/run/netns")):
        return []
    try:
        from .workload import remove_leftover_namespaces  # noqa: PLC0415

        names = remove_leftover_namespaces()
    except Exception as err:  # noqa: BLE001 - best effort
        progress(f"cleanup: leftover namespaces: {err}")
        return []
    for n in names:
        progress(f"cleanup: removed netns {n} (left by a dead run)")
    return [f"netns {n}" for n in names]


def _at_exit(pid: int) -> None:
    """Normal exit: undo what is still registered, delete this process's file."""
    if pid != os.getpid() or _reg.pid != pid or _reg.path is None:
        return
    for e in reversed(_reg.live):
        undo(e["kind"], e["value"], e.get("start"))
    _reg.live.clear()
    with contextlib.suppress(OSError):
        _reg.path.unlink()


def make_temp_dir(purpose: str, base: str | Path | None = None) -> Path:
    """Create (mode 0700) and register a directory ``callpath-<pid>-<purpose>-<random>``.

    The name uses only ``[A-Za-z0-9_-]``, so it is safe on any command line.
    ``base`` defaults to the first of ``$TMPDIR``, ``/tmp``, ``/var/tmp`` whose
    path holds only such characters (and ``/`` and ``.``).

    Raises:
        RunStateError: no usable base directory.
        OSError: the directory cannot be created.
    """
    import re

    safe = re.compile(r"^/[A-Za-z0-9_./-]*$")
    bases = [Path(base)] if base else [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    usable = [b for b in bases if safe.match(str(b)) and os.path.isdir(b)]
    if not usable or not re.fullmatch(r"[A-Za-z0-9_-]+", purpose):
        raise RunStateError(f"no usable temporary directory for {purpose!r} (tried {', '.join(map(str, bases))})")
    path = usable[0] / f"{DIR_PREFIX}{os.getpid()}-{purpose}-{secrets.token_hex(4)}"
    register("dir", str(path))
    try:
        os.mkdir(path, 0o700)
    except OSError:
        unregister("dir", str(path))
        raise
    return path


def remove_temp_dir(path: Path) -> None:
    """Delete a directory made by :func:`make_temp_dir` and strike it off."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.exists(path):
        unregister("dir", str(path))
