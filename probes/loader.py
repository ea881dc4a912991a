"""Load callpath's BPF program with bcc, attach it, drain the ring buffer, detach.

Phases, as in bcc's bigger tools: compile (bcc/clang, the slow part: about
40-80 s under TCG emulation), configure (per-function argument facts into the
``func_cfg`` array), attach (one kprobe + kretprobe per planned function),
poll (a background thread drains the ring buffer while the workload runs,
and attaches the planned functions of a module when it arrives: see
:meth:`Recorder.attach_arrived`), detach (``BPF.cleanup``; always, also on error and Ctrl-C).

Per function the loader takes the cheapest probe the kernel allows
(``probes="auto"``): fentry/fexit through a BPF trampoline
(:mod:`probes.fentry`, handlers from :mod:`probes.bpfgen`), else a
kprobe/kretprobe pair; published per-hit costs put a kprobe at several times a
fentry. The choice and its reason are written in the plan (``probe``,
``probe_reason``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..bpf import handler_names
from .bpfgen import fentry_candidates, fentry_names, program_text
from .cflags import bpf_cflags
from .drainguard import GuardProcess
from .drainsched import DRAIN_CHOICES, HIGH_WATER, DeferGate, DrainScheduler, defer_gate
from .event import EVENT_DTYPE, FuncCfg, comm_name, trace_rows
from .fentry import FentryError, FentryLinks
from .filters import Filters
from .modindex import loaded_modules
from .plan import MODULE_NOT_LOADED, ProbePlan
from .ringread import SLOT, RingError, RingReader


class ProbeError(RuntimeError):
    """The BPF program could not be compiled, loaded or attached."""


PROBE_CHOICES = ("auto", "kprobe", "fentry")
#: Seconds the poll thread waits when the ring buffer held less than 1/8 of its size (Recorder._poll).
POLL_S = 0.025
#: Probed frames the kernel keeps per thread in counting mode (CP_DEPTH in bpf/callpath.bpf.c).
MAX_DEPTH = 16


@dataclass
class AttachReport:
    """What got attached: ``attached`` names, ``failed`` name -> error text."""

    attached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Record (or count) entry/return of the planned functions.

    Usage::

        with Recorder(plan, progress=print, sink=writer.add) as rec:   # compiles and attaches
            run_workload(...)
        rec.events, rec.lost, rec.lost_per_cpu                         # detached by now

    Args:
        plan: the probe plan; each probed function gets ``probe``/``probe_reason``.
        ringbuf_pages: ring buffer size in 4 KiB pages (power of two).
        maxactive: kretprobe instances per function (concurrent calls).
        progress: callable taking one status line; called about every 2 s while recording.
        probes: ``auto`` (fentry/fexit where the function allows, else kprobe/kretprobe),
            ``kprobe``, or ``fentry`` (only: a function that cannot take it is not probed).
        filters: in-kernel :class:`probes.filters.Filters`, or None.
        aggregate: count in BPF maps (paths, child order, log2 latency) instead of
            streaming events; read ``aggregate`` after exit.
        sink: callable receiving batches (numpy structured arrays, ``probes.event.EVENT_DTYPE``)
            from the poll thread, at most ``batch_events`` rows, at least every 0.5 s while
            events flow (under ``defer``: in pauses). None: events are kept in ``rows``.
        drain: ``normal`` (default; the drain thread at SCHED_OTHER), ``yield`` (experimental;
            SCHED_IDLE while it keeps up) or ``defer`` (records wait in the ring buffer until
            traffic pauses or it is half full): :mod:`probes.drainsched`. bcc's per-event
            callback (no mmap'd reader) drains as ``normal``.

    Attributes after exit:
        events: events delivered (int). lost: events the kernel dropped (ring buffer full),
        ``lost_per_cpu``: the same per CPU (list, index = CPU). attach: an :class:`AttachReport`.
        drain_boosts: times a half-full ring buffer sent the drain thread back to SCHED_OTHER
        (``yield``) or made it drain while records kept arriving (``defer``).
        aggregate: None, or ``{"paths", "order", "hist", "max_depth", "depth_overflow",
        "unmatched_returns", "map_full"}`` (func ids: plan slots; see :mod:`probes.aggread`).

    Raises:
        ProbeError: bcc is missing, compilation fails, or no probe attached.
    """

    def __init__(self, plan: ProbePlan, ringbuf_pages: int = 1024, maxactive: int = 64, progress=lambda m: None,
                 probes: str = "auto", filters: Filters | None = None, aggregate: bool = False, sink=None,
                 batch_events: int = 65536, drain: str = "normal"):
        if probes not in PROBE_CHOICES:
            raise ValueError(f"probes must be one of {', '.join(PROBE_CHOICES)}, got {probes!r}")
        if drain not in DRAIN_CHOICES:
            raise ValueError(f"drain must be one of {', '.join(DRAIN_CHOICES)}, got {drain!r}")
        self.drain = drain
        self.drain_boosts = 0
        self.plan = plan
        self.ringbuf_pages = ringbuf_pages
        self.maxactive = maxactive
        self.progress = progress
        self.probes = probes
        self.filters = filters or Filters()
        self.aggregate_mode = aggregate
        self.sink = sink
        self._out: np.ndarray | None = None  # the batch buffer of a sink that borrows batches
        self.batch_events = batch_events
        self.rows: list[tuple] = []
        self.events = 0
        self.lost = 0
        self.lost_per_cpu: list[int] = []
        self.aggregate: dict | None = None
        self.attach = AttachReport()
        self._bpf = None
        self._links = FentryLinks()
        self._fentry_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_error: BaseException | None = None
        self._buf = bytearray()
        self._buf_since = time.monotonic()
        self._comms_final: dict[int, bytes] | None = None  # the comms map, read at exit
        self._comm_cache: dict[int, bytes] = {}
        self._ring: RingReader | None = None
        #: module -> planned functions waiting for it (status ``module-not-loaded`` with a slot)
        self.pending: dict[str, list] = {}
        #: module -> seconds after attaching when it arrived and its functions were attached
        self.arrived: dict[str, float] = {}
        self.loaded_modules = loaded_modules  # replaceable in tests
        self._t_attach = time.monotonic()
        self._next_check = 0.0
        self._next_report = 0.0
        self._last_report = (0.0, 0)

    # -- phases -----------------------------------------------------------
    def program(self) -> str:
        """The C text bcc compiles (for ``--print-bpf``)."""
        return program_text(self.plan, self.probes)

    def keeps_stacks(self) -> bool:
        """Whether the program keeps per-thread stacks of probed frames (CALLPATH_STACK in
        bpf/callpath.bpf.c): when counting, or filtering on a device or netns."""
        return bool(self.aggregate_mode or self.filters.netns or self.filters.ifindex)

    def cflags(self) -> list[str]:
        return bpf_cflags(self.ringbuf_pages, self.plan.fields, self.aggregate_mode, self.filters)

    def compile(self):
        try:
            from bcc import BPF  # noqa: PLC0415 - bcc is only needed on the probing side
        except ImportError as err:
            raise ProbeError(
                "bcc's Python module is missing: install Debian's python3-bpfcc and use a venv "
                "made with --system-site-packages (make setup does both)"
            ) from err
        t0 = time.monotonic()
        n_fentry = len(fentry_candidates(self.plan, self.probes))
        self.progress(f"compiling the BPF program with bcc ({n_fentry} fentry/fexit pairs generated; "
                      "slow under emulation)")
        try:
            self._bpf = BPF(text=self.program().encode(), cflags=self.cflags())
        except Exception as err:  # bcc raises bare Exception on compile errors
            raise ProbeError(f"bcc could not compile the BPF program: {err}") from err
        self.progress(f"compiled in {time.monotonic() - t0:.1f} s")

    def configure(self):
        from bcc import BPF  # noqa: PLC0415

        workers = self._bpf["workers"]
        for index, name in ((0, "on_entry"), (1, "on_return")):
            fn = self._bpf.load_func(name, BPF.KPROBE)
            workers[ctypes.c_int(index)] = ctypes.c_int(fn.fd)
        if self.keeps_stacks():
            # per-thread stacks live per CPU while their thread runs (bpf/callpath_stack.h thread_state);
            # the scheduler's switch moves open frames aside. Raw tracepoints: 4.17+, no kprobe needed.
            try:
                self._bpf.attach_raw_tracepoint(tp=b"sched_switch", fn_name=b"on_sched_switch")
            except Exception as err:  # noqa: BLE001 - bcc raises bare Exception on attach failure
                raise ProbeError(f"cannot attach the sched_switch raw tracepoint that keeps per-thread "
                                 f"call stacks: {_last_line(err)}") from err
        table = self._bpf["func_cfg"]
        for fp in self.plan.probed():
            table[ctypes.c_int(fp.func_id)] = _cfg(fp)
            for site in fp.inline_sites:
                if site.get("func_id") is not None:
                    table[ctypes.c_int(site["func_id"])] = FuncCfg(flags=1)

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
                site["attach_error"] = _last_line(err)
        fp.probe, fp.probe_reason = "inline-site", "inlined: entry-only kprobes at its inline sites"
        if ok:
            self.attach.attached.append(fp.name)
        else:
            self.attach.failed[fp.name] = "no inline site attached: " + "; ".join(
                f"{s['probe']}: {s.get('attach_error', '')}" for s in fp.inline_sites if s.get("func_id") is not None)
        return bool(ok)

    def _attach_fentry(self, fp) -> str:
        """fentry/fexit for ``fp``; "" when attached, else why not."""
        if fp.func_id not in self._fentry_ids:
            return fp.fentry_reason or "no BTF prototype when the program was compiled"
        entry, ret = fentry_names(fp.func_id)
        try:
            self._links.attach(self._bpf, entry, ret, int(fp.fentry["btf_id"]), fp.fentry["btf_module"])
        except (FentryError, Exception) as err:  # noqa: BLE001 - bcc's dump_func raises bare Exception
            return f"fentry refused: {_last_line(err)}"
        fp.probe, fp.probe_reason = "fentry", ""
        return ""

    def _attach_one(self, fp) -> bool:
        if fp.inline_sites:
            return self._attach_sites(fp)
        why = "--probes kprobe" if self.probes == "kprobe" else self._attach_fentry(fp)
        if not why:
            self.attach.attached.append(fp.name)
            return True
        if self.probes == "fentry":
            self.attach.failed[fp.name] = f"--probes fentry: {why}"
            return False
        entry, ret = handler_names(fp.func_id)
        try:
            self._bpf.attach_kprobe(event=fp.symbol, fn_name=entry)
            self._bpf.attach_kretprobe(event=fp.symbol, fn_name=ret, maxactive=self.maxactive)
        except Exception as err:  # bcc raises bare Exception on attach failure
            self.attach.failed[fp.name] = _last_line(err)
            return False
        fp.probe, fp.probe_reason = "kprobe", why
        self.attach.attached.append(fp.name)
        return True

    def attach_all(self):
        """Attach every planned function whose code is loaded; queue those of modules not loaded yet."""
        self._t_attach = time.monotonic()
        self._fentry_ids = {fp.func_id for fp in fentry_candidates(self.plan, self.probes)}
        live = self.loaded_modules()
        for fp in self.plan.probed():
            if self.aggregate_mode and fp.tracking:
                fp.probe_reason = "packet tracking only: not attached when counting"
                continue
            # inline sites wait for their module too (all sites attach when the first missing one arrives)
            missing = [m for m in dict.fromkeys(x.get("module") for x in fp.inline_sites if x.get("func_id") is not None)
                       if m not in (None, "vmlinux") and m not in live]
            if fp.status == MODULE_NOT_LOADED or missing:
                self.pending.setdefault(fp.module if fp.status == MODULE_NOT_LOADED else missing[0], []).append(fp)
                continue
            self._attach_one(fp)
        kinds: dict[str, int] = {}
        for fp in self.plan.probed():
            if fp.probe and fp.name in self.attach.attached:
                kinds[fp.probe] = kinds.get(fp.probe, 0) + 1
        self.progress(f"attached {len(self.attach.attached)} functions ("
                      + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) + ")"
                      + (f", {len(self.attach.failed)} failed" if self.attach.failed else "")
                      + (f"; waiting for modules {', '.join(self.pending)}" if self.pending else "")
                      + (f"; filters: {self.filters.describe()}" if self.filters.active() else ""))
        if not self.attach.attached and not self.pending:
            raise ProbeError("no probe could be attached: " + "; ".join(f"{k}: {v}" for k, v in self.attach.failed.items()))

    def attach_arrived(self) -> list[str]:
        """Attach the queued functions of modules that are loaded now (``Live`` in /proc/modules).

        Called from the poll thread (the only thread using bcc while recording).
        An attached function becomes ``traceable`` in the plan, with the time of
        arrival in its reason; the module's BTF, when the kernel has it, gives its
        argument facts. Late functions take kprobes (their fentry handlers would
        have been generated before their BTF existed). Returns the modules that arrived.
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
                table[ctypes.c_int(fp.func_id)] = _cfg(fp)
        except Exception as err:  # noqa: BLE001 - the probes still attach without argument facts
            self.progress(f"module {mod}: no argument facts from BTF ({err})")

    # -- draining ---------------------------------------------------------
    def _on_event(self, _ctx, data, size):
        self._buf += ctypes.string_at(data, size)

    def _flush(self):
        if not self._buf:
            return
        batch = np.frombuffer(bytes(self._buf), dtype=EVENT_DTYPE)
        self._buf = bytearray()
        self._buf_since = time.monotonic()
        self._deliver(batch)

    def _lost_now(self) -> list[int]:
        try:
            return [int(v) for v in self._bpf["lost"][ctypes.c_int(0)]]
        except Exception:  # noqa: BLE001 - best effort while running
            return []

    def _report(self, now: float):
        t_prev, n_prev = self._last_report
        lost = sum(self._lost_now())
        if self.aggregate_mode:
            self.progress(f"counting in the kernel: {now - self._t_attach:.0f} s, {lost} lost")
        else:
            rate = (self.events - n_prev) / max(now - t_prev, 1e-9) if t_prev else 0.0
            waiting = (f", {self._ring.backlog() // SLOT:,} waiting in the ring buffer"
                       if self.drain == "defer" and self._ring else "")
            self.progress(f"recording: {self.events:,} events ({rate:,.0f}/s drained){waiting}, {lost:,} lost")
        self._last_report = (now, self.events)

    def comms(self) -> dict[int, bytes]:
        """tid -> thread name (bytes, no NUL) as the ``comms`` BPF map holds them now, or (after
        the Recorder exited) as it held them at the end. Empty in counting mode. A sink that
        has a ``comm_source`` attribute gets this method there (probes/stream.py)."""
        if self._comms_final is not None or self._bpf is None or self.aggregate_mode:
            return dict(self._comms_final or {})
        try:
            return {int(k.value): bytes(v.comm) for k, v in self._bpf["comms"].items()}
        except Exception:  # noqa: BLE001 - best effort while running (map gone on a failed start)
            return {}

    def _comm(self, tid: int, cpu: int) -> bytes:
        name = self._comm_cache.get(tid) if tid else None
        if name is None:
            if tid and tid not in self._comm_cache:
                self._comm_cache.update(self.comms())
            name = comm_name(tid, cpu, self._comm_cache)
        return name

    def _deliver(self, batch):
        self.events += len(batch)
        if self.sink is not None:
            self.sink(batch)
        else:
            self.rows.extend(trace_rows(batch, len(self.rows), self._comm))

    def _drain(self) -> int:
        """One pass over the ring buffer; returns the events delivered."""
        if self._ring is not None:
            if self._out is None and getattr(self.sink, "borrows_batches", False):
                self._out = np.empty(self.batch_events, dtype=EVENT_DTYPE)  # reused for every batch
            batch = self._ring.read(self.batch_events, out=self._out)
            if len(batch):
                self._deliver(batch)
            return len(batch)
        # bcc's per-record callback (no mmap): the program submits without wakeups, so consume
        self._bpf.ring_buffer_consume()
        n = len(self._buf) // EVENT_DTYPE.itemsize
        if len(self._buf) >= self.batch_events * EVENT_DTYPE.itemsize or time.monotonic() - self._buf_since >= 0.5:
            self._flush()
        return n

    def _poll(self):
        try:
            self._last_report = (time.monotonic(), 0)
            self._next_report = time.monotonic() + 2.0
            # 1/8 of the records a full ring buffer holds
            ring_bytes = self.ringbuf_pages * 4096
            eighth = ring_bytes // SLOT // 8
            gate = defer_gate(self.drain if not self.aggregate_mode else "normal", ring_bytes,
                              self._ring is not None, self.progress)
            sched = DrainScheduler(
                self.drain if self._ring is not None else "normal", ring_bytes, progress=self.progress,
                guard=lambda tid: GuardProcess(self._bpf["events"].map_fd, ring_bytes, tid, HIGH_WATER))
            sched.start()
            try:
                self._poll_loop(sched, eighth, gate)
            finally:
                sched.finish()
                self.drain_boosts = gate.catch_ups if gate is not None else sched.boosts + sched.guard_boosts
            if not self.aggregate_mode:
                while self._drain() >= self.batch_events:
                    pass
                if self._ring is None:
                    self._flush()
        except BaseException as err:  # surfaced in __exit__
            self._poll_error = err

    def _poll_loop(self, sched: DrainScheduler, eighth: int, gate: DeferGate | None = None) -> None:
        while not self._stop.is_set():
            if sched.active:  # only under --drain yield with the mmap'd reader: no position reads otherwise
                sched.update(self._ring.backlog())
                self.drain_boosts = sched.boosts
            if self.aggregate_mode:
                self._stop.wait(0.1)
            elif gate is not None and not gate.due(*self._ring.positions()):
                self._stop.wait(POLL_S)  # defer: the records wait in the ring buffer
            elif self._drain() < eighth:
                # paced: a reader that goes again as soon as it got anything spins on a CPU the
                # workload needs (measured, lab VM: it halved a flood's rate). A ring buffer less
                # than 1/8 full waits POLL_S; the default one (4 MiB, ~87,000 events) fills that
                # far in POLL_S only above ~437,000 events/s, and then the reader keeps going.
                self._stop.wait(POLL_S)
            now = time.monotonic()
            if self.pending and now >= self._next_check:
                self._next_check = now + 0.05
                self.attach_arrived()
            if now >= self._next_report:
                self._next_report = now + 2.0
                self._report(now)

    # -- context manager --------------------------------------------------
    def __enter__(self):
        self.compile()
        try:
            self.configure()
            if not self.aggregate_mode:
                try:
                    self._ring = RingReader(self._bpf["events"].map_fd, self.ringbuf_pages * 4096)
                except RingError as err:
                    self.progress(f"{err}: draining with bcc's per-event callback")
                    self._bpf["events"].open_ring_buffer(self._on_event)
            if self.sink is not None and hasattr(self.sink, "comm_source"):
                self.sink.comm_source = self.comms
            self.attach_all()
            self._thread = threading.Thread(target=self._poll, name="callpath-ringbuf", daemon=True)
            self._thread.start()
        except BaseException:
            self._links.close()
            self._bpf.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        try:
            time.sleep(0.2)  # let in-flight events land
            self._links.close()  # fentry/fexit detach first: no more events
            self._stop.set()
            if self._thread:
                self._thread.join(timeout=30)
            self.lost_per_cpu = self._lost_now()
            self.lost = sum(self.lost_per_cpu)
            self._comms_final = self.comms()
            if self.aggregate_mode:
                from .aggread import plan_slots, read_aggregate  # noqa: PLC0415

                self.aggregate = read_aggregate(self._bpf, plan_slots(self.plan))
        finally:
            self._links.close()
            if self._ring is not None:
                self._ring.close()
            self._bpf.cleanup()  # detaches every kprobe/kretprobe
            what = (f"{sum(p['calls'] for p in self.aggregate['paths'])} calls counted" if self.aggregate
                    else f"{self.events} events")
            self.progress(f"detached; {what}, {self.lost} lost"
                          + (f" (per CPU: {self.lost_per_cpu})" if self.lost else ""))
        if self._poll_error and not exc[0]:
            raise ProbeError(f"ring buffer polling failed: {self._poll_error}")
        return False

    def bpf_source(self) -> str:
        """The C source bcc compiles (for ``--print-bpf``)."""
        return self.program()


def _cfg(fp) -> FuncCfg:
    return FuncCfg(skb_arg=fp.skb_arg or 0, skb_depth=fp.skb_depth or 1, netdev_arg=fp.netdev_arg or 0,
                   flags=0)


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else repr(err)
