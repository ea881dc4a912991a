"""Load callpath's BPF program with bcc, attach it, drain the ring buffer, detach.

Phases, as in bcc's bigger tools: compile (bcc/clang, the slow part: about
40-80 s under TCG emulation), configure (per-function argument facts into the
``func_cfg`` array), attach (one kprobe + kretprobe per planned function),
poll (a background thread drains the ring buffer while the workload runs,
and attaches the planned functions of a module when it arrives: see
:meth:`Recorder.attach_arrived`), detach (``BPF.cleanup``; always, also on error and Ctrl-C).
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

from ..bpf import PROGRAM, BPF_DIR, SLOTS, handler_names
from .event import CallpathEvent, FuncCfg
from .fields import field_cflags
from .modindex import loaded_modules
from .plan import MODULE_NOT_LOADED, ProbePlan


class ProbeError(RuntimeError):
    """The BPF program could not be compiled, loaded or attached."""


def bpf_cflags(ringbuf_pages: int, fields: dict | None = None) -> list[str]:
    """cflags that configure bpf/callpath.bpf.c (settings never edit the C text).

    ``fields`` is ``plan.fields`` (:func:`probes.fields.resolve_fields`): the
    kernel field offsets; fields missing from it are not read (offset -1).
    """
    if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
        raise ValueError(f"ring buffer pages must be a power of two, got {ringbuf_pages}")
    return [f"-I{BPF_DIR}", f"-DCALLPATH_MAX_FUNCS={SLOTS}", f"-DCALLPATH_RINGBUF_PAGES={ringbuf_pages}",
            *field_cflags(fields or {})]


@dataclass
class AttachReport:
    """What got attached: ``attached`` names, ``failed`` name -> error text."""

    attached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Record entry/return events of the planned functions.

    Usage::

        with Recorder(plan, progress=print) as rec:   # compiles and attaches
            run_workload(...)
        rows, lost = rec.rows, rec.lost               # detached by now

    Attributes after exit:
        rows: decoded events as tuples in ``probes.event.TRACE_COLUMNS`` order.
        lost: events the kernel dropped because the ring buffer was full.
        attach: an :class:`AttachReport`.

    Raises:
        ProbeError: bcc is missing, compilation fails, or no probe attached.
    """

    def __init__(self, plan: ProbePlan, ringbuf_pages: int = 1024, maxactive: int = 64, progress=lambda m: None):
        self.plan = plan
        self.ringbuf_pages = ringbuf_pages
        self.maxactive = maxactive
        self.progress = progress
        self.rows: list[tuple] = []
        self.lost = 0
        self.attach = AttachReport()
        self._bpf = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_error: BaseException | None = None
        #: module -> planned functions waiting for it (status ``module-not-loaded`` with a slot)
        self.pending: dict[str, list] = {}
        #: module -> seconds after attaching when it arrived and its functions were attached
        self.arrived: dict[str, float] = {}
        self.loaded_modules = loaded_modules  # replaceable in tests
        self._t_attach = time.monotonic()
        self._next_check = 0.0

    # -- phases -----------------------------------------------------------
    def compile(self):
        try:
            from bcc import BPF  # noqa: PLC0415 - bcc is only needed on the probing side
        except ImportError as err:
            raise ProbeError(
                "bcc's Python module is missing: install Debian's python3-bpfcc and use a venv "
                "made with --system-site-packages (make setup does both)"
            ) from err
        t0 = time.monotonic()
        self.progress(f"compiling {PROGRAM.name} with bcc (slow under emulation)")
        try:
            self._bpf = BPF(src_file=str(PROGRAM).encode(), cflags=bpf_cflags(self.ringbuf_pages, self.plan.fields))
        except Exception as err:  # bcc raises bare Exception on compile errors
            raise ProbeError(f"bcc could not compile {PROGRAM}: {err}") from err
        self.progress(f"compiled in {time.monotonic() - t0:.1f} s")

    def configure(self):
        from bcc import BPF  # noqa: PLC0415

        workers = self._bpf["workers"]
        for index, name in ((0, "on_entry"), (1, "on_return")):
            fn = self._bpf.load_func(name, BPF.KPROBE)
            workers[ctypes.c_int(index)] = ctypes.c_int(fn.fd)
        table = self._bpf["func_cfg"]
        for fp in self.plan.probed():
            cfg = FuncCfg(skb_arg=fp.skb_arg or 0, skb_depth=fp.skb_depth or 1, netdev_arg=fp.netdev_arg or 0)
            table[ctypes.c_int(fp.func_id)] = cfg

    def _attach_sites(self, fp) -> bool:
        """Entry-only kprobes at the inline sites of an ``inlined`` function (``symbol+offset``,
        one slot each; an inline site has no return, so no kretprobe). True when one attached."""
        ok = []
        for site in fp.inline_sites:
            if site.get("func_id") is None:
                continue
            try:
                self._bpf.attach_kprobe(event=site["symbol"].encode(), event_off=int(site["offset"]),
                                        fn_name=handler_names(site["func_id"])[0])
                ok.append(site["probe"])
            except Exception as err:  # noqa: BLE001 - bcc raises bare Exception on attach failure
                site["attach_error"] = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        if ok:
            self.attach.attached.append(fp.name)
        else:
            self.attach.failed[fp.name] = "no inline site attached: " + "; ".join(
                f"{s['probe']}: {s.get('attach_error', '')}" for s in fp.inline_sites if s.get("func_id") is not None)
        return bool(ok)

    def _attach_one(self, fp) -> bool:
        if fp.inline_sites:
            return self._attach_sites(fp)
        entry, ret = handler_names(fp.func_id)
        try:
            self._bpf.attach_kprobe(event=fp.symbol, fn_name=entry)
            self._bpf.attach_kretprobe(event=fp.symbol, fn_name=ret, maxactive=self.maxactive)
            self.attach.attached.append(fp.name)
            return True
        except Exception as err:  # bcc raises bare Exception on attach failure
            self.attach.failed[fp.name] = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
            return False

    def attach_all(self):
        """Attach every planned function whose code is loaded; queue those of modules not loaded yet."""
        self._t_attach = time.monotonic()
        live = self.loaded_modules()
        for fp in self.plan.probed():
            # inline sites wait for their module too (all sites attach when the first missing one arrives)
            missing = [m for m in dict.fromkeys(x.get("module") for x in fp.inline_sites if x.get("func_id") is not None)
                       if m not in (None, "vmlinux") and m not in live]
            if fp.status == MODULE_NOT_LOADED or missing:
                self.pending.setdefault(fp.module if fp.status == MODULE_NOT_LOADED else missing[0], []).append(fp)
                continue
                self.pending.setdefault(fp.module, []).append(fp)
                continue
            self._attach_one(fp)
        self.progress(f"attached kprobe+kretprobe to {len(self.attach.attached)} functions"
                      + (f", {len(self.attach.failed)} failed" if self.attach.failed else "")
                      + (f"; waiting for modules {', '.join(self.pending)}" if self.pending else ""))
        if not self.attach.attached and not self.pending:
            raise ProbeError("no probe could be attached: " + "; ".join(f"{k}: {v}" for k, v in self.attach.failed.items()))

    def attach_arrived(self) -> list[str]:
        """Attach the queued functions of modules that are loaded now (``Live`` in /proc/modules).

        Called from the poll thread (the only thread using bcc while recording).
        An attached function becomes ``traceable`` in the plan, with the time of
        arrival in its reason; the module's BTF, when the kernel has it, gives its
        argument facts. Returns the modules that arrived.
        """
        live = self.loaded_modules() if self.pending else set()
        came = [m for m in self.pending if m in live]
        for mod in came:
            t = round(time.monotonic() - self._t_attach, 3)
            self.arrived[mod] = t
            fps = self.pending.pop(mod)
            self._configure_late(mod, fps)
            ok = [fp.name for fp in fps if self._attach_one(fp)]
            for fp in fps:
                if fp.name in ok:
                    when = f"attached when {mod} arrived {t:.1f} s into the run"
                    if fp.inline_sites:
                        fp.reason += f"; inline sites {when}"
                    else:
                        fp.status, fp.reason = "traceable", f"in module {mod}, {when}"
            self.progress(f"module {mod} arrived after {t:.1f} s: attached {len(ok)} of {len(fps)} functions")
        return came

    def _configure_late(self, mod: str, fps) -> None:
        """Argument facts (skb, net_device) of a late module's functions from its BTF, best effort."""
        try:
            from .btf import load_kernel_btf  # noqa: PLC0415
            from .plan import _btf_facts  # noqa: PLC0415

            btf = load_kernel_btf([mod])
            table = self._bpf["func_cfg"]
            for fp in fps:
                if fp.inline_sites:
                    continue  # arguments at an inline site are not read
                _btf_facts(fp, btf)
                table[ctypes.c_int(fp.func_id)] = FuncCfg(skb_arg=fp.skb_arg or 0, skb_depth=fp.skb_depth or 1,
                                                          netdev_arg=fp.netdev_arg or 0)
        except Exception as err:  # noqa: BLE001 - the probes still attach without argument facts
            self.progress(f"module {mod}: no argument facts from BTF ({err})")

    def _on_event(self, _ctx, data, _size):
        ev = ctypes.cast(data, ctypes.POINTER(CallpathEvent)).contents
        self.rows.append(
            (len(self.rows), ev.ts_ns, ev.kind, ev.func_id, ev.tid, ev.tgid, ev.cpu, ev.skb, ev.ifindex, ev.netns, ev.retval, ev.comm)
        )

    def _poll(self):
        try:
            while not self._stop.is_set():
                self._bpf.ring_buffer_poll(100)
                if self.pending and time.monotonic() >= self._next_check:
                    self._next_check = time.monotonic() + 0.05
                    self.attach_arrived()
            self._bpf.ring_buffer_consume()
        except BaseException as err:  # surfaced in __exit__
            self._poll_error = err

    # -- context manager --------------------------------------------------
    def __enter__(self):
        self.compile()
        try:
            self.configure()
            self._bpf["events"].open_ring_buffer(self._on_event)
            self.attach_all()
            self._thread = threading.Thread(target=self._poll, name="callpath-ringbuf", daemon=True)
            self._thread.start()
        except BaseException:
            self._bpf.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        try:
            time.sleep(0.2)  # let in-flight events land
            self._stop.set()
            if self._thread:
                self._thread.join(timeout=10)
            self.lost = int(self._bpf["lost"][ctypes.c_int(0)].value)
        finally:
            self._bpf.cleanup()  # detaches every kprobe/kretprobe
            self.progress(f"detached; {len(self.rows)} events, {self.lost} lost")
        if self._poll_error and not exc[0]:
            raise ProbeError(f"ring buffer polling failed: {self._poll_error}")
        return False

    def bpf_source(self) -> str:
        """The C source bcc compiles (for ``--print-bpf``)."""
        return PROGRAM.read_text()
