/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one event record callpath's BPF program emits through its ring buffer.
 * Mirrored, once, by probes/event.py (ctypes); tests/test_event_layout.py
 * compiles this header and checks sizes and offsets against the mirror.
 *
 * Fields are ordered largest first with explicit padding and no bool, so the
 * layout is the same for clang -target bpf and the host compiler.
 */
#ifndef CALLPATH_EVENT_H
#define CALLPATH_EVENT_H

#define CALLPATH_EVENT_ENTRY  0
#define CALLPATH_EVENT_RETURN 1
#define CALLPATH_COMM_LEN     16

struct callpath_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC, ns */
	__u64 skb;        /* struct sk_buff * address, 0 when the function takes none */
	__s64 retval;     /* return value (return events only) */
	__u32 tid;        /* kernel task id (pid_t of the thread) */
	__u32 tgid;       /* process id */
	__u32 cpu;        /* bpf_get_smp_processor_id() */
	__u32 func_id;    /* slot of the probed function in the probe plan */
	__s32 ifindex;    /* skb->dev->ifindex, or the net_device argument's ifindex; 0 unknown */
	__u32 netns;      /* inode of the device's netns (skb->dev->nd_net), 0 unknown */
	char  comm[CALLPATH_COMM_LEN];  /* task comm, entry events only (empty on returns) */
	__u8  kind;       /* CALLPATH_EVENT_ENTRY or CALLPATH_EVENT_RETURN */
	__u8  pad[7];
};

#endif /* CALLPATH_EVENT_H */
