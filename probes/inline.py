"""Where the compiler inlined a function: its inline sites, read from DWARF with pyelftools.

A function the compiler inlined everywhere has no symbol of its own (it is
not in kallsyms), but the DWARF of the object it was inlined into still
describes every copy: a ``DW_TAG_inlined_subroutine`` whose
``DW_AT_abstract_origin`` is the function, nested in the concrete
``DW_TAG_subprogram`` of the out-of-line function holding the copy, with the
copy's first instruction (``DW_AT_entry_pc``, else ``DW_AT_low_pc``, else the
lowest address of ``DW_AT_ranges``) and the call's source line
(``DW_AT_call_file`` / ``DW_AT_call_line``). DWARF 5, section 3.3.8.

An inline site is probed as ``symbol+offset``: the ELF symbol of the holding
function (its kallsyms name, a compiler clone like ``foo.isra.0`` included)
and the byte offset of the copy's first instruction. For a relocatable
module (``.ko``, ``ET_REL``) pyelftools applies the ``.rela.debug_*``
relocations, so DWARF addresses are offsets in their section; the holding
function is found by the start of its address range *and* its name, which
tells sections apart. The same answer as ``perf probe -m MODULE -D FUNC``
(``macvlan_queue_xmit`` -> ``macvlan_start_xmit+33`` on Debian's 6.1.0-56).

An inline site has an entry and no return: it is a point in the holding
function's code, not a call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


class InlineError(RuntimeError):
    """The file is not ELF or its DWARF cannot be read."""


@dataclass(frozen=True)
class InlineSite:
    """One inlined copy of a function.

    Attributes:
        function: the inlined function (its DWARF name).
        symbol: the ELF (kallsyms) symbol of the out-of-line function holding the copy.
        offset: bytes from ``symbol``'s start to the copy's first instruction.
        file: source file of the call that was inlined (``DW_AT_call_file``), or None.
        line: its line (``DW_AT_call_line``), or None.
        module: ``vmlinux`` or the module the file belongs to.
        caller: the DWARF name of the function whose source holds the call: the
            holding function, or another inlined function the copy sits in
            (nested inlining), so ``caller`` may differ from ``symbol``.
    """

    function: str
    symbol: str
    offset: int
    file: str | None = None
    line: int | None = None
    module: str = "vmlinux"
    caller: str | None = None

    @property
    def probe(self) -> str:
        """The kprobe location: ``symbol+offset`` (``macvlan_start_xmit+33``)."""
        return f"{self.symbol}+{self.offset}"

    @property
    def source(self) -> str:
        """``file:line`` of the inlined call, ``?`` when DWARF lacks it."""
        return f"{self.file or '?'}:{self.line if self.line is not None else '?'}"

    def to_dict(self) -> dict:
        return asdict(self) | {"probe": self.probe}


def _attr_addr(dwarf, cu, die, name):
    attr = die.attributes.get(name)
    if attr is None:
        return None
    if attr.form in ("DW_FORM_addrx", "DW_FORM_addrx1", "DW_FORM_addrx2", "DW_FORM_addrx3", "DW_FORM_addrx4",
                     "DW_FORM_GNU_addr_index"):
        return dwarf.get_addr(cu, attr.value)
    return attr.value


def _ranges(dwarf, cu, die, cu_base: int) -> list[tuple[int, int]]:
    """Address ranges ``[(low, high)]`` of a DIE, in DWARF order."""
    low = _attr_addr(dwarf, cu, die, "DW_AT_low_pc")
    if low is not None:
        hi = die.attributes.get("DW_AT_high_pc")
        if hi is None:
            return [(low, low + 1)]
        high = hi.value if hi.form in ("DW_FORM_addr", "DW_FORM_addrx") else low + hi.value
        return [(low, high)]
    attr = die.attributes.get("DW_AT_ranges")
    rl = dwarf.range_lists()
    if attr is None or rl is None:
        return []
    try:
        if attr.form == "DW_FORM_rnglistx":
            return []  # split DWARF only; GCC and clang emit sec_offset for the kernel's objects
        entries = rl.get_range_list_at_offset(attr.value, cu=cu)
    except Exception:  # noqa: BLE001 - a malformed range list: no ranges
        return []
    out, base = [], cu_base
    for e in entries:
        if hasattr(e, "base_address"):
            base = e.base_address
            continue
        absolute = getattr(e, "is_absolute", False)
        b, en = (e.begin_offset, e.end_offset) if absolute else (base + e.begin_offset, base + e.end_offset)
        if en > b:
            out.append((b, en))
    return out


class _Names:
    """DIE -> the function name it stands for (through abstract origins and specifications), cached."""

    def __init__(self):
        self.cache: dict[int, str | None] = {}

    def of(self, die) -> str | None:
        seen = []
        cur = die
        name = None
        for _ in range(8):
            if cur.offset in self.cache:
                name = self.cache[cur.offset]
                break
            seen.append(cur.offset)
            attr = cur.attributes.get("DW_AT_name")
            if attr is not None:
                name = attr.value.decode("utf-8", "replace") if isinstance(attr.value, bytes) else str(attr.value)
                break
            ref = next((a for a in ("DW_AT_abstract_origin", "DW_AT_specification") if a in cur.attributes), None)
            if ref is None:
                break
            try:
                cur = cur.get_DIE_from_attribute(ref)
            except Exception:  # noqa: BLE001 - a dangling reference names nothing
                break
        for off in seen:
            self.cache[off] = name
        return name


def _file_names(dwarf, cu) -> list[str | None]:
    """File table of the CU's line program, indexed as ``DW_AT_call_file`` counts (DWARF 5: from 0)."""
    try:
        lp = dwarf.line_program_for_CU(cu)
    except Exception:  # noqa: BLE001
        return []
    if lp is None:
        return []
    dirs = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d) for d in lp["include_directory"]]
    names = []
    for fe in lp["file_entry"]:
        n = fe.name.decode("utf-8", "replace") if isinstance(fe.name, bytes) else str(fe.name)
        di = fe.dir_index
        if lp.header.version < 5:
            d = dirs[di - 1] if 0 < di <= len(dirs) else ""
        else:
            d = dirs[di] if 0 <= di < len(dirs) else ""
        names.append(n if n.startswith("/") or not d else f"{d}/{n}")
    if lp.header.version < 5:
        names.insert(0, None)  # DWARF 4 counts files from 1
    return names


def _func_symbols(elf) -> dict[int, list[str]]:
    """Start address (section offset for ET_REL) -> defined STT_FUNC names."""
    out: dict[int, list[str]] = {}
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return out
    for sym in symtab.iter_symbols():
        if sym["st_info"]["type"] == "STT_FUNC" and isinstance(sym["st_shndx"], int) and sym.name:
            out.setdefault(sym["st_value"], []).append(sym.name)
    return out


def _symbol_at(symbols: dict[int, list[str]], start: int, name: str | None) -> str | None:
    """The symbol starting at ``start`` that is ``name`` or a clone of it (``name.isra.0``);
    the only symbol there when ``name`` is unknown."""
    cands = symbols.get(start, [])
    if name:
        exact = [s for s in cands if s == name]
        if exact:
            return exact[0]
        clones = sorted(s for s in cands if s.startswith(name + "."))
        return clones[0] if clones else None
    return cands[0] if len(cands) == 1 else None


def find_inline_sites(path: str | Path, functions, module: str = "vmlinux") -> dict[str, list[InlineSite]]:
    """Every inline site of ``functions`` in one ELF file with DWARF.

    Args:
        path: a module's debug file (``.ko``, relocatable) or vmlinux (with DWARF).
        functions: names to look for (an iterable of str), or None for every inlined function.
        module: what the sites are labelled with (``macvlan``, ``vmlinux``).

    Returns:
        ``{function: [InlineSite, ...]}`` sorted by symbol and offset, for the
        functions with at least one site whose holding symbol was found. Sites in
        code without a function symbol (none is known to exist) are left out.

    Raises:
        InlineError: not an ELF file, or no DWARF.
    """
    from elftools.common.exceptions import DWARFError, ELFError  # noqa: PLC0415
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415

    wanted = None if functions is None else set(functions)
    found: dict[str, set[InlineSite]] = {}
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            if not elf.has_dwarf_info():
                raise InlineError(f"{path}: no DWARF debug info")
            dwarf = elf.get_dwarf_info()
            symbols = _func_symbols(elf)
            names = _Names()
            for cu in dwarf.iter_CUs():
                top = cu.get_top_DIE()
                cu_base = _attr_addr(dwarf, cu, top, "DW_AT_low_pc") or 0
                files = None
                # iterative walk keeping the enclosing concrete subprogram and the
                # innermost enclosing function (subprogram or inlined copy)
                stack = [(top, None, None)]
                while stack:
                    die, holder, caller = stack.pop()
                    tag = die.tag
                    if tag == "DW_TAG_subprogram" and ("DW_AT_low_pc" in die.attributes or "DW_AT_ranges" in die.attributes):
                        holder = die
                        caller = names.of(die)
                    elif tag == "DW_TAG_inlined_subroutine":
                        fn = names.of(die)
                        if fn and (wanted is None or fn in wanted) and holder is not None:
                            if files is None:
                                files = _file_names(dwarf, cu)
                            site = _site(dwarf, cu, die, holder, cu_base, symbols, names, fn, caller, files, module)
                            if site is not None:
                                found.setdefault(fn, set()).add(site)
                        caller = fn
                    if die.has_children and tag in ("DW_TAG_compile_unit", "DW_TAG_partial_unit", "DW_TAG_subprogram",
                                                     "DW_TAG_inlined_subroutine", "DW_TAG_lexical_block",
                                                     "DW_TAG_namespace"):
                        stack.extend((c, holder, caller) for c in reversed(list(die.iter_children())))
    except OSError as err:
        raise InlineError(f"{path}: {err.strerror or err}") from None
    except (ELFError, DWARFError) as err:
        raise InlineError(f"{path}: unreadable DWARF ({err})") from None
    return {fn: sorted(sites, key=lambda s: (s.symbol, s.offset)) for fn, sites in found.items()}


def _site(dwarf, cu, die, holder, cu_base, symbols, names, fn, caller, files, module) -> InlineSite | None:
    ranges = _ranges(dwarf, cu, die, cu_base)
    entry = die.attributes.get("DW_AT_entry_pc")
    if entry is not None and entry.form.startswith("DW_FORM_addr"):
        addr = _attr_addr(dwarf, cu, die, "DW_AT_entry_pc")
    elif entry is not None and ranges:
        addr = min(b for b, _ in ranges) + entry.value  # DWARF 5 constant class: offset from the low address
    elif ranges:
        addr = ranges[0][0] if "DW_AT_low_pc" in die.attributes else min(b for b, _ in ranges)
    else:
        return None
    hname = names.of(holder)
    for lo, hi in _ranges(dwarf, cu, holder, cu_base):
        if lo <= addr < hi:
            sym = _symbol_at(symbols, lo, hname)
            if sym is None:
                return None
            cf = die.attributes.get("DW_AT_call_file")
            cl = die.attributes.get("DW_AT_call_line")
            fname = files[cf.value] if cf is not None and 0 <= cf.value < len(files) else None
            return InlineSite(fn, sym, addr - lo, fname, cl.value if cl is not None else None, module, caller)
    return None


def sites_in_files(files: dict[str, str], functions, progress=lambda m: None) -> tuple[dict[str, list[InlineSite]], dict[str, str]]:
    """Inline sites of ``functions`` across several debug files.

    Args:
        files: module name (or ``vmlinux``) -> debug file path.
        functions: names to look for.
        progress: callable taking one status line.

    Returns:
        ``(sites, errors)``: function -> sites over every file (module order), and
        file label -> why it could not be read.
    """
    import time  # noqa: PLC0415

    out: dict[str, list[InlineSite]] = {}
    errors: dict[str, str] = {}
    for mod, path in files.items():
        t0 = time.monotonic()
        try:
            got = find_inline_sites(path, functions, mod)
        except InlineError as err:
            errors[mod] = str(err)
            continue
        for fn, sites in got.items():
            out.setdefault(fn, []).extend(sites)
        progress(f"DWARF of {mod}: {sum(len(s) for s in got.values())} inline sites of {len(got)} documented "
                 f"functions ({time.monotonic() - t0:.1f} s)")
    return out, errors


#: Format of the cached inline-site index; bump when its layout changes.
CACHE_FORMAT = 1


def module_sites(path: str | Path, module: str, cache_dir: str | Path | None = None,
                 progress=lambda m: None) -> dict[str, list[InlineSite]]:
    """Every inline site of every function in one debug file, cached.

    Walking a module's DWARF costs about 1 s (macvlan, ipvlan) to 18 s (bridge,
    13 MB) on the dev VM and ten times that under TCG, so the result is kept in
    ``cache_dir/inline-MODULE.json`` (default: beside the release's extracted
    debug files, :func:`probes.debuginfo.cache_root`), valid while the debug
    file's size and mtime are unchanged. Writing is best effort (the lab VM
    sees the host's cache read-only; the host fills it before booting).

    Raises:
        InlineError: not ELF, or no DWARF.
    """
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    path = os.path.realpath(path)  # the lab VM reaches the host's files through links
    st = os.stat(path)
    key = {"format": CACHE_FORMAT, "file": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = Path(cache_dir) / f"inline-{module}.json" if cache_dir else None
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            if all(data.get(k) == v for k, v in key.items()):
                return {fn: [InlineSite(fn, *row[:4], module, row[4]) for row in rows]
                        for fn, rows in data["sites"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    t0 = time.monotonic()
    sites = find_inline_sites(path, None, module)
    progress(f"DWARF of {module}: {sum(map(len, sites.values()))} inline sites of {len(sites)} functions "
             f"({time.monotonic() - t0:.1f} s, once: cached)")
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            rows = {fn: [[s.symbol, s.offset, s.file, s.line, s.caller] for s in ss] for fn, ss in sites.items()}
            tmp.write_text(json.dumps(key | {"sites": rows}, separators=(",", ":")))
            tmp.replace(cache)
        except OSError:
            pass
    return sites


@dataclass
class InlineFacts:
    """What DWARF says about the documented functions kallsyms lacks.

    Attributes:
        sites: function -> inline sites found in the searched files.
        searched: module (or ``vmlinux``) -> debug file read.
        missing: modules (or ``vmlinux``) of the documents without DWARF here.
        errors: module -> why its debug file could not be read.
    """

    sites: dict[str, list[InlineSite]]
    searched: dict[str, str]
    missing: list[str]
    errors: dict[str, str]

    def note(self) -> str:
        """One line on what was (not) checked, for plans, lint and reports."""
        from .debuginfo import ENABLE_HINT  # noqa: PLC0415

        parts = []
        if self.searched:
            parts.append("DWARF of " + ", ".join(self.searched) + " searched")
        if "vmlinux" not in self.searched:
            parts.append("vmlinux's DWARF not searched (inline sites in the core image are not looked for)")
        if self.missing or self.errors:
            parts.append("no DWARF for " + ", ".join([*self.missing, *self.errors]) + f": {ENABLE_HINT}")
        return "; ".join(parts)


def document_modules(specs, kallsyms: dict[str, str], index) -> dict[str, str]:
    """Modules holding the documents' functions -> module file path relative to
    ``/lib/modules/RELEASE``: from kallsyms (loaded modules) and the release's
    module index (modules not loaded). An inlined function lives in the module of
    the documented functions around it, so these are the files to search.
    With an empty ``kallsyms`` (the host, for another release) a module must hold
    two functions of one document to count."""
    if index is None:
        return {}
    out: dict[str, str] = {}
    for spec in specs:
        held: dict[str, int] = {}
        for fn in spec.functions():
            mods = [kallsyms[fn]] if fn in kallsyms else index.modules_of(fn)
            for m in mods if len(mods) == 1 else []:
                if m != "vmlinux" and m in index.modules and m not in index.builtin:
                    held[m] = held.get(m, 0) + 1
        for m, n in held.items():
            # without the target's kallsyms (on the host, before a lab VM boots), a module
            # holding a single documented function may only hold a static copy of a core
            # function (list_add_tail in sfc on 6.12): it must hold two to count
            if kallsyms or n >= 2:
                out.setdefault(m, index.modules[m])
    return out


def discover(specs, kallsyms: dict[str, str], index, release: str, user_dirs=(), vmlinux: bool = False,
             progress=lambda m: None) -> InlineFacts:
    """Find the documents' modules' DWARF (:func:`probes.debuginfo.find_debuginfo`) and
    read their inline sites (:func:`module_sites`, cached). Never raises for
    missing debug info: :class:`InlineFacts` says what was missing."""
    from .debuginfo import cache_root, find_debuginfo  # noqa: PLC0415

    handed = _handed_over(release)
    if handed is not None:  # a lab VM guest: the host read the DWARF
        return handed
    mods = document_modules(specs, kallsyms, index)
    files = find_debuginfo(release, mods, vmlinux=vmlinux, user_dirs=list(user_dirs), progress=progress)
    paths = dict(files.modules) | ({"vmlinux": files.vmlinux} if files.vmlinux else {})
    sites: dict[str, list[InlineSite]] = {}
    errors: dict[str, str] = {}
    for mod, path in paths.items():
        try:
            got = module_sites(path, mod, cache_root(release), progress)
        except (InlineError, OSError) as err:
            errors[mod] = str(err)
            continue
        for fn, ss in got.items():
            sites.setdefault(fn, []).extend(ss)
    searched = {m: p for m, p in paths.items() if m not in errors}
    return InlineFacts(sites, searched, files.missing, errors)


#: Environment variable naming the inline facts the host wrote for a lab VM guest
#: (:func:`prepare_for_lab`). The guest does not see the host's cache folder
#: (measured on virtme-ng 1.42: "no DWARF" for every module with the cache full),
#: and walking DWARF under TCG is ten times slower than on the host.
FACTS_ENV = "CALLPATH_INLINE_FACTS"


def _handed_over(release: str) -> "InlineFacts | None":
    """The facts named by :data:`FACTS_ENV` when they are for ``release``, else None."""
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    path = os.environ.get(FACTS_ENV)
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != CACHE_FORMAT or data.get("release") != release:
            return None
        sites = {fn: [InlineSite(**row) for row in rows] for fn, rows in data["sites"].items()}
        return InlineFacts(sites, dict(data["searched"]), list(data["missing"]), dict(data["errors"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def prepare_for_lab(specs, release: str, stage: Path, user_dirs=(), progress=lambda m: None) -> str | None:
    """On the host, before a lab VM boots: find the documents' modules' DWARF (the
    user's folders too), read their inline sites, and write them to
    ``stage/inline-facts.json`` for the guest.

    Returns the shell line that hands the file to the guest (``export
    CALLPATH_INLINE_FACTS=...``), or None when no debug file was found.
    """
    import json  # noqa: PLC0415
    import shlex  # noqa: PLC0415

    from .modindex import index_or_none  # noqa: PLC0415

    facts = discover(specs, {}, index_or_none(release, progress), release, user_dirs, progress=progress)
    progress(f"inlining ({release}): {facts.note()}")
    if not facts.searched:
        return None
    path = Path(stage) / "inline-facts.json"
    path.write_text(json.dumps({"format": CACHE_FORMAT, "release": release,
                                "sites": {fn: [asdict(x) for x in ss] for fn, ss in facts.sites.items()},
                                "searched": facts.searched, "missing": facts.missing, "errors": facts.errors}))
    return f"export {FACTS_ENV}={shlex.quote(str(path))}"


def prefetch(release: str, spec_args: list[str], vmlinux: bool = False, progress=print) -> InlineFacts:
    """Fetch (Debian's ``-dbg`` package, once) and index the DWARF of the modules that
    hold the documents' functions for ``release``: what ``make setup`` and
    ``tools/fetch-debuginfo.sh`` run. Files already found anywhere are not fetched.

    Raises:
        probes.debuginfo.DebugInfoError: the package could not be fetched or read.
    """
    from ..analysis.readers import read_specs  # noqa: PLC0415
    from .debuginfo import fetch_debian, find_debuginfo  # noqa: PLC0415
    from .modindex import index_or_none  # noqa: PLC0415

    specs = read_specs(spec_args)
    index = index_or_none(release, progress)
    mods = document_modules(specs, {}, index)
    have = find_debuginfo(release, mods, vmlinux=vmlinux)
    want = {m: mods[m] for m in have.missing if m in mods}
    if want or (vmlinux and "vmlinux" in have.missing):
        fetch_debian(release, want, vmlinux=vmlinux and "vmlinux" in have.missing, progress=progress)
    facts = discover(specs, {}, index, release, vmlinux=vmlinux, progress=progress)
    progress(f"inlining ({release}): {facts.note()}; {sum(map(len, facts.sites.values()))} inline sites indexed")
    return facts


def main(argv: list[str] | None = None) -> int:
    """``python -m callpath.probes.inline RELEASE [SPEC|DIR ...]``: :func:`prefetch` (default: specs/)."""
    import sys  # noqa: PLC0415

    from .debuginfo import DebugInfoError  # noqa: PLC0415

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m callpath.probes.inline RELEASE [SPEC|DIR ...]", file=sys.stderr)
        return 2
    release, specs = args[0], args[1:] or [str(Path(__file__).resolve().parent.parent / "specs")]
    try:
        prefetch(release, specs, progress=lambda m: print(f"debuginfo: {m}", file=sys.stderr))
    except (DebugInfoError, OSError, ValueError) as err:
        print(f"debuginfo: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
