"""Which module holds a function: an index over every module of a kernel release.

A documented function that is not in ``/proc/kallsyms`` may be missing because
its module is not loaded yet, not because it was inlined or removed. This
module answers "which module holds ``br_handle_frame``?" for a kernel release,
loaded or not, from the files the distribution installs:

* the function symbols (``STT_FUNC``, defined) of the ``.symtab`` of every
  module under ``/lib/modules/RELEASE`` -- ``.ko``, ``.ko.xz``, ``.ko.zst``,
  ``.ko.gz`` -- read with pyelftools; a module's kallsyms are built from the
  same ``.symtab`` (kernel/module/kallsyms.c), so the names agree, compiler
  clones (``foo.isra.0``) included; functions in ``.init.text`` are the
  module's ``__init`` code, freed once the module has loaded;
* ``modules.builtin``: modules built into the core image (their functions are
  in vmlinux, so kallsyms already has them).

The index is built once per release (about 4,000 files on Debian's 6.1) and
cached as JSON in ``/var/cache/callpath`` (root) or ``~/.cache/callpath``,
rebuilt when ``modules.dep`` changes (``depmod`` ran). No list of module or
function names is built into callpath: everything comes from the release's
files.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

MODULES_ROOT = "/lib/modules"
#: Cache format; bump when the JSON layout changes.
FORMAT = 1
_KO = re.compile(r"\.ko(\.(xz|gz|zst))?$")
_CLONE = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?:isra|constprop|part|cold|llvm|lto_priv)(?:\.\d+)?)+$")


class ModuleIndexError(RuntimeError):
    """The release's module directory is missing, or a compressed module cannot be read."""


def module_name(path: str | Path) -> str:
    """The kernel's name for a module file: ``kernel/net/bridge/bridge.ko.xz`` -> ``bridge``,
    ``nf-nat.ko`` -> ``nf_nat`` (dashes become underscores, as kmod and /sys/module do)."""
    return _KO.sub("", Path(path).name).replace("-", "_")


def _open_elf_bytes(path: Path) -> io.BytesIO:
    name = path.name
    if name.endswith(".ko"):
        return io.BytesIO(path.read_bytes())
    if name.endswith(".xz"):
        return io.BytesIO(lzma.decompress(path.read_bytes()))
    if name.endswith(".gz"):
        return io.BytesIO(gzip.decompress(path.read_bytes()))
    if name.endswith(".zst"):
        try:
            import zstandard  # noqa: PLC0415 - only distributions with .ko.zst need it
        except ImportError as err:
            raise ModuleIndexError(f"{path}: reading .ko.zst needs the zstandard package (pip install zstandard)") from err
        with zstandard.ZstdDecompressor().stream_reader(path.read_bytes()) as reader:
            return io.BytesIO(reader.read())
    raise ModuleIndexError(f"{path}: not a kernel module file")


def function_symbols(path: str | Path) -> tuple[list[str], list[str]]:
    """Defined function symbols of one module file.

    Args:
        path: a ``.ko`` file, or one compressed with xz, gzip or zstd.

    Returns:
        ``(functions, init_functions)``: names of defined ``STT_FUNC`` symbols
        of ``.symtab``, in file order; ``init_functions`` those placed in an
        ``.init*`` section (``__init``, freed after the module loads).

    Raises:
        ModuleIndexError: unreadable, not ELF, or no ``.symtab``.
    """
    from elftools.common.exceptions import ELFError  # noqa: PLC0415
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415

    path = Path(path)
    try:
        elf = ELFFile(_open_elf_bytes(path))
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise ModuleIndexError(f"{path}: no .symtab (stripped module)")
        sections = [s.name for s in elf.iter_sections()]
        funcs, init = [], []
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(sym["st_shndx"], int) or not sym.name:
                continue
            funcs.append(sym.name)
            if sections[sym["st_shndx"]].startswith(".init"):
                init.append(sym.name)
        return funcs, init
    except (OSError, ELFError, lzma.LZMAError, EOFError, ValueError, IndexError) as err:
        raise ModuleIndexError(f"{path}: {err}") from None


@dataclass
class ModuleIndex:
    """Function -> module for every module of one kernel release.

    Attributes:
        release: the kernel release (``6.1.0-56-amd64``).
        modules: module name -> file path relative to ``/lib/modules/RELEASE``.
        builtin: modules built into the core image (``modules.builtin``).
        functions: function symbol -> modules that define it (a static function
            may have the same name in several modules).
        init: ``"module:function"`` for functions in a module's ``.init*`` sections.
        unreadable: module file -> why it could not be read.
    """

    release: str
    modules: dict[str, str] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)
    functions: dict[str, list[str]] = field(default_factory=dict)
    init: set[str] = field(default_factory=set)
    unreadable: dict[str, str] = field(default_factory=dict)
    _bases: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)

    def add(self, module: str, relpath: str, functions: list[str], init: list[str] = ()) -> None:
        """Record one module's function symbols."""
        self.modules[module] = relpath
        for fn in functions:
            mods = self.functions.setdefault(fn, [])
            if module not in mods:
                mods.append(module)
            m = _CLONE.match(fn)
            if m:
                self._bases.setdefault(m.group("base"), []).append((module, fn))
        self.init.update(f"{module}:{fn}" for fn in init)

    def modules_of(self, function: str) -> list[str]:
        """Modules holding ``function`` itself or, failing that, one of its compiler clones; [] when none."""
        if function in self.functions:
            return list(self.functions[function])
        return list(dict.fromkeys(mod for mod, _sym in self._bases.get(function, [])))

    def clones_in(self, function: str, module: str) -> list[str]:
        """Compiler clones of ``function`` (``foo.isra.0``) that ``module`` defines."""
        return [sym for mod, sym in self._bases.get(function, []) if mod == module]

    def is_init(self, module: str, function: str) -> bool:
        """True when ``function`` is ``__init`` code of ``module`` (freed after it loads)."""
        return f"{module}:{function}" in self.init

    def to_dict(self) -> dict:
        per_mod: dict[str, dict] = {m: {"path": p, "functions": [], "init": []} for m, p in self.modules.items()}
        for fn, mods in self.functions.items():
            for m in mods:
                per_mod[m]["functions"].append(fn)
        for key in self.init:
            m, fn = key.split(":", 1)
            per_mod[m]["init"].append(fn)
        return {"format": FORMAT, "release": self.release, "builtin": sorted(self.builtin),
                "modules": per_mod, "unreadable": self.unreadable}

    @classmethod
    def from_dict(cls, data: dict) -> "ModuleIndex":
        idx = cls(release=data["release"], builtin=set(data.get("builtin", [])),
                  unreadable=dict(data.get("unreadable", {})))
        for m, entry in data["modules"].items():
            idx.add(m, entry["path"], entry["functions"], entry.get("init", []))
        return idx


def read_builtin(moddir: str | Path) -> set[str]:
    """Module names of ``modules.builtin`` (built into vmlinux); empty when the file is missing."""
    try:
        text = Path(moddir, "modules.builtin").read_text()
    except OSError:
        return set()
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def build_index(release: str, root: str = MODULES_ROOT, progress=lambda m: None) -> ModuleIndex:
    """Read every module file of ``release`` (see the module docstring).

    Args:
        release: kernel release; its modules live in ``root/release``.
        root: usually ``/lib/modules``.
        progress: callable taking one status line (every 500 files and at the end).

    Returns:
        A :class:`ModuleIndex`; unreadable files are listed in ``unreadable``.

    Raises:
        ModuleIndexError: ``root/release`` does not exist.
    """
    moddir = Path(root, release)
    if not moddir.is_dir():
        raise ModuleIndexError(f"{moddir} does not exist: no modules installed for kernel {release}")
    files = sorted(p for p in moddir.rglob("*.ko*") if _KO.search(p.name) and p.is_file())
    idx = ModuleIndex(release=release, builtin=read_builtin(moddir))
    t0 = time.monotonic()
    progress(f"module index for {release}: reading {len(files)} module files (once; cached afterwards)")
    for i, path in enumerate(files, 1):
        rel = str(path.relative_to(moddir))
        try:
            funcs, init = function_symbols(path)
        except ModuleIndexError as err:
            idx.unreadable[rel] = str(err)
            continue
        idx.add(module_name(path), rel, funcs, init)
        if i % 500 == 0:
            progress(f"module index for {release}: {i}/{len(files)} files ({time.monotonic() - t0:.0f} s)")
    progress(f"module index for {release}: {len(idx.modules)} modules, {len(idx.functions)} function symbols "
             f"in {time.monotonic() - t0:.1f} s" + (f" ({len(idx.unreadable)} unreadable)" if idx.unreadable else ""))
    return idx


def cache_dirs() -> list[Path]:
    """Where cached indexes live, preferred first: ``/var/cache/callpath`` for root, then
    ``$XDG_CACHE_HOME/callpath`` (``~/.cache/callpath``)."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "callpath"
    return [Path("/var/cache/callpath"), user] if os.geteuid() == 0 else [user]


def _stamp(moddir: Path) -> int | None:
    """``modules.dep``'s mtime in whole seconds: the lab VM sees the host's files
    over 9p, which drops the sub-second part, so a float would never match."""
    try:
        return int(Path(moddir, "modules.dep").stat().st_mtime)
    except OSError:
        return None


#: Environment variable naming an index file the host wrote for a lab VM guest
#: (:func:`write_for_guest`). The guest sees the host's ``/lib/modules`` through
#: virtme-ng's 9p/overlay mounts, where the cache's ``modules.dep`` stamp does not
#: match (measured: every lab boot rebuilt the index, 7-11 min under TCG).
GUEST_INDEX_ENV = "CALLPATH_MODINDEX_FILE"


def write_for_guest(index: "ModuleIndex", path: str | Path) -> str:
    """Write ``index`` to ``path`` for a lab VM guest; return the shell line that
    hands it over (``export CALLPATH_MODINDEX_FILE=...``, quoted)."""
    import shlex  # noqa: PLC0415

    Path(path).write_text(json.dumps(index.to_dict(), separators=(",", ":")))
    return f"export {GUEST_INDEX_ENV}={shlex.quote(str(path))}"


def _handed_over(release: str) -> "ModuleIndex | None":
    """The index named by :data:`GUEST_INDEX_ENV` when it is for ``release``, else None."""
    path = os.environ.get(GUEST_INDEX_ENV)
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("release") != release:
        return None
    return ModuleIndex.from_dict(data)


def load_index(release: str, root: str = MODULES_ROOT, cache_dir: str | Path | None = None,
               progress=lambda m: None) -> ModuleIndex:
    """The module index of ``release``: from the cache when it is current, else built and cached.

    A cache entry is current when its ``modules.dep`` mtime equals the file's
    now. Writing the cache is best effort (a read-only file system, as in the
    lab VM, just means no cache).

    Args:
        release: kernel release.
        root: usually ``/lib/modules``.
        cache_dir: a directory to use instead of :func:`cache_dirs`.
        progress: callable taking one status line.

    Raises:
        ModuleIndexError: ``root/release`` does not exist.
    """
    handed = _handed_over(release)
    if handed is not None:
        return handed
    moddir = Path(root, release)
    stamp = _stamp(moddir)
    dirs = [Path(cache_dir)] if cache_dir else cache_dirs()
    name = f"modindex-{release}.json"
    for d in dirs:
        try:
            data = json.loads(Path(d, name).read_text())
        except (OSError, ValueError):
            continue
        cached_stamp = data.get("modules_dep_mtime")
        if (data.get("format") == FORMAT and isinstance(cached_stamp, (int, float))
                and int(cached_stamp) == stamp and data.get("root") == str(root)):
            return ModuleIndex.from_dict(data)
    idx = build_index(release, root, progress)
    data = idx.to_dict() | {"modules_dep_mtime": stamp, "root": str(root)}
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = Path(d, f".{name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            tmp.replace(Path(d, name))
            progress(f"module index cached in {Path(d, name)}")
            break
        except OSError:
            continue
    return idx


def loaded_modules(path: str = "/proc/modules") -> set[str]:
    """Names of the modules loaded now (first field of ``/proc/modules``, kernel/module/procfs.c);
    modules still loading (``Loading`` state) are left out. Empty when unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return {p[0] for p in (line.split() for line in fh) if p and "Loading" not in p[4:5]}
    except OSError:
        return set()


def fix_command(module: str) -> str:
    """What a user runs so that ``module`` is loaded during the run."""
    return f"run with --load-modules, or `modprobe {module}` before recording"


def home_modules(functions: list[str], index: ModuleIndex | None, kallsyms: dict[str, str],
                 clones: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The module that would hold each function the running kernel lacks.

    Functions in kallsyms (themselves or a compiler clone) are left out: kallsyms
    already names their module. For the rest, the index's candidates; a static
    function (often a header inline emitted out of line) can be defined in
    several modules, and then only the candidates that also hold another
    function of the same document are kept (``dev_queue_xmit`` is a copy in
    ``openvswitch`` and four more modules on Debian's 6.1, none of them on a
    bridge path).

    Args:
        functions: documented function names of one document.
        index: the release's :class:`ModuleIndex`, or None (then nothing is known).
        kallsyms: symbol -> module of the running kernel (``KernelSymbols.text``).
        clones: base name -> clone symbols in kallsyms.

    Returns:
        ``{function: [module, ...]}`` for functions not in kallsyms that some
        module defines; exactly one module means the function belongs to it.
    """
    if index is None:
        return {}
    clones = clones or {}
    missing = [f for f in functions if f not in kallsyms and not clones.get(f)]
    cand = {f: index.modules_of(f) for f in missing}
    cand = {f: mods for f, mods in cand.items() if mods}
    context = {kallsyms[f] for f in functions if f in kallsyms} | {m[0] for m in cand.values() if len(m) == 1}
    context.discard("vmlinux")
    out = {}
    for f, mods in cand.items():
        if len(mods) > 1:
            mods = [m for m in mods if m in context] or mods
        out[f] = mods
    return out


def modules_to_load(specs, index: ModuleIndex | None, kallsyms: dict[str, str],
                    clones: dict[str, list[str]] | None = None) -> list[str]:
    """Modules that hold documented functions and are not loaded, in document order.

    Only functions that belong to exactly one module count (see
    :func:`home_modules`); a module's ``__init`` functions count too (they run
    while it loads). Built-in modules never appear (their functions are in
    vmlinux).
    """
    loaded = set(kallsyms.values())
    out: list[str] = []
    for spec in specs:
        for mods in home_modules(spec.functions(), index, kallsyms, clones).values():
            if len(mods) == 1 and mods[0] not in loaded and mods[0] not in out:
                out.append(mods[0])
    return out


def index_or_none(release: str, progress=lambda m: None) -> ModuleIndex | None:
    """:func:`load_index`, or None (said through ``progress``) when the release has no module tree."""
    try:
        return load_index(release, progress=progress)
    except ModuleIndexError as err:
        progress(f"no module index: {err}; functions of modules that are not loaded look absent")
        return None


def documented_modules(specs, kallsyms: dict[str, str], clones: dict[str, list[str]] | None = None) -> list[str]:
    """Loaded modules that hold a documented function (or a clone of one), sorted: the
    modules whose BTF (``/sys/kernel/btf/MODULE``) describes the documents' functions."""
    clones = clones or {}
    out = set()
    for spec in specs:
        for fn in spec.functions():
            for sym in [fn, *clones.get(fn, [])]:
                if kallsyms.get(sym, "vmlinux") != "vmlinux":
                    out.add(kallsyms[sym])
    return sorted(out)
