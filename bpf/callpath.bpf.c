// SPDX-License-Identifier: GPL-2.0
/*
 * callpath: record entry and return of every planned kernel function.
 *
 * Loaded with bcc (probes/loader.py). One kprobe and one kretprobe per planned
 * function; each attaches to its own small handler (entry_N / ret_N) so the
 * function id is known without bpf_get_func_ip(), which kretprobes on older
 * kernels lack. Per-function argument facts (which argument is the skb or the
 * net_device, from BTF) reach the program through the func_cfg array, filled
 * by the loader before any probe is attached.
 *
 * Settings from the loader, as cflags: CALLPATH_MAX_FUNCS (slots, default 128),
 * CALLPATH_RINGBUF_PAGES (ring buffer size in pages, power of two), and the
 * byte offsets of the kernel fields read, taken from the target kernel's BTF by
 * probes/fields.py (-1: not resolved, not read):
 *   CALLPATH_OFF_SKB_DEV       struct sk_buff, member dev (struct net_device *)
 *   CALLPATH_OFF_DEV_IFINDEX   struct net_device, member ifindex (int)
 *   CALLPATH_OFF_DEV_NET       struct net_device, member nd_net.net (struct net *)
 *   CALLPATH_OFF_NET_INUM      struct net, member ns.inum (unsigned int)
 *
 * No kernel-internal header is included: struct layouts differ between kernels
 * and headers such as linux/netdevice.h stop compiling with an older bcc on a
 * newer kernel (linux/bpf.h needs uapi types bcc's bundled bpf.h lacks). Fields
 * are read with bpf_probe_read_kernel at the offsets above, like CO-RE does.
 */
#include <uapi/linux/ptrace.h>

#include "callpath_event.h"

#ifndef CALLPATH_MAX_FUNCS
#define CALLPATH_MAX_FUNCS 128
#endif
#ifndef CALLPATH_RINGBUF_PAGES
#define CALLPATH_RINGBUF_PAGES 256
#endif
#if !defined(CALLPATH_OFF_SKB_DEV) || !defined(CALLPATH_OFF_DEV_IFINDEX) || \
    !defined(CALLPATH_OFF_DEV_NET) || !defined(CALLPATH_OFF_NET_INUM)
#error "field offsets come from the loader (probes/fields.py): -DCALLPATH_OFF_...=BYTES or -1"
#endif

struct func_cfg {
	u8 skb_arg;     /* 1-based argument holding the skb, 0 none */
	u8 skb_depth;   /* 1: struct sk_buff *, 2: struct sk_buff ** */
	u8 netdev_arg;  /* 1-based argument holding a struct net_device *, 0 none */
	u8 pad[5];
};

BPF_ARRAY(func_cfg, struct func_cfg, CALLPATH_MAX_FUNCS);
BPF_RINGBUF_OUTPUT(events, CALLPATH_RINGBUF_PAGES);
/* [0]: events dropped because the ring buffer was full */
BPF_ARRAY(lost, u64, 1);

static __always_inline u64 arg_n(struct pt_regs *ctx, int n)
{
	/*
	 * Load every argument register at a constant offset first and hide the
	 * values from the optimiser (like libbpf's barrier_var()): otherwise clang
	 * folds a switch on PT_REGS_PARMn() into one load from ctx at a computed
	 * offset, which the verifier refuses ("dereference of modified ctx ptr").
	 */
	u64 a1 = PT_REGS_PARM1(ctx), a2 = PT_REGS_PARM2(ctx), a3 = PT_REGS_PARM3(ctx);
	u64 a4 = PT_REGS_PARM4(ctx), a5 = PT_REGS_PARM5(ctx), a6 = PT_REGS_PARM6(ctx);

	asm volatile("" : "+r"(a1), "+r"(a2), "+r"(a3), "+r"(a4), "+r"(a5), "+r"(a6));
	if (n == 1) return a1;
	if (n == 2) return a2;
	if (n == 3) return a3;
	if (n == 4) return a4;
	if (n == 5) return a5;
	if (n == 6) return a6;
	return 0;
}

/* ifindex and netns inode of a struct net_device at address dev */
static __always_inline void read_dev(struct callpath_event *e, u64 dev)
{
	u64 net = 0;

	if (!dev)
		return;
#if CALLPATH_OFF_DEV_IFINDEX >= 0
	bpf_probe_read_kernel(&e->ifindex, sizeof(e->ifindex), (void *)(dev + CALLPATH_OFF_DEV_IFINDEX));
#endif
#if CALLPATH_OFF_DEV_NET >= 0 && CALLPATH_OFF_NET_INUM >= 0
	bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + CALLPATH_OFF_DEV_NET));
	if (net)
		bpf_probe_read_kernel(&e->netns, sizeof(e->netns), (void *)(net + CALLPATH_OFF_NET_INUM));
#endif
}

static __always_inline int emit(struct pt_regs *ctx, u32 id, u8 kind)
{
	struct callpath_event *e;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 zero = 0;

	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		u64 *n = lost.lookup(&zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->tid = (u32)pid_tgid;
	e->tgid = pid_tgid >> 32;
	e->cpu = bpf_get_smp_processor_id();
	e->func_id = id;
	e->kind = kind;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));

	if (kind == CALLPATH_EVENT_RETURN) {
		e->retval = PT_REGS_RC(ctx);
	} else {
		struct func_cfg *cfg = func_cfg.lookup(&id);
		if (cfg && cfg->skb_arg) {
			u64 skb = arg_n(ctx, cfg->skb_arg);
			if (cfg->skb_depth == 2 && skb)
				bpf_probe_read_kernel(&skb, sizeof(skb), (void *)skb);
			e->skb = skb;
#if CALLPATH_OFF_SKB_DEV >= 0
			if (skb) {
				u64 dev = 0;
				bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(skb + CALLPATH_OFF_SKB_DEV));
				read_dev(e, dev);
			}
#endif
		}
		if (cfg && cfg->netdev_arg && !e->ifindex)
			read_dev(e, arg_n(ctx, cfg->netdev_arg));
	}
	events.ringbuf_submit(e, 0);
	return 0;
}

/*
 * The two programs that do the work. Each slot handler below only notes its
 * slot in a per-CPU scratch value and tail-calls one of these, so the
 * recording code exists once rather than once per slot: that keeps the program
 * small and bcc's compile time under emulation short. (bcc cannot link
 * BPF-to-BPF calls to a shared non-inlined function.) A kprobe handler runs with
 * migration disabled and does not nest on a CPU, so the scratch value is the
 * one its slot handler just wrote.
 */
BPF_PERCPU_ARRAY(current_slot, u32, 1);
BPF_PROG_ARRAY(workers, 2);

int on_entry(struct pt_regs *ctx)
{
	u32 zero = 0, *slot = current_slot.lookup(&zero);

	return slot ? emit(ctx, *slot, CALLPATH_EVENT_ENTRY) : 0;
}

int on_return(struct pt_regs *ctx)
{
	u32 zero = 0, *slot = current_slot.lookup(&zero);

	return slot ? emit(ctx, *slot, CALLPATH_EVENT_RETURN) : 0;
}

static __always_inline int dispatch(struct pt_regs *ctx, u32 slot, int worker)
{
	u32 zero = 0;
	u64 *n;

	current_slot.update(&zero, &slot);
	workers.call(ctx, worker);
	/* only reached when the tail call failed: count it as lost */
	n = lost.lookup(&zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

/*
 * Slot handlers entry_B_K / ret_B_K for slot B*8+K; probes/loader.py derives
 * the name from the slot with the same formula (callpath.bpf.handler_names).
 */
#define SLOT(b, k) \
	int entry_##b##_##k(struct pt_regs *ctx) { return dispatch(ctx, (b) * 8 + (k), 0); } \
	int ret_##b##_##k(struct pt_regs *ctx) { return dispatch(ctx, (b) * 8 + (k), 1); }
#define SLOTS8(b) SLOT(b, 0) SLOT(b, 1) SLOT(b, 2) SLOT(b, 3) SLOT(b, 4) SLOT(b, 5) SLOT(b, 6) SLOT(b, 7)

SLOTS8(0) SLOTS8(1) SLOTS8(2) SLOTS8(3) SLOTS8(4) SLOTS8(5) SLOTS8(6) SLOTS8(7)
SLOTS8(8) SLOTS8(9) SLOTS8(10) SLOTS8(11) SLOTS8(12) SLOTS8(13) SLOTS8(14) SLOTS8(15)
