// SPDX-License-Identifier: GPL-2.0
/*
 * callpath: the per-thread stack of probed frames, and counting along it.
 *
 * Included by bpf/callpath.bpf.c, whose settings (CALLPATH_*) it reads. Built
 * when CALLPATH_STACK: counting (CALLPATH_AGGREGATE) keeps paths, first-seen
 * child order and log2 latency per function from it; filters on devices
 * (netns, ifindex) let a frame without device facts inherit its caller's verdict.
 */
#ifndef CALLPATH_STACK_H
#define CALLPATH_STACK_H

/*
 * Loops are kept as loops (#pragma nounroll; bounded loops: Linux 5.3,
 * kernel/bpf/verifier.c): every probed function has its own copy of this code
 * (fentry/fexit handlers cannot share a body), and unrolled, the counting
 * handlers came to 1,163 and 969 BPF instructions against 448 and 482 as
 * loops. In the lab VM's flood the smaller program kept 0.24 of the no-probe
 * rate against 0.23 (3 rounds, benchmarks/bench_overhead.py).
 */

#if CALLPATH_STACK
/*
 * Index into the per-thread arrays, bounded for the verifier. The mask is done
 * in inline assembly because clang drops "& (CP_DEPTH - 1)" when it can prove
 * the range itself, and the verifier, which cannot, then refuses the access.
 */
static __always_inline u64 slot_of(s64 i)
{
	u64 v = (u64)i;

	asm volatile("%0 &= 15" : "+r"(v));
	return v;
}

struct tstate {
	u32 depth;              /* frames on ids[] */
	u32 over;               /* entries beyond CP_DEPTH, not pushed */
	u32 keep;               /* bit d: frame d passed the filters */
	u32 owner;              /* cpu_state: the thread (thread_key) whose frames these are */
	u32 busy;               /* cpu_state: handlers inside handle() now (see thread_state) */
	u32 pad;
	u64 scratch;            /* as_number() */
	u16 ids[CP_DEPTH];      /* func id + 1 of each open frame, 0 above the top */
	u64 sp[CP_DEPTH];       /* its stack address at entry (see stack_entry) */
#if CALLPATH_AGGREGATE
	u32 path[CP_DEPTH];     /* interned path id of each open frame (see intern_path) */
	u64 t0[CP_DEPTH];       /* entry time, ns */
	u64 seq[CP_DEPTH];      /* first 4 distinct probed children (id + 1), 16 bits each, first lowest */
#endif
};
/* the frames of the thread running on this CPU (see thread_state) */
BPF_PERCPU_ARRAY(cpu_state, struct tstate, 1);
/* the frames of threads switched out while inside probed functions, by thread_key */
BPF_TABLE("lru_hash", u32, struct tstate, tstates, 16384);
/*
 * [0] stacks put into tstates less stacks taken back: never below the entries
 * in it (the LRU may evict without counting down), so 0 means it is empty and
 * a thread coming onto a CPU need not look itself up (see thread_state).
 */
BPF_ARRAY(tstates_n, s64, 1);
BPF_PERCPU_ARRAY(tzero, struct tstate, 1);
#define CP_NO_OWNER 0xffffffffu
#endif

#if CALLPATH_AGGREGATE
/*
 * Paths are interned: path id 0 is the empty path (no frame open); the path of
 * a frame opened by function f while path p is open is the id in
 * path_child[p * CALLPATH_MAX_FUNCS + f], handed out on first use and described
 * by path_info[id] = (p, f + 1). A handler finds its path by one array lookup
 * per entry, instead of hashing the whole stack per return.
 */
#ifndef CP_PATHS
#define CP_PATHS 8192            /* path ids, 0 included */
#endif
#define CP_NO_PATH 0xffffffffu   /* the table was full: not counted */
/*
 * Ids come from one counter by atomic fetch-and-add (BPF_ATOMIC | BPF_FETCH,
 * Linux 5.12: kernel/bpf/verifier.c check_atomic). Before it, each CPU hands out
 * its own ids, cpu + CALLPATH_NCPUS * k (probes/aggread.py reads either way).
 */
#ifndef CP_ATOMIC_FETCH
#define CP_ATOMIC_FETCH (LINUX_VERSION_CODE >= KERNEL_VERSION(5, 12, 0))
#endif
#ifndef CALLPATH_NCPUS
#define CALLPATH_NCPUS 1
#endif
struct pathinfo { u32 parent; u32 func; };       /* func: func id + 1, 0 = id not handed out */
/*
 * Per path, per CPU: calls, summed ns, the first child order seen on this CPU
 * (see count_path), and a window of CP_WINDOW log2 latency buckets starting at
 * bucket lat_base - 1 (0: none yet), from 2 below the first duration seen, so
 * a return updates one value; a duration outside the window goes to hist.
 */
#define CP_WINDOW 8
struct pathval { u64 calls; u64 sum_ns; u64 seq; u64 seq_calls; u64 lat_base; u64 lat[CP_WINDOW]; };
struct orderkey { u32 path; u32 pad; u64 seq; };
BPF_ARRAY(path_child, u32, CP_PATHS * CALLPATH_MAX_FUNCS);
BPF_ARRAY(path_info, struct pathinfo, CP_PATHS);
#if CP_ATOMIC_FETCH
BPF_ARRAY(path_next, u64, 1);                     /* ids handed out so far */
#else
BPF_PERCPU_ARRAY(path_next, u64, 1);              /* ids this CPU handed out so far */
#endif
BPF_PERCPU_ARRAY(path_stats, struct pathval, CP_PATHS);
BPF_PERCPU_HASH(orders, struct orderkey, u64, 65536);
BPF_PERCPU_ARRAY(hist, u64, CALLPATH_MAX_FUNCS * CP_BUCKETS);
/* [0] depth overflow, [1] unmatched returns, [2] calls or orders not counted (path table or orders full),
 * [3] stale frames dropped */
BPF_PERCPU_ARRAY(agg_err, u64, 4);

static __always_inline void count_err(u32 i)
{
	u64 *n = agg_err.lookup(&i);

	if (n)
		*n += 1;
}

static __always_inline void count_hist(u32 i)
{
	u64 *n = hist.lookup(&i);

	if (n)
		*n += 1;
}
#endif

#if CALLPATH_STACK
/* the thread's key: its tid; the idle task (pid 0 on every CPU) gets one per CPU */
static __always_inline u32 thread_key(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();

	return tid ? tid : 0x80000000u | bpf_get_smp_processor_id();
}

/* add d to tstates_n; counted up before an insert, down after a take-back */
static __always_inline void count_saved(s64 d)
{
	u32 zero = 0;
	s64 *n = tstates_n.lookup(&zero);

	if (n)
		__sync_fetch_and_add(n, d);
}

/* whether tstates may hold any stack */
static __always_inline int any_saved(void)
{
	u32 zero = 0;
	s64 *n = tstates_n.lookup(&zero);

	return !n || *n != 0;
}

/* the thread's frames in the hash (created empty), for a thread kept off cpu_state */
static __always_inline struct tstate *hashed_state(u32 key)
{
	u32 zero = 0;
	struct tstate *st = tstates.lookup(&key), *init;

	if (st)
		return st;
	init = tzero.lookup(&zero);
	if (!init)
		return 0;
	count_saved(1);
	tstates.update(&key, init);
	return tstates.lookup(&key);
}

/* move this CPU's frames into the hash under their owner, leaving cpu_state empty */
static __always_inline void spill(struct tstate *st)
{
	u32 owner = st->owner;

	if (owner != CP_NO_OWNER && (st->depth || st->over)) {
		count_saved(1);
		tstates.update(&owner, st);
	}
	st->depth = 0;
	st->over = 0;
	st->keep = 0;
	st->owner = CP_NO_OWNER;
	__builtin_memset(st->ids, 0, sizeof(st->ids));
}

/*
 * A pointer (fentry's ctx) as a plain number: stored into map memory and loaded
 * back, which the verifier types as a scalar (a privileged loader may store
 * pointers into maps: kernel/bpf/verifier.c check_mem_access, allow_ptr_leaks).
 * One store and one load, where bpf_probe_read_kernel() cost a helper call per
 * entry. A number (a kprobe's stack pointer) passes through unchanged.
 */
static __always_inline u64 as_number(struct tstate *st, u64 v)
{
	*(volatile u64 *)&st->scratch = v;
	return *(volatile u64 *)&st->scratch;
}

/*
 * Copy a thread's saved frames, a word at a time in a loop: __builtin_memcpy
 * unrolls into two instructions per 8 bytes, in every handler.
 */
static __always_inline void copy_state(struct tstate *dst, struct tstate *src)
{
#pragma nounroll
	for (int w = 0; w < sizeof(*dst) / 8; w++)
		((u64 *)dst)[w] = ((u64 *)src)[w];
}

/*
 * The per-thread stack of probed frames, where the handlers find it cheaply.
 *
 * The frames of the thread running on a CPU live in that CPU's cpu_state (a
 * per-CPU array: no hashing). A thread can only leave a CPU through the
 * scheduler, so on_sched_switch (raw tracepoint sched_switch) moves frames still
 * open then into the tstates hash under their thread, and the thread's next
 * handler, on whatever CPU it runs, takes them back. Interrupts and softirqs
 * run on the interrupted thread's stack and key, and nest in its frames.
 *
 * A handler preempted inside handle() (fentry programs run preemptible on
 * CONFIG_PREEMPT kernels, pinned to their CPU) leaves cpu_state busy: the
 * switch leaves it alone, and other threads on that CPU meanwhile keep their
 * frames in the hash, as every handler did before cpu_state existed.
 *
 * sp: a stack address of the handler's frame (see stack_entry; fexit: the same
 * trampoline frame as its fentry), 0 when unknown (kretprobe). While frames are
 * open in cpu_state and no handler is inside handle(), they are the running
 * thread's (any switch since moved them aside): a handler on the same stack as
 * the top frame (same THREAD_SIZE-aligned 16 KiB region) is that thread's, and
 * skips reading its thread id. Otherwise, or when sp is unknown, the owner is
 * compared with the thread id.
 */
static __always_inline struct tstate *thread_state(u64 sp)
{
	u32 key, zero = 0, d;
	struct tstate *st = cpu_state.lookup(&zero), *saved;

	if (!st)
		return 0;
	d = st->depth;
	if (sp && d && !st->busy) {
		u64 top = st->sp[slot_of(d - 1)];

		sp = as_number(st, sp);
		if (top && (top >> 14) == (sp >> 14))
			return st;  /* nested on the top frame's stack, usually */
	}
	key = thread_key();
	if (st->owner == key)
		return st;
	if (st->busy)
		return hashed_state(key);
	spill(st);  /* frames a missed switch left here (none, usually) */
	saved = any_saved() ? tstates.lookup(&key) : 0;
	if (saved) {
		copy_state(st, saved);
		tstates.delete(&key);
		count_saved(-1);
		st->busy = 0;
	}
	st->owner = key;
	return st;
}

int on_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
	u32 zero = 0;
	struct tstate *st = cpu_state.lookup(&zero);

	if (st && !st->busy && st->owner != CP_NO_OWNER)
		spill(st);
	return 0;
}

#if CALLPATH_AGGREGATE
/*
 * The id of path parent + function id (see path_child), handed out on first
 * use; CP_NO_PATH when parent is, or when the table is full. Two CPUs may
 * intern the same new path at once: each gets its own id, both described in
 * path_info, the later one stays in path_child; probes/aggread.py merges ids
 * that read back as the same path.
 */
static __always_inline u32 intern_path(u32 parent, u32 id)
{
	u32 idx, zero = 0, *child;
	u64 *next, n;
	struct pathinfo *info;

	if (parent >= CP_PATHS || id >= CALLPATH_MAX_FUNCS)
		return CP_NO_PATH;
	idx = parent * CALLPATH_MAX_FUNCS + id;
	child = path_child.lookup(&idx);
	if (!child)
		return CP_NO_PATH;
	if (*child)
		return *child;  /* the usual case */
	next = path_next.lookup(&zero);
	if (!next)
		return CP_NO_PATH;
#if CP_ATOMIC_FETCH
	n = __sync_fetch_and_add(next, 1) + 1;
#else
	n = 1 + bpf_get_smp_processor_id() + (u64)CALLPATH_NCPUS * *next;
	*next += 1;
#endif
	if (n >= CP_PATHS)
		return CP_NO_PATH;  /* the table is full: counted in agg_err[2] by count_path */
	idx = n;
	info = path_info.lookup(&idx);
	if (!info)
		return CP_NO_PATH;
	info->parent = parent;
	info->func = id + 1;
	*child = idx;
	return idx;
}

/* the path of open frame d's parent: 0 (the empty path) for the bottom frame */
static __always_inline u32 parent_path(struct tstate *st, u32 d)
{
	return d ? st->path[slot_of(d - 1)] : 0;
}

/* a frame of path with child order seq other than its path's first (see count_path) */
static __always_inline void count_order(u32 path, u64 seq)
{
	struct orderkey ok = {.path = path, .seq = seq};
	u64 zero = 0, *n = orders.lookup_or_try_init(&ok, &zero);

	if (n)
		*n += 1;
	else
		count_err(2);
}

/* log2 bucket of a duration in ns: [2^b, 2^(b+1)), 0 also for 0 ns */
static __always_inline u32 bucket_of(u64 ns)
{
	u32 b = ns ? bpf_log2l(ns) : 0;

	return b < CP_BUCKETS ? b : CP_BUCKETS - 1;
}

/*
 * Count a closed frame of function id on path: calls, ns, its log2 latency
 * (timed: an inline site counted at its entry has none), and its first-seen
 * child order seq (first 4 distinct probed children, 16 bits each). Order is
 * only judged among two or more children (analysis/aggregate.py sibling_order),
 * so a frame with fewer counts none. A path's frames mostly repeat one order:
 * the first this CPU saw for the path is counted in place, any other in the
 * orders hash. Latency goes to the path's window of buckets when it falls in it,
 * else to hist by function. Per-CPU array: plain adds, no atomics;
 * probes/aggread.py sums the CPUs.
 */
static __always_inline void count_path(u32 path, u32 id, u64 ns, u64 seq, int timed)
{
	struct pathval *v = path_stats.lookup(&path);
	u32 b = bucket_of(ns), i;

	if (!v) {
		count_err(2);  /* CP_NO_PATH: the path table was full */
		if (timed && id < CALLPATH_MAX_FUNCS)
			count_hist(id * CP_BUCKETS + b);
		return;
	}
	v->calls += 1;
	v->sum_ns += ns;
	if (timed) {
		if (!v->lat_base)
			v->lat_base = (b > CP_WINDOW / 4 ? b - CP_WINDOW / 4 : 0) + 1;
		i = b - (u32)(v->lat_base - 1);  /* below the window: wraps, above it */
		if (i < CP_WINDOW)
			v->lat[i & (CP_WINDOW - 1)] += 1;
		else if (id < CALLPATH_MAX_FUNCS)
			count_hist(id * CP_BUCKETS + b);
	}
	if (!(seq >> 16))
		return;
	if (v->seq == seq) {
		v->seq_calls += 1;  /* the usual case */
	} else if (!v->seq) {
		v->seq = seq;
		v->seq_calls = 1;
	} else {
		count_order(path, seq);
	}
}

/* note child id1 (func id + 1) in the first-seen order of frame d */
static __always_inline void note_child(struct tstate *st, int d, u16 id1)
{
	u64 seq;

	if (d < 0 || d >= CP_DEPTH)
		return;
	seq = st->seq[slot_of(d)];
#pragma nounroll
	for (int s = 0; s < 4; s++) {
		u16 v = (seq >> (16 * s)) & 0xffff;
		if (v == id1)
			return;
		if (!v) {
			st->seq[slot_of(d)] = seq | ((u64)id1 << (16 * s));
			return;
		}
	}
}
#endif /* CALLPATH_AGGREGATE */

/*
 * Push an entry on the thread's stack. Returns whether the frame passed the
 * filters (a frame without device facts inherits its nearest enclosing frame's).
 *
 * sp is a stack address of the new frame: the traced function's stack pointer
 * at entry (kprobe), or the trampoline's argument array (fentry). Every callee
 * of an open frame sits strictly deeper (lower) on the same kernel stack, so an
 * open frame at or below sp on the same stack (same THREAD_SIZE-aligned 16 KiB
 * region: task stack or IRQ stack, x86-64) has returned without its return
 * being seen (a kretprobe miss): it is dropped, uncounted, before the push.
 */
static __always_inline int stack_entry(struct tstate *st, u32 id, int match, int entry_only, u64 sp)
{
	u32 d = st->depth;
	int keep;

	sp = as_number(st, sp);

	if (d > CP_DEPTH)
		d = CP_DEPTH;
	if (sp && !st->over) {
#pragma nounroll
		for (int k = 0; k < CP_DEPTH; k++) {
			u64 top;

			if (!d)
				break;
			top = st->sp[slot_of(d - 1)];
			if (!top || (top >> 14) != (sp >> 14) || top > sp)
				break;  /* the usual case: the top frame encloses this entry */
			st->ids[slot_of(d - 1)] = 0;
			d--;
#if CALLPATH_AGGREGATE
			count_err(3);
#endif
		}
		st->depth = d;
	}
	keep = match >= 0 ? match : (d ? (st->keep >> ((d - 1) & 31)) & 1 : 1);
#if CALLPATH_AGGREGATE
	if (keep) {
		note_child(st, (int)d - 1, id + 1);
		if (entry_only && d < CP_DEPTH)  /* an inline site: a leaf counted at its entry */
			count_path(intern_path(parent_path(st, d), id), id, 0, 0, 0);
	}
#endif
	if (entry_only)
		return keep;
	if (d >= CP_DEPTH) {
		st->over++;
#if CALLPATH_AGGREGATE
		count_err(0);
#endif
		return keep;
	}
	st->ids[slot_of(d)] = id + 1;
	st->sp[slot_of(d)] = sp;
#if CALLPATH_AGGREGATE
	st->path[slot_of(d)] = intern_path(parent_path(st, d), id);
	st->t0[slot_of(d)] = bpf_ktime_get_ns();
	st->seq[slot_of(d)] = 0;
#endif
	if (keep)
		st->keep |= 1u << d;
	else
		st->keep &= ~(1u << d);
	st->depth = d + 1;
	return keep;
}

/* Pop the frame of function id. Returns whether it had passed the filters. */
static __always_inline int stack_return(struct tstate *st, u32 id)
{
	u32 d = st->depth;
	int found = -1, keep;

	if (st->over) {
		st->over--;
		return d ? (st->keep >> ((d - 1) & 31)) & 1 : 1;
	}
	if (d > CP_DEPTH)
		d = CP_DEPTH;
#pragma nounroll
	for (int k = 0; k < CP_DEPTH; k++) {  /* the top frame, usually */
		int i = (int)d - 1 - k;

		if (i < 0)
			break;
		if (st->ids[slot_of(i)] == id + 1) {
			found = i;
			break;
		}
	}
	if (found < 0) {  /* its entry was not seen (probe attached mid-call, or dropped) */
#if CALLPATH_AGGREGATE
		count_err(1);
		return 0;
#else
		return d ? (st->keep >> ((d - 1) & 31)) & 1 : 1;
#endif
	}
	/* frames above the matched one lost their return: dropped, uncounted */
#pragma nounroll
	for (int k = 1; k < CP_DEPTH; k++) {
		if (found + k >= (int)d)
			break;
		st->ids[slot_of(found + k)] = 0;
	}
	keep = (st->keep >> (found & 31)) & 1;
#if CALLPATH_AGGREGATE
	if (keep)
		count_path(st->path[slot_of(found)], id, bpf_ktime_get_ns() - st->t0[slot_of(found)],
			   st->seq[slot_of(found)], 1);
#endif
	st->ids[slot_of(found)] = 0;
	st->depth = found;
	return keep;
}
#endif /* CALLPATH_STACK */

#endif /* CALLPATH_STACK_H */
