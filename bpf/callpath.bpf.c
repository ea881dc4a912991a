// SPDX-License-Identifier: GPL-2.0
/*
 * callpath: record (or count) entry and return of every planned kernel function.
 *
 * Loaded with bcc (probes/loader.py). Two ways in, chosen per function by the
 * loader and written in the plan:
 *
 *   kprobe/kretprobe  one small handler per slot (entry_N / ret_N) notes its slot
 *                     and tail-calls a shared worker (on_entry / on_return), so the
 *                     function id is known without bpf_get_func_ip(), which
 *                     kretprobes on older kernels lack;
 *   fentry/fexit      handlers fentry_N / fexit_N generated per function by
 *                     probes/bpfgen.py and appended to this file: the BPF
 *                     trampoline passes the arguments (and, to fexit, the return
 *                     value) as an array of u64, read at constant indexes.
 *
 * Both end in handle(), which either streams one struct callpath_event into the
 * ring buffer, or (CALLPATH_AGGREGATE) counts in BPF maps along a per-thread
 * stack of the probed frames (paths, first-seen child order, log2 latency).
 * That stack sits in a per-CPU array while its thread runs and moves to a hash
 * by thread when the scheduler switches the thread out with frames open
 * (on_sched_switch, a raw tracepoint: see thread_state).
 *
 * Settings from the loader, as cflags (probes/loader.py bpf_cflags):
 *   CALLPATH_MAX_FUNCS        slots (default 128)
 *   CALLPATH_RINGBUF_PAGES    ring buffer size in pages, power of two
 *   CALLPATH_AGGREGATE        1: count in maps, stream nothing
 *   CALLPATH_FILTER_TGID      keep only this process id (0: no filter)
 *   CALLPATH_FILTER_NETNS     keep only devices of this netns inode (0: no filter)
 *   CALLPATH_FILTER_IFINDEX   keep only this ifindex (0: no filter)
 *   CALLPATH_OFF_SKB_DEV      struct sk_buff, member dev (struct net_device *)
 *   CALLPATH_OFF_DEV_IFINDEX  struct net_device, member ifindex (int)
 *   CALLPATH_OFF_DEV_NET      struct net_device, member nd_net.net (struct net *)
 *   CALLPATH_OFF_NET_INUM     struct net, member ns.inum (unsigned int)
 * The offsets come from the target kernel's BTF (probes/fields.py); -1: not read.
 *
 * No kernel-internal header is included: struct layouts differ between kernels
 * and headers such as linux/netdevice.h stop compiling with an older bcc on a
 * newer kernel. Fields are read with bpf_probe_read_kernel at the offsets above,
 * like CO-RE does.
 */
#include <uapi/linux/ptrace.h>

#include "callpath_event.h"

#ifndef CALLPATH_MAX_FUNCS
#define CALLPATH_MAX_FUNCS 128
#endif
#ifndef CALLPATH_RINGBUF_PAGES
#define CALLPATH_RINGBUF_PAGES 256
#endif
#ifndef CALLPATH_AGGREGATE
#define CALLPATH_AGGREGATE 0
#endif
#ifndef CALLPATH_COMMS
#define CALLPATH_COMMS 65536  /* threads whose names are kept (LRU) */
#endif
#ifndef CALLPATH_DIRECT_LOADS
#define CALLPATH_DIRECT_LOADS 1  /* fentry: device facts by plain BTF-typed loads (fentry_dev) */
#endif
#ifndef CALLPATH_FILTER_TGID
#define CALLPATH_FILTER_TGID 0
#endif
#ifndef CALLPATH_FILTER_NETNS
#define CALLPATH_FILTER_NETNS 0
#endif
#ifndef CALLPATH_FILTER_IFINDEX
#define CALLPATH_FILTER_IFINDEX 0
#endif
#if !defined(CALLPATH_OFF_SKB_DEV) || !defined(CALLPATH_OFF_DEV_IFINDEX) || \
    !defined(CALLPATH_OFF_DEV_NET) || !defined(CALLPATH_OFF_NET_INUM)
#error "field offsets come from the loader (probes/fields.py): -DCALLPATH_OFF_...=BYTES or -1"
#endif

#define CALLPATH_DEV_FILTER (CALLPATH_FILTER_NETNS != 0 || CALLPATH_FILTER_IFINDEX != 0)
/* the per-thread stack of probed frames: for counting, and for filters on devices */
#define CALLPATH_STACK (CALLPATH_AGGREGATE || CALLPATH_DEV_FILTER)
#define CP_DEPTH 16      /* probed frames kept per thread; keep in step with probes/loader.py */
#define CP_BUCKETS 64    /* log2 latency buckets per function */

#define CFG_ENTRY_ONLY 1 /* func_cfg.flags: an inline site, no return */

struct func_cfg {
	u8 skb_arg;     /* 1-based argument holding the skb, 0 none */
	u8 skb_depth;   /* 1: struct sk_buff *, 2: struct sk_buff ** */
	u8 netdev_arg;  /* 1-based argument holding a struct net_device *, 0 none */
	u8 flags;       /* CFG_ENTRY_ONLY */
	u8 pad[4];
};

BPF_ARRAY(func_cfg, struct func_cfg, CALLPATH_MAX_FUNCS);
/* [0] events dropped (ring buffer full, tail call failed), per CPU */
BPF_PERCPU_ARRAY(lost, u64, 1);

#include "callpath_stack.h"

#if !CALLPATH_AGGREGATE
BPF_RINGBUF_OUTPUT(events, CALLPATH_RINGBUF_PAGES);
/* tid -> its name (task comm), read by user space at the end of each spool segment */
BPF_TABLE("lru_hash", u32, struct callpath_comm, comms, CALLPATH_COMMS);
/* [0] the thread whose name this CPU wrote last */
BPF_PERCPU_ARRAY(comm_tid, u32, 1);
#endif

/* add one to a per-CPU counter (per-CPU slot: no atomic needed) */
static __always_inline void count_lost(void)
{
	u32 i = 0;
	u64 *n = lost.lookup(&i);

	if (n)
		*n += 1;
}

struct devinfo { s32 ifindex; u32 netns; };

/* ifindex and netns inode of a struct net_device at address dev */
static __always_inline void read_dev(struct devinfo *d, u64 dev)
{
	u64 net = 0;

	if (!dev)
		return;
#if CALLPATH_OFF_DEV_IFINDEX >= 0
	bpf_probe_read_kernel(&d->ifindex, sizeof(d->ifindex), (void *)(dev + CALLPATH_OFF_DEV_IFINDEX));
#endif
#if CALLPATH_OFF_DEV_NET >= 0 && CALLPATH_OFF_NET_INUM >= 0
	bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + CALLPATH_OFF_DEV_NET));
	if (net)
		bpf_probe_read_kernel(&d->netns, sizeof(d->netns), (void *)(net + CALLPATH_OFF_NET_INUM));
#endif
}

/* the device of an entry: skb->dev, else the net_device argument */
static __always_inline void entry_dev(struct devinfo *d, u64 skb, u64 dev)
{
#if CALLPATH_OFF_SKB_DEV >= 0
	if (skb) {
		u64 sdev = 0;
		bpf_probe_read_kernel(&sdev, sizeof(sdev), (void *)(skb + CALLPATH_OFF_SKB_DEV));
		read_dev(d, sdev);
	}
#endif
	if (dev && !d->ifindex)
		read_dev(d, dev);
}

/*
 * The same facts for a fentry program, by plain loads: its arguments are
 * pointers the verifier knows the BTF type of (PTR_TO_BTF_ID: btf_ctx_access
 * in kernel/bpf/btf.c, 5.5+), and so are the pointers loaded through them
 * (btf_struct_access); it turns each load into one that cannot fault
 * (BPF_PROBE_MEM: a load whose fault is fixed up to 0), so no helper is
 * called. skb and dev must come straight from the program's ctx, as typed
 * arguments (struct sk_buff *, struct net_device *), never a value read with
 * bpf_probe_read_kernel. CALLPATH_DIRECT_LOADS=0: the helper reads instead.
 */
#if CALLPATH_DIRECT_LOADS
static __always_inline void direct_read_dev(struct devinfo *d, u64 dev)
{
	if (!dev)
		return;
#if CALLPATH_OFF_DEV_IFINDEX >= 0
	d->ifindex = *(s32 *)(dev + CALLPATH_OFF_DEV_IFINDEX);
#endif
#if CALLPATH_OFF_DEV_NET >= 0 && CALLPATH_OFF_NET_INUM >= 0
	{
		u64 net = *(u64 *)(dev + CALLPATH_OFF_DEV_NET);
		if (net)
			d->netns = *(u32 *)(net + CALLPATH_OFF_NET_INUM);
	}
#endif
}

static __always_inline void fentry_dev(struct devinfo *d, u64 skb, u64 dev)
{
#if CALLPATH_OFF_SKB_DEV >= 0
	if (skb)
		direct_read_dev(d, *(u64 *)(skb + CALLPATH_OFF_SKB_DEV));
#endif
	if (dev && !d->ifindex)
		direct_read_dev(d, dev);
}
#else
#define fentry_dev entry_dev
#endif

/* -1: no device facts to judge by; 0: filtered out; 1: kept */
static __always_inline int dev_match(struct devinfo *d)
{
	if (!d->ifindex && !d->netns)
		return -1;
	if (CALLPATH_FILTER_NETNS && d->netns != CALLPATH_FILTER_NETNS)
		return 0;
	if (CALLPATH_FILTER_IFINDEX && d->ifindex != CALLPATH_FILTER_IFINDEX)
		return 0;
	return 1;
}

#if !CALLPATH_AGGREGATE
/*
 * The thread's name, into comms, when this CPU last wrote another thread's:
 * one per-CPU lookup per entry instead of 16 bytes in every record. tid 0 (the
 * idle task of each CPU) is named by user space: swapper/<cpu>
 * (kernel/sched/core.c init_idle). A thread renamed while it keeps its CPU
 * keeps its first name until another thread's entry runs there.
 */
static __always_inline void note_comm(u32 tid)
{
	u32 zero = 0;
	u32 *last = comm_tid.lookup(&zero);
	struct callpath_comm c = {};

	if (!last || *last == tid || !tid)
		return;
	bpf_get_current_comm(&c.comm, sizeof(c.comm));
	comms.update(&tid, &c);
	*last = tid;
}

static __always_inline int emit(u32 id, u8 kind, u64 skb, struct devinfo *d, s64 retval)
{
	struct callpath_event *e;
	u64 pid_tgid = bpf_get_current_pid_tgid();

	if (kind == CALLPATH_EVENT_ENTRY)
		note_comm((u32)pid_tgid);
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count_lost();
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->arg = kind == CALLPATH_EVENT_ENTRY ? skb : (u64)retval;
	e->tid = (u32)pid_tgid;
	e->tgid = pid_tgid >> 32;
	e->ifindex = d->ifindex;
	e->netns = d->netns;
	e->func_id = id;
	e->cpu = bpf_get_smp_processor_id();
	e->kind = kind;
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	/* BPF_RB_NO_WAKEUP (1): no irq_work per event; user space polls (probes/ringread.py) */
	events.ringbuf_submit(e, 1);
	return 0;
}
#endif

/*
 * Everything after the probe-specific part: filters, then stream or count.
 * skb/dev: the entry's struct sk_buff * and struct net_device * arguments (0 none).
 */
/* counting without device filters needs no device facts */
#define CALLPATH_NEED_DEV (!CALLPATH_AGGREGATE || CALLPATH_DEV_FILTER)

/* handle() once the entry's device facts are in *dev (zero: none, and for returns) */
static __always_inline int handle_dev(u32 id, u8 kind, u64 skb, struct devinfo *dev, s64 retval, int entry_only,
				      u64 sp)
{
	struct devinfo d = *dev;
	int keep = 1;

	if (CALLPATH_FILTER_TGID && (bpf_get_current_pid_tgid() >> 32) != CALLPATH_FILTER_TGID)
		return 0;
#if CALLPATH_STACK
	{
		struct tstate *st = thread_state(sp);
		if (!st) {
			count_lost();
			return 0;
		}
		st->busy++;
		if (kind == CALLPATH_EVENT_ENTRY)
			keep = stack_entry(st, id, CALLPATH_DEV_FILTER ? dev_match(&d) : -1, entry_only, sp);
		else
			keep = stack_return(st, id);
		st->busy--;
	}
#endif
#if CALLPATH_AGGREGATE
	return 0;
#else
	if (!keep)
		return 0;
	return emit(id, kind, skb, &d, retval);
#endif
}

static __always_inline int handle(u32 id, u8 kind, u64 skb, u64 dev, s64 retval, int entry_only, u64 sp)
{
	struct devinfo d = {};

	if (kind == CALLPATH_EVENT_ENTRY && CALLPATH_NEED_DEV)
		entry_dev(&d, skb, dev);
	return handle_dev(id, kind, skb, &d, retval, entry_only, sp);
}

/*
 * A fentry program's ctx points at the arguments the BPF trampoline saved in
 * its own stack frame, just above the traced function's: the frame's stack
 * address. The verifier forbids arithmetic on a ctx pointer (stack_entry
 * compares and shifts it), so stack_entry launders it through the thread's
 * state (see as_number): the handlers pass it on as it is.
 */
static __always_inline u64 stack_addr(void *ctx)
{
	return (u64)ctx;
}

/* ---------------------------------------------------------------- kprobes */

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

/*
 * The two kprobe programs that do the work. Each slot handler below only notes
 * its slot in a per-CPU scratch value and tail-calls one of these, so the
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
	u32 zero = 0, *slot = current_slot.lookup(&zero), id;
	struct func_cfg *cfg;
	u64 skb = 0, dev = 0;

	if (!slot)
		return 0;
	id = *slot;
	cfg = func_cfg.lookup(&id);
	if (!cfg)
		return 0;
	if (cfg->skb_arg) {
		skb = arg_n(ctx, cfg->skb_arg);
		if (cfg->skb_depth == 2 && skb)
			bpf_probe_read_kernel(&skb, sizeof(skb), (void *)skb);
	}
	if (cfg->netdev_arg)
		dev = arg_n(ctx, cfg->netdev_arg);
	return handle(id, CALLPATH_EVENT_ENTRY, skb, dev, 0, cfg->flags & CFG_ENTRY_ONLY, PT_REGS_SP(ctx));
}

int on_return(struct pt_regs *ctx)
{
	u32 zero = 0, *slot = current_slot.lookup(&zero);

	return slot ? handle(*slot, CALLPATH_EVENT_RETURN, 0, 0, PT_REGS_RC(ctx), 0, 0) : 0;
}

static __always_inline int dispatch(struct pt_regs *ctx, u32 slot, int worker)
{
	u32 zero = 0;

	current_slot.update(&zero, &slot);
	workers.call(ctx, worker);
	/* only reached when the tail call failed: count it as lost */
	count_lost();
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

/* ------------------------------------------------ fentry/fexit (generated) */
/*
 * probes/bpfgen.py appends, per function taking fentry/fexit:
 *   int fentry_N(u64 *ctx) { struct devinfo d = {}; <fentry_dev(&d, skb from ctx[i], dev from ctx[j])>;
 *                            return handle_dev(N, ENTRY, skb, &d, 0, 0, stack_addr(ctx)); }
 *   int fexit_N(u64 *ctx)  { return handle(N, RETURN, 0, 0, <ctx[nargs] or 0>, 0, stack_addr(ctx)); }
 * (an skb behind a struct sk_buff ** is read with the helper: entry_dev)
 */
