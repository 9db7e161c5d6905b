/* nfs.bpf.c - aodv2 NFS client tracer (bcc dialect). Loaded by aod/tracer.py (front: aod/front_nfs.py).
 *
 * Data flow: sunrpc tracepoints -> this program -> the shared pinned ring AOD_RING_PIN (struct
 * aod_event, tracer_id AOD_TRACER_NFS) + pinned maps of its own (names in aod/pins.py NFS_*):
 * per-procedure statistics (struct aod_cmd_stats x AOD_NFS_SLOTS), the in-flight LRU and hung hash
 * (struct aod_key / aod_start, the smb tracer's layouts, so aod/aging.py scans them unchanged), the
 * emit filter and the benign statuses.
 *
 * Which tracepoints, and why (formats checked on 5.10, 6.1 and 6.12; tests/fixtures/kernels):
 *   rpc_task_begin    in the issuer's context (rpc_execute -> rpc_set_active): start time, pid and
 *                     comm. Async RPCs (READ, WRITE, COMMIT from page I/O) then run in rpciod, so
 *                     every later event sees a kworker, never the issuer.
 *   rpc_request       call_start, the first event with the program and procedure names: RPCs of
 *                     other programs (lockd, rpcbind, the in-guest nfsd's callbacks, mountd) are
 *                     dropped here; an "nfs" one gets its procedure code and enters the in-flight LRU.
 *   rpc_task_end      rpc_exit_task, once per call (again after a restart, which rpc_request enters
 *                     in flight again with its first start): out of flight; its status < 0 is an
 *                     error record, unless the status is benign (config nfs.benign_statuses).
 *   rpc_stats_latency right after rpc_task_end, for every call that got a transport slot: xid and
 *                     execute time (what mountstats counts): the completion (histogram; a record when
 *                     the emit filter wants it).
 *   rpc_task_complete the task is released: it leaves `begun` (optional; without it begun entries
 *                     leave by LRU eviction).
 * In flight longer than the hung threshold: the aging scan's hung record.
 *   xprt_retransmit (6.x; 5.10 lacks it), xprt_timer, xprt_disconnect_*, xprt_connect: transport health
 *                     records.
 * rpc_stats_latency alone cannot age requests (it fires at completion only), and it has no issuer.
 *
 * Keys: a task is (client_id, task_id) (the kernel's cl_clid and tk_pid, both counters; tk_pid is 16
 * bits, so a task id comes back after 65536 more RPCs of that client); in flight it is aod_key
 * {conn = sesid = client_id, mid = task_id, cmd = procedure code}. Record fields: command =
 * procedure code (aod/nfsproc.py; it says the version), session_id = client_id, mid = task_id (the
 * same in completion, error and hung records of one call, as the core's hung/emergency dedup needs),
 * tree_id = the xid of a completion (0 otherwise), err = errno or nt_status = NFS4ERR_*.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "aod_event.h"

#ifndef AOD_TRACER_ID
#define AOD_TRACER_ID AOD_TRACER_NFS
#endif
#ifndef AOD_RING_PAGES
#define AOD_RING_PAGES 1024
#endif
#ifndef AOD_INFLIGHT_MAX
#define AOD_INFLIGHT_MAX 16384
#endif
#define NFS4ERR_MIN 10000 /* a v4 status at or past this is an NFS4ERR_*, below it an errno */

struct events_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u64 (*ringbuf_query)(u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" AOD_RING_PIN)))
struct events_table_t events = { .max_entries = AOD_RING_PAGES * PAGE_SIZE };

BPF_TABLE_PINNED("percpu_array", u32, u64, drops, 1, AOD_DROPS_PIN);
BPF_TABLE_PINNED("percpu_array", u32, struct aod_cmd_stats, cmd_stats, AOD_NFS_SLOTS, AOD_STATS_PIN);
BPF_TABLE_PINNED("hash", u32, u32, ignored_status, AOD_IGNORED_MAX, AOD_IGNORED_PIN);
BPF_TABLE_PINNED("lru_hash", struct aod_key, struct aod_start, inflight, AOD_INFLIGHT_MAX, AOD_INFLIGHT_PIN);
BPF_TABLE_PINNED("hash", struct aod_key, struct aod_start, hung, AOD_HUNG_MAX, AOD_HUNG_PIN);
BPF_TABLE_PINNED("array", u32, struct aod_emit_cfg, emit_cfg, 1, AOD_EMIT_CFG_PIN);
/* {version, procedure name} -> code; filled by the front from aod/nfsproc.py at attach */
BPF_HASH(procs, struct aod_nfs_proc, u16, AOD_NFS_PROCS_MAX);
/* every task begun, until it completes; code 0 until rpc_request says it is an NFS call */
struct task_start {
	u64 ts;
	u32 pid;
	u16 code;
	u16 pad16;
	s32 status; /* of the last rpc_task_end */
	u32 hung;   /* the aging scan reported it: a restart goes back into `hung`, not the LRU (no 2nd report) */
	char comm[AOD_COMM_LEN];
};
BPF_TABLE("lru_hash", u64, struct task_start, begun, AOD_INFLIGHT_MAX);
/* the aging scan's tables (aod/tracerlive.py bcc_aging): NFS calls survive a reconnect (they are
 * retransmitted), so nothing is abandoned and `reconn` stays empty */
BPF_TABLE("lru_hash", u64, u64, reconn, 1);
BPF_PERCPU_ARRAY(unpaired, u64, 1);

static __always_inline u64 task_key(u32 client_id, u32 task_id)
{
	return ((u64)client_id << 32) | task_id;
}

static __always_inline void emit(struct aod_event *ev)
{
	if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0) {
		u32 zero = 0;
		u64 *d = drops.lookup(&zero);
		if (d)
			(*d)++;
	}
}

/* statistics slot of a code: v3 in 0-31, v4 in 32-127 (aod/nfsproc.py slot) */
static __always_inline u32 nfs_slot(u16 code)
{
	u32 idx = code & 0xff;
	if ((code >> 8) == 3)
		return idx < 32 ? idx : 31;
	return idx < 95 ? 32 + idx : AOD_NFS_SLOTS - 1;
}

#define AOD_COUNT_ERR 1
#define AOD_COUNT_HIST 2
#define AOD_COUNT_IGNORED 4
static __always_inline void count(u16 code, u64 lat, int what)
{
	u32 slot = nfs_slot(code);
	struct aod_cmd_stats *st = cmd_stats.lookup(&slot);
	if (!st)
		return;
	if (what & AOD_COUNT_ERR)
		st->errors++;
	if (what & AOD_COUNT_IGNORED)
		st->ignored++;
	if (!(what & AOD_COUNT_HIST))
		return;
	u64 us = lat / 1000;
	u32 b = us ? bpf_log2l(us) : 0;
	if (b >= AOD_HIST_BUCKETS)
		b = AOD_HIST_BUCKETS - 1;
	asm volatile("" : "+r"(b));
	b &= AOD_HIST_BUCKETS - 1;
	st->hist[b]++;
	st->latency_sum_ns += lat;
}

static __always_inline void fill(struct aod_event *ev, u8 kind, u16 cmd, u64 client_id, u32 xid, u64 mid,
				 struct task_start *s)
{
	ev->version = AOD_EVENT_VERSION;
	ev->size = sizeof(*ev);
	ev->kind = kind;
	ev->tracer_id = AOD_TRACER_ID;
	ev->command = cmd;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->session_id = client_id;
	ev->tree_id = xid;
	ev->mid = mid;
	if (s) {
		ev->pid = s->pid;
		__builtin_memcpy(ev->comm, s->comm, AOD_COMM_LEN);
	} else {
		ev->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	}
}

/* the emit filter (nfs_emit_cfg_v1; every NFS code is in the last slot of cmd_mask) */
static __always_inline int emit_wanted(u64 lat)
{
	u32 zero = 0;
	struct aod_emit_cfg *c = emit_cfg.lookup(&zero);
	if (!c)
		return 0;
	return lat >= c->emit_min_ns && ((c->cmd_mask >> 31) & 1);
}

#define AOD_LOC_STR(dst, field) \
	bpf_probe_read_kernel_str((dst), sizeof(dst), (char *)args + (args->data_loc_##field & 0xFFFF))

/* "nfs" exactly: the program name of NFS client RPCs (not "nfs4_cb", "lockd", "rpcbind", "mount") */
#define AOD_IS_NFS(field)                                                       \
	({                                                                      \
		char p_[8] = {};                                                \
		AOD_LOC_STR(p_, field);                                         \
		p_[0] == 'n' && p_[1] == 'f' && p_[2] == 's' && p_[3] == 0;     \
	})

static __always_inline u16 lookup_code(struct aod_nfs_proc *k)
{
	u16 *c = procs.lookup(k);
	if (c)
		return *c;
	return k->version == 3 ? 0x03ff : 0x04ff; /* a name aod/nfsproc.py does not list */
}

TRACEPOINT_PROBE(sunrpc, rpc_task_begin)
{
	struct task_start s = {};
	s.ts = bpf_ktime_get_ns();
	s.pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&s.comm, sizeof(s.comm));
	u64 k = task_key(args->client_id, args->task_id);
	begun.update(&k, &s);
	return 0;
}

TRACEPOINT_PROBE(sunrpc, rpc_request)
{
	u64 k = task_key(args->client_id, args->task_id);
	struct task_start *s = begun.lookup(&k);
	if (!s)
		return 0;
	if (!AOD_IS_NFS(progname) || (args->version != 3 && args->version != 4)) {
		begun.delete(&k);
		return 0;
	}
	u16 code = s->code;
	if (!code) { /* a restarted call keeps its code and start */
		struct aod_nfs_proc pk = {};
		pk.version = args->version;
		AOD_LOC_STR(pk.name, procname);
		code = lookup_code(&pk);
		s->code = code;
	}
	struct aod_key key = {};
	key.conn = args->client_id;
	key.sesid = args->client_id; /* the hung record's session_id */
	key.mid = args->task_id;
	key.cmd = code;
	struct aod_start st = {};
	st.ts = s->ts;
	st.pid = s->pid;
	__builtin_memcpy(st.comm, s->comm, AOD_COMM_LEN);
	if (s->hung)
		hung.update(&key, &st);
	else
		inflight.update(&key, &st);
	return 0;
}

TRACEPOINT_PROBE(sunrpc, rpc_task_end)
{
	u64 k = task_key(args->client_id, args->task_id);
	struct task_start *s = begun.lookup(&k);
	if (!s || !s->code)
		return 0;
	struct aod_key key = {};
	key.conn = args->client_id;
	key.sesid = args->client_id;
	key.mid = args->task_id;
	key.cmd = s->code;
	/* out of flight (a restart enters it again, with its first start); the scan may have moved it */
	if (inflight.delete(&key) != 0) {
		if (hung.delete(&key) == 0) {
			s->hung = 1;
		} else {
			u32 zero = 0;
			u64 *n = unpaired.lookup(&zero);
			if (n)
				(*n)++;
		}
	}
	int status = args->status;
	s->status = status;
	if (status >= 0)
		return 0;
	u32 st = -status;
	if (ignored_status.lookup(&st)) {
		s->status = 0; /* benign: its rpc_stats_latency is a completion */
		count(s->code, 0, AOD_COUNT_IGNORED);
		return 0;
	}
	u64 now = bpf_ktime_get_ns();
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_ERROR, s->code, args->client_id, 0, args->task_id, s);
	ev.latency_ns = now > s->ts ? now - s->ts : 0;
	if (st >= NFS4ERR_MIN)
		ev.nt_status = st;
	else
		ev.err = st;
	count(s->code, 0, AOD_COUNT_ERR);
	emit(&ev);
	return 0;
}

TRACEPOINT_PROBE(sunrpc, rpc_stats_latency)
{
	u64 k = task_key(args->client_id, args->task_id);
	struct task_start *s = begun.lookup(&k);
	if (!s || !s->code)
		return 0;
	u64 lat = (u64)args->execute * 1000;
	int failed = s->status < 0;
	count(s->code, lat, AOD_COUNT_HIST);
	if (failed || !emit_wanted(lat))
		return 0;
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_COMPLETION, s->code, args->client_id, args->xid, args->task_id, s);
	ev.latency_ns = lat;
	emit(&ev);
	return 0;
}

#ifdef AOD_HAVE_RPC_TASK_COMPLETE
/* the task is released (without this event begun entries leave by LRU eviction) */
TRACEPOINT_PROBE(sunrpc, rpc_task_complete)
{
	u64 k = task_key(args->client_id, args->task_id);
	begun.delete(&k);
	return 0;
}
#endif

/* ---- transport health: session_id = client_id where the event has one; mid = xid */
#ifdef AOD_HAVE_XPRT_RETRANSMIT
TRACEPOINT_PROBE(sunrpc, xprt_retransmit)
{
	if (!AOD_IS_NFS(progname))
		return 0;
	u64 k = task_key(args->client_id, args->task_id);
	struct task_start *s = begun.lookup(&k);
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_HEALTH, AOD_HEALTH_RPC_RETRANSMIT, args->client_id, args->xid, args->task_id, s);
	ev.latency_ns = (u64)args->ntrans; /* transmissions so far */
	emit(&ev);
	return 0;
}
#endif

#ifdef AOD_HAVE_XPRT_TIMER
TRACEPOINT_PROBE(sunrpc, xprt_timer)
{
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_HEALTH, AOD_HEALTH_XPRT_TIMEOUT, 0, args->xid, 0, 0);
	int st = args->status;
	ev.err = st < 0 ? -st : st;
	emit(&ev);
	return 0;
}
#endif

/* spelled out: bcc generates each probe's args struct where TRACEPOINT_PROBE is spelled */
static __always_inline void xprt_event(u16 code)
{
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_HEALTH, code, 0, 0, 0, 0);
	emit(&ev);
}
#ifdef AOD_HAVE_XPRT_DISCONNECT_AUTO
TRACEPOINT_PROBE(sunrpc, xprt_disconnect_auto)
{
	xprt_event(AOD_HEALTH_XPRT_DISCONNECT);
	return 0;
}
#endif
#ifdef AOD_HAVE_XPRT_DISCONNECT_FORCE
TRACEPOINT_PROBE(sunrpc, xprt_disconnect_force)
{
	xprt_event(AOD_HEALTH_XPRT_DISCONNECT);
	return 0;
}
#endif
#ifdef AOD_HAVE_XPRT_CONNECT
TRACEPOINT_PROBE(sunrpc, xprt_connect)
{
	xprt_event(AOD_HEALTH_XPRT_CONNECT);
	return 0;
}
#endif

/* ---- hung records from the aging scan (aod/aging.py), as in smb.bpf.c */
#ifdef AOD_SELF_TGID
BPF_ARRAY(hung_req, struct aod_event, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
	if ((bpf_get_current_pid_tgid() >> 32) != AOD_SELF_TGID)
		return 0;
	u32 zero = 0;
	struct aod_event *r = hung_req.lookup(&zero);
	if (!r || r->kind != AOD_KIND_HUNG)
		return 0;
	struct aod_event ev = *r;
	r->kind = 0;
	ev.version = AOD_EVENT_VERSION;
	ev.size = sizeof(ev);
	ev.tracer_id = AOD_TRACER_ID;
	emit(&ev);
	return 0;
}
#endif
