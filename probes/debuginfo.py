"""Find, or fetch once, the DWARF debug info of a kernel release (vmlinux and modules).

Inlined functions are not in kallsyms; only DWARF knows where the compiler
put them (:mod:`probes.inline`). This module finds the files that hold it:

* a folder the user gives (``--debuginfo DIR``): searched as a debug root
  (``DIR/usr/lib/debug/...``, ``DIR/lib/modules/RELEASE/...``), as a module
  tree (``DIR/kernel/...``) and flat (``DIR/macvlan.ko``, ``DIR/vmlinux``);
* the places ``perf`` searches (tools/perf/util/symbol.c, dso.c, 6.1):
  ``/usr/lib/debug/lib/modules/RELEASE/<module path>``,
  ``/usr/lib/debug/boot/vmlinux-RELEASE``, ``/usr/lib/debug/.build-id/xx/rest.debug``,
  ``/lib/modules/RELEASE/build/vmlinux``, ``/boot/vmlinux-RELEASE``;
* callpath's per-release cache (:func:`cache_root`), filled by :func:`fetch_debian`
  from Debian's ``linux-image-RELEASE-dbg`` package: downloaded once with
  ``apt-get download`` and only the files needed are extracted
  (``dpkg-deb --fsys-tarfile PKG | tar -x MEMBERS``; measured on Debian's
  6.1.0-56: 858 MB in about 10 s, five modules extracted in about 55 s);
* ``DEBUGINFOD_URLS`` when set: ``GET URL/buildid/HEX/debuginfo`` per file
  (the debuginfod protocol), stored in the cache by build id.

A file counts only when it is ELF with a ``.debug_info`` section (Debian's
installed modules are stripped). Nothing here goes through a shell: every
command is an argv list.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEBUG_ROOT = "/usr/lib/debug"
_COMPRESSED = re.compile(r"\.(xz|gz|zst)$")
#: How a user turns inlining checks on, said wherever they could not be made.
ENABLE_HINT = ("install the kernel's debug info (Debian: `tools/fetch-debuginfo.sh RELEASE`, or "
               "`make setup` for the lab kernel), or pass --debuginfo DIR")


class DebugInfoError(RuntimeError):
    """Debug info could not be fetched (no such package, apt/dpkg-deb/tar failed)."""


def cache_root(release: str) -> Path:
    """callpath's debug-info cache of ``release``: ``/var/cache/callpath/debuginfo/RELEASE`` for
    root, else ``$XDG_CACHE_HOME/callpath/debuginfo/RELEASE``. Extracted files keep the
    package's layout below it (``usr/lib/debug/...``)."""
    if os.geteuid() == 0:
        base = Path("/var/cache/callpath")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "callpath"
    return base / "debuginfo" / release


def has_dwarf(path: str | Path) -> bool:
    """True when ``path`` is an ELF file with a non-empty ``.debug_info`` section."""
    from elftools.common.exceptions import ELFError  # noqa: PLC0415
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415

    try:
        with open(path, "rb") as fh:
            sec = ELFFile(fh).get_section_by_name(".debug_info")
            return sec is not None and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"] > 0
    except (OSError, ELFError, ValueError):
        return False


def build_id(path: str | Path) -> str | None:
    """The GNU build id (hex) of an ELF file (``.note.gnu.build-id``), or None."""
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415
    from .modindex import _open_elf_bytes  # noqa: PLC0415

    try:
        p = Path(path)
        data = _open_elf_bytes(p) if p.name.endswith((".xz", ".gz", ".zst", ".ko")) else open(p, "rb")
        with data as fh:
            for sec in ELFFile(fh).iter_sections():
                if sec["sh_type"] != "SHT_NOTE":
                    continue
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
    except Exception:  # noqa: BLE001 - any unreadable file simply has no build id
        return None
    return None


def debug_relpath(module_relpath: str) -> str:
    """The debug file's path below ``lib/modules/RELEASE`` for a module file's path
    (``kernel/drivers/net/macvlan.ko.xz`` -> ``kernel/drivers/net/macvlan.ko``)."""
    return _COMPRESSED.sub("", module_relpath)


@dataclass
class DebugFiles:
    """Where the DWARF of one release was found.

    Attributes:
        release: kernel release.
        modules: module name -> debug file path.
        vmlinux: the core image's debug file, or None.
        missing: module names (or ``vmlinux``) looked for and not found.
        sources: how each found file was found (``user``, ``system``, ``cache``,
            ``build-id``, ``debuginfod``).
    """

    release: str
    modules: dict[str, str] = field(default_factory=dict)
    vmlinux: str | None = None
    missing: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"release": self.release, "modules": dict(self.modules), "vmlinux": self.vmlinux,
                "missing": list(self.missing), "sources": dict(self.sources)}


def _roots(release: str, user_dirs: list[str]) -> list[tuple[str, Path]]:
    out = [("user", Path(d)) for d in user_dirs]
    out.append(("system", Path("/")))
    out.append(("cache", cache_root(release)))
    return out


def module_candidates(release: str, module: str, relpath: str, user_dirs: list[str] = ()) -> list[tuple[str, Path]]:
    """Paths, in search order, where the debug file of ``module`` may be (``(source, path)``)."""
    rel = debug_relpath(relpath)
    base = Path(rel).name
    out = []
    for src, root in _roots(release, list(user_dirs)):
        out.append((src, root / DEBUG_ROOT.lstrip("/") / "lib/modules" / release / rel))
        if src == "user":
            out += [(src, root / "lib/modules" / release / rel), (src, root / rel), (src, root / base),
                    (src, root / f"{module}.ko"), (src, root / f"{module}.ko.debug")]
    return out


def vmlinux_candidates(release: str, user_dirs: list[str] = ()) -> list[tuple[str, Path]]:
    """Paths, in search order, where vmlinux with DWARF may be (perf's list plus the user's and the cache)."""
    out = []
    for src, root in _roots(release, list(user_dirs)):
        out.append((src, root / "usr/lib/debug/boot" / f"vmlinux-{release}"))
        out.append((src, root / "usr/lib/debug/lib/modules" / release / "vmlinux"))
        if src == "user":
            out += [(src, root / "vmlinux"), (src, root / f"vmlinux-{release}")]
        if src == "system":
            out += [(src, Path("/lib/modules") / release / "build/vmlinux"), (src, Path("/boot") / f"vmlinux-{release}")]
    return out


def _by_build_id(bid: str | None) -> Path | None:
    if not bid or len(bid) < 3:
        return None
    p = Path(DEBUG_ROOT, ".build-id", bid[:2], bid[2:] + ".debug")
    return p if p.is_file() and has_dwarf(p) else None


def _debuginfod(bid: str | None, release: str, progress) -> Path | None:
    """Fetch a debug file by build id from the servers in ``DEBUGINFOD_URLS`` (cached by build id)."""
    urls = os.environ.get("DEBUGINFOD_URLS", "").split()
    if not bid or not urls or not re.fullmatch(r"[0-9a-f]{8,128}", bid):
        return None
    dest = cache_root(release) / "build-id" / f"{bid}.debug"
    if dest.is_file() and has_dwarf(dest):
        return dest
    for url in urls:
        if not url.startswith(("https://", "http://")):
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(f"{url.rstrip('/')}/buildid/{bid}/debuginfo", timeout=60) as resp, \
                    tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
                shutil.copyfileobj(resp, tmp)
            os.replace(tmp.name, dest)
            if has_dwarf(dest):
                progress(f"debuginfod: {bid} from {url}")
                return dest
        except OSError as err:
            progress(f"debuginfod {url}: {bid}: {err}")
    return None


def find_debuginfo(release: str, modules: dict[str, str], vmlinux: bool = False, user_dirs: list[str] = (),
                   moddir: str | None = None, progress=lambda m: None) -> DebugFiles:
    """Find the debug files of ``modules`` (and of vmlinux when asked) for ``release``.

    Args:
        release: kernel release.
        modules: module name -> its file's path relative to ``/lib/modules/RELEASE``
            (``ModuleIndex.modules``).
        vmlinux: also look for vmlinux's debug file.
        user_dirs: folders the user gave (``--debuginfo``), searched first.
        moddir: the module tree (default ``/lib/modules/RELEASE``): its files give
            the build ids for the ``.build-id`` and debuginfod look-ups, and are
            used themselves when they still carry DWARF.
        progress: callable taking one status line.

    Returns:
        A :class:`DebugFiles`; nothing found is not an error (``missing`` says what).
    """
    out = DebugFiles(release)
    moddir = Path(moddir or Path("/lib/modules", release))
    for mod, rel in modules.items():
        found = next(((s, p) for s, p in module_candidates(release, mod, rel, user_dirs) if p.is_file() and has_dwarf(p)),
                     None)
        if found is None and (moddir / rel).is_file() and (moddir / rel).suffix == ".ko" and has_dwarf(moddir / rel):
            found = ("system", moddir / rel)  # an unstripped module tree (self-built kernels)
        if found is None:
            bid = build_id(moddir / rel) if (moddir / rel).is_file() else None
            p = _by_build_id(bid)
            found = ("build-id", p) if p else None
            if found is None:
                p = _debuginfod(bid, release, progress)
                found = ("debuginfod", p) if p else None
        if found:
            out.modules[mod], out.sources[mod] = str(found[1]), found[0]
        else:
            out.missing.append(mod)
    if vmlinux:
        found = next(((s, p) for s, p in vmlinux_candidates(release, user_dirs) if p.is_file() and has_dwarf(p)), None)
        if found:
            out.vmlinux, out.sources["vmlinux"] = str(found[1]), found[0]
        else:
            out.missing.append("vmlinux")
    return out


def dbg_package(release: str) -> str:
    """Debian's package with the DWARF of ``release``'s vmlinux and modules."""
    if not re.fullmatch(r"[0-9A-Za-z.+~_-]+", release):
        raise DebugInfoError(f"not a kernel release: {release!r}")
    return f"linux-image-{release}-dbg"


def fetch_debian(release: str, modules: dict[str, str], vmlinux: bool = False, keep_package: bool = False,
                 progress=lambda m: None) -> list[str]:
    """Extract the debug files of ``modules`` (and vmlinux when asked) from Debian's
    ``linux-image-RELEASE-dbg`` into :func:`cache_root` (files already there are skipped).

    The package (858 MB for 6.1) is downloaded with ``apt-get download`` into the
    cache, read once with ``dpkg-deb --fsys-tarfile`` piped into ``tar -x`` naming
    only the wanted members, and removed afterwards unless ``keep_package``.
    vmlinux's debug file is large (633 MB for 6.1) and taken only when asked.

    Args:
        release: kernel release (``6.1.0-56-amd64``).
        modules: module name -> path relative to ``/lib/modules/RELEASE``.
        vmlinux: also extract ``usr/lib/debug/boot/vmlinux-RELEASE``.
        keep_package: keep the downloaded ``.deb`` in the cache.
        progress: callable taking one status line.

    Returns:
        Paths (in the cache) extracted by this call.

    Raises:
        DebugInfoError: apt-get, dpkg-deb or tar failed, or the package does not exist.
    """
    pkg = dbg_package(release)
    root = cache_root(release)
    wanted = [f"./usr/lib/debug/lib/modules/{release}/{debug_relpath(rel)}" for rel in modules.values()]
    if vmlinux:
        wanted.append(f"./usr/lib/debug/boot/vmlinux-{release}")
    todo = [m for m in wanted if not (root / m).is_file()]
    if not todo:
        return []
    root.mkdir(parents=True, exist_ok=True)
    debs = sorted(root.glob(f"{pkg}_*.deb"))
    t0 = time.monotonic()
    if not debs:
        progress(f"debug info: downloading {pkg} (about 860 MB for 6.1) into {root}")
        try:
            res = subprocess.run(["apt-get", "download", pkg], cwd=root, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DebugInfoError(f"apt-get download {pkg}: {err}") from None
        debs = sorted(root.glob(f"{pkg}_*.deb"))
        if res.returncode != 0 or not debs:
            last = (res.stderr.strip().splitlines() or ["no package file"])[-1]
            raise DebugInfoError(f"apt-get download {pkg} failed: {last}")
        progress(f"debug info: downloaded {debs[-1].name} in {time.monotonic() - t0:.0f} s")
    t1 = time.monotonic()
    progress(f"debug info: extracting {len(todo)} files from {debs[-1].name} (about a minute)")
    try:
        deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-C", str(root), "--", *todo], stdin=deb.stdout, capture_output=True,
                             text=True, timeout=1800)
        deb.stdout.close()
        deb_rc = deb.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DebugInfoError(f"extracting from {debs[-1].name}: {err}") from None
    got = [str(root / m) for m in todo if (root / m).is_file()]
    if not keep_package:
        for d in debs:
            d.unlink(missing_ok=True)
    if tar.returncode != 0 and not got:
        why = (tar.stderr.strip().splitlines() or [f"exit status {tar.returncode}"])[-1]
        raise DebugInfoError(f"tar could not extract from {debs[-1].name}: {why} (dpkg-deb exit {deb_rc})")
    lost = [m for m in todo if not (root / m).is_file()]
    progress(f"debug info: {len(got)} files extracted in {time.monotonic() - t1:.0f} s"
             + (f"; not in the package: {', '.join(Path(m).name for m in lost)}" if lost else ""))
    return got
