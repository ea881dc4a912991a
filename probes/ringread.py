"""Drain callpath's BPF ring buffer in batches, without a Python call per event.

bcc (like libbpf) drains a ring buffer by calling a Python function per
record: under load that call, not the kernel, caps the rate (measured in the
lab VM: about 22,000 events/s, with hundreds of thousands lost). callpath's
records all have one size (``struct callpath_event``, 40 bytes), so the
ring buffer between the consumer and producer positions is an array of
fixed 48-byte slots (8-byte record header + 40 bytes, kernel/bpf/ringbuf.c:
``round_up(len + BPF_RINGBUF_HDR_SZ, 8)``), and a batch can be copied out with
numpy in one go.

Layout (kernel/bpf/ringbuf.c, uapi ``BPF_RINGBUF_*``, 5.8+): mmap offset 0 is the
consumer page (``consumer_pos``, u64, written by user space); offset one page
is the producer page (``producer_pos``, u64) followed by the data pages, mapped
twice in a row so a record that wraps reads contiguously. A record header is
``u32 len`` (bit 31 BUSY: still being written, bit 30 DISCARD) and ``u32
pg_off``. The BPF program submits with ``BPF_RB_NO_WAKEUP`` (no wakeup per
event: the reader polls on a timer), which saves the kernel an irq_work per
event.
"""

from __future__ import annotations

import mmap
import struct

import numpy as np

from .event import EVENT_DTYPE

HDR = 8
#: Bytes one record takes in the ring buffer: header + ``struct callpath_event``, rounded up to 8 (48).
SLOT = HDR + EVENT_DTYPE.itemsize + (-(HDR + EVENT_DTYPE.itemsize)) % 8
BUSY = 1 << 31
DISCARD = 1 << 30


class RingError(OSError):
    """The ring buffer cannot be mapped (kernel before 5.8, or not a ring buffer map)."""


class RingReader:
    """Batch reader of one BPF ring buffer map holding only ``struct callpath_event`` records.

    Args:
        map_fd: the ring buffer map's fd (bcc: ``bpf["events"].map_fd``).
        size: its data size in bytes (``max_entries``: pages * 4096, a power of two).

    Raises:
        RingError: mmap refused.
    """

    def __init__(self, map_fd: int, size: int):
        self.size = size
        self.page = mmap.PAGESIZE
        self.slot = SLOT
        try:
            self._cons = mmap.mmap(map_fd, self.page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(map_fd, self.page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=self.page)
        except (OSError, ValueError) as err:
            raise RingError(f"cannot map the ring buffer: {err}") from None
        self._data = np.frombuffer(self._prod, dtype=np.uint8, count=2 * size, offset=self.page)

    def positions(self) -> tuple[int, int]:
        """(consumer, producer) positions in bytes since the map was created."""
        return struct.unpack_from("<Q", self._cons, 0)[0], struct.unpack_from("<Q", self._prod, 0)[0]

    def backlog(self) -> int:
        """Bytes written by the kernel and not yet consumed (record headers included)."""
        cons, prod = self.positions()
        return prod - cons

    def read(self, max_events: int = 1 << 16, out: np.ndarray | None = None) -> np.ndarray:
        """Copy out the records that are complete, up to ``max_events``; advance the consumer.

        Returns a structured array (``EVENT_DTYPE``), possibly empty. A record still
        being written (BUSY) ends the batch; discarded records are skipped.

        ``out``: an ``EVENT_DTYPE`` array of at least ``max_events`` rows to copy into
        (the result is then a view of it, valid until ``out`` is reused): no new
        memory per batch. Without it each batch is a new array. Either way the
        records are copied once, straight from the mapped ring buffer.

        Raises:
            RingError: a record of another size: not callpath's ring buffer.
        """
        cons, prod = self.positions()
        n = min((prod - cons) // self.slot, max_events)
        if n <= 0:
            return np.empty(0, dtype=EVENT_DTYPE)
        start = cons % self.size
        chunk = self._data[start:start + n * self.slot].reshape(n, self.slot)
        hdr = chunk[:, :4].copy().view("<u4").ravel()
        busy = np.flatnonzero(hdr & BUSY)
        if len(busy):
            n = int(busy[0])
            chunk, hdr = chunk[:n], hdr[:n]
        if not n:
            return np.empty(0, dtype=EVENT_DTYPE)
        lengths = hdr & ~np.uint32(BUSY | DISCARD)
        if (lengths != EVENT_DTYPE.itemsize).any():
            raise RingError(f"ring buffer record of {int(lengths[lengths != EVENT_DTYPE.itemsize][0])} bytes, "
                            f"expected {EVENT_DTYPE.itemsize}")
        keep = (hdr & DISCARD) == 0
        records = chunk[:, HDR:HDR + EVENT_DTYPE.itemsize].view(EVENT_DTYPE)[:, 0]  # a view of the ring
        if not keep.all():
            records = records[keep]
        if out is None:
            batch = records.copy()
        else:
            batch = out[:len(records)]
            batch[...] = records
        struct.pack_into("<Q", self._cons, 0, cons + n * self.slot)  # frees the space for the kernel
        return batch

    def close(self) -> None:
        self._data = None
        for m in (self._prod, self._cons):
            try:
                m.close()
            except (BufferError, ValueError):
                pass
