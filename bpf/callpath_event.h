/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one event record callpath's BPF program emits through its ring buffer.
 * Mirrored, once, by probes/event.py (ctypes); tests/test_event_layout.py
 * compiles this header and checks sizes and offsets against the mirror.
 *
 * Fields are ordered largest first with explicit padding and no bool, so the
 * layout is the same for clang -target bpf and the host compiler.
 *
 * 40 bytes (48 in the ring buffer with its 8-byte header): every byte is copied
 * by the kernel, by the reader and into the spool, twice per probed call. So
 * what an entry and a return need apart shares one field (``arg``: the skb
 * address of an entry, the return value of a return), and the thread's name is
 * not in the record: it goes to the ``comms`` map (tid -> comm) when a thread's
 * entry is the first on its CPU since another thread's (bpf/callpath.bpf.c
 * note_comm), and user space joins it by tid.
 */
#ifndef CALLPATH_EVENT_H
#define CALLPATH_EVENT_H

#define CALLPATH_EVENT_ENTRY  0
#define CALLPATH_EVENT_RETURN 1
#define CALLPATH_COMM_LEN     16

struct callpath_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC, ns */
	__u64 arg;        /* entry: struct sk_buff * address (0: none); return: the return value (s64) */
	__u32 tid;        /* kernel task id (pid_t of the thread) */
	__u32 tgid;       /* process id */
	__s32 ifindex;    /* entries: skb->dev->ifindex, or the net_device argument's ifindex; 0 unknown */
	__u32 netns;      /* entries: inode of the device's netns (skb->dev->nd_net), 0 unknown */
	__u16 func_id;    /* slot of the probed function in the probe plan */
	__u16 cpu;        /* bpf_get_smp_processor_id() */
	__u8  kind;       /* CALLPATH_EVENT_ENTRY or CALLPATH_EVENT_RETURN */
	__u8  pad[3];
};

/* value of the comms map (key: tid) */
struct callpath_comm {
	char comm[CALLPATH_COMM_LEN];  /* bpf_get_current_comm() */
};

#endif /* CALLPATH_EVENT_H */
