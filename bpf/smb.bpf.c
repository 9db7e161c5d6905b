/* smb.bpf.c - aodv2 SMB tracer (bcc dialect). Loaded by aod/tracer.py.
 *
 * Data flow: cifs tracepoints -> this program -> pinned ring AOD_RING_PIN
 * (struct aod_event records) + pinned per-CPU maps `cmd_stats` and `drops`
 * that the core (aod/counters.py) reads.
 *
 * Compile-time constants come from aod/tracer.py as -D cflags:
 *   AOD_TRACER_ID, AOD_RING_PAGES, AOD_RING_PIN, AOD_DROPS_PIN, AOD_STATS_PIN,
 *   AOD_IGNORED_PIN, AOD_INFLIGHT_PIN, AOD_HUNG_PIN, AOD_SERVERS_PIN, AOD_TREES_PIN,
 *   AOD_EMIT_CFG_PIN (string literals), AOD_INFLIGHT_MAX, AOD_SELF_TGID (the tracer's pid),
 *   AOD_HAVE_<TRACEPOINT> for each cifs tracepoint found in tracefs (AOD_<TP>_HAS_<FIELD>
 *   for its optional fields), AOD_HZ (jiffies per second, for smb3_slow_rsp),
 *   AOD_KPROBE_MODE + AOD_RELEASE_ARG + AOD_RELEASE_OFF for the kprobe fallback.
 * Nothing that the config sets is compiled in: the emit filter is the pinned array
 * `emit_cfg_v1`, written by the tracer at attach and on reload, so a reload never rebuilds
 * or re-attaches, and loses or duplicates nothing.
 *
 * Hung requests (in-flight aging): the tracer's user space scans the pinned in-flight LRU
 * every 100 ms (aod/aging.py). Not a BPF timer: bpf_timer needs 5.15, and iterating an LRU
 * inside BPF needs bpf_for_each_map_elem (5.13); bullseye runs 5.10. A request past the hung
 * threshold is moved into the pinned hash `hung_v1` (an LRU would evict exactly the oldest,
 * hung, entries), and one AOD_KIND_HUNG record is written through the trigger program on
 * syscalls:sys_enter_getppid of the tracer's own process (user space cannot write a BPF
 * ring): it copies the record the scan left in `hung_req`. Completions look in `hung_v1`
 * when the LRU has no entry, so a hung request's completion is still a latency sample.
 *
 * Ignored statuses: smb3_cmd_err fires for every non-zero status, the ordinary
 * ones too (STATUS_NO_MORE_FILES ends every directory listing). The tracer fills the
 * pinned hash `ignored_status` from config ignored_statuses and updates it on reload
 * (no rebuild). An error with such a status is a completion: it ends its in-flight
 * entry, feeds the histogram, counts in cmd_stats.ignored, not in errors, and reaches
 * the ring only when it is slow (a completion record that carries the status).
 *
 * Pairing key (enter -> done/err): {conn, sesid, mid, cmd}. Message ids are
 * allocated per connection (each channel of a multichannel session, each server),
 * so the key must name the connection, and the cifs tracepoints carry nothing
 * that does. With AOD_CONN_PROBES, two kprobes record per thread the connection
 * (struct TCP_Server_Info *) it last worked for: smb2_mid_entry_alloc(shdr,
 * server), which fires smb3_cmd_enter in the issuing task, and the receive
 * path's find_mid(server, buf) in the connection's cifsd thread. smb3_cmd_done
 * and smb3_cmd_err fire either in the issuer (synchronous requests, after it was
 * woken) or in that cifsd (async reads and writes), so both sides see the same
 * connection. A completion in any other thread (a decryption worker) falls back
 * to req_conn, the connection of the latest enter of that {sesid, mid,
 * cmd}. Without the kprobes conn is 0: two connections negotiating at once
 * (mid 0, no session yet) or two channels with the same mid in flight would then
 * share an entry. The tree id is not in the key: a response that follows an interim
 * STATUS_PENDING is async, and its header holds the AsyncId where the TreeId was, so
 * its `tid` is not the request's; the record takes the tree id of the enter (the
 * response's for TREE_CONNECT, which gets its tree id there). SESSION_SETUP gets
 * its SessionId in the response, so sesid is zeroed in the key for it (and for
 * NEGOTIATE, which has none). Entries are overwritten, never
 * refused (BPF_NOEXIST), so stale entries from lost completions can never block
 * a new request, and every in-flight map is an LRU hash, so lost completions cannot leak;
 * hung_v1 (not an LRU: it must keep exactly the oldest) is emptied by completions, by the scan
 * after a reconnect of the entry's connection (`reconn`), or after 10 minutes (aod/aging.py).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "aod_event.h"

#ifndef AOD_TRACER_ID
#define AOD_TRACER_ID AOD_TRACER_SMB
#endif
#ifndef AOD_RING_PAGES
#define AOD_RING_PAGES 1024
#endif
#ifndef AOD_INFLIGHT_MAX
#define AOD_INFLIGHT_MAX 16384
#endif
#ifndef AOD_CONN_THREADS
#define AOD_CONN_THREADS 4096
#endif
#ifndef AOD_RELEASE_OFF
#define AOD_RELEASE_OFF 16 /* offsetof(struct mid_q_entry, refcount) on 64-bit */
#endif

#define SMB2_NEGOTIATE 0
#define SMB2_SESSION_SETUP 1
#define SMB2_TREE_CONNECT 3
#define SMB2_ECHO 13
#define STATUS_NETWORK_SESSION_EXPIRED 0xC000035C

/* pinned ring: the members of bcc's BPF_RINGBUF_OUTPUT, section with a pin path */
/* Declared in each tracer, not in a shared header: bcc rewrites map calls such as
 * events.ringbuf_output() only in the main source file; from a header they compile
 * to an indirect call the verifier rejects ("unknown opcode 8d"). */
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
BPF_TABLE_PINNED("percpu_array", u32, struct aod_cmd_stats, cmd_stats, AOD_CMD_SLOTS, AOD_STATS_PIN);
#ifdef AOD_IGNORED_PIN
BPF_TABLE_PINNED("hash", u32, u32, ignored_status, AOD_IGNORED_MAX, AOD_IGNORED_PIN);
#endif

/* struct aod_key / aod_start / aod_tree_key / aod_emit_cfg: aod_event.h (other processes read
 * them). Pinned (versioned names, aod/pins.py), so a tracer restart keeps the requests in flight. */
BPF_TABLE_PINNED("lru_hash", struct aod_key, struct aod_start, inflight, AOD_INFLIGHT_MAX, AOD_INFLIGHT_PIN);
/* requests the aging scan moved out of the LRU (cannot be evicted here); completions look here too */
BPF_TABLE_PINNED("hash", struct aod_key, struct aod_start, hung, AOD_HUNG_MAX, AOD_HUNG_PIN);
BPF_TABLE_PINNED("array", u32, struct aod_emit_cfg, emit_cfg, 1, AOD_EMIT_CFG_PIN);
/* names for the core (aod/names.py): conn_id -> hostname, {sesid, tid} -> "\\server\share" */
/* LRU hashes: pinned, they outlive tracers; never emptied (nothing says a name is gone), a hash
 * would fill for good after AOD_TREES_MAX tree connects (automount churn, DFS referrals) */
struct aod_host { char name[AOD_HOST_LEN]; };
struct aod_unc { char name[AOD_UNC_LEN]; };
BPF_TABLE_PINNED("lru_hash", u64, struct aod_host, servers, AOD_SERVERS_MAX, AOD_SERVERS_PIN);
BPF_TABLE_PINNED("lru_hash", struct aod_tree_key, struct aod_unc, trees, AOD_TREES_MAX, AOD_TREES_PIN);
/* struct TCP_Server_Info * (the pairing key's conn) -> its conn_id (the tracepoints' counter), learnt
 * at smb3_reconnect; lets the in-flight table (evidence) name the server of an aod_key.conn */
BPF_TABLE_PINNED("lru_hash", u64, u64, conns, AOD_SERVERS_MAX, AOD_CONNS_PIN);
/* connection (aod_key.conn) -> bpf_ktime of its last smb3_reconnect. cifs abandons the mids in
 * flight at a reconnect (the callers retry with new mids): the aging scan drops that connection's
 * entries entered before it, so they are never reported hung nor listed as in flight. */
BPF_TABLE("lru_hash", u64, u64, reconn, 256); /* LRU: a hash would fill after 256 connections ever
						 * reconnected, and later reconnects would be lost */
/* completions whose in-flight entry was missing (evicted, or entered before attach) */
BPF_PERCPU_ARRAY(unpaired, u64, 1);
#ifdef AOD_CONN_PROBES
/* thread (pid_tgid) -> the connection it last issued or received a request for */
BPF_TABLE("lru_hash", u64, u64, ctx_conn, AOD_CONN_THREADS);
/* {0, sesid, mid, cmd} -> connection of its latest enter (for completions elsewhere) */
BPF_TABLE("lru_hash", struct aod_key, u64, req_conn, AOD_INFLIGHT_MAX);

static __always_inline void set_conn(u64 conn)
{
	u64 id = bpf_get_current_pid_tgid();
	ctx_conn.update(&id, &conn);
}

static __always_inline u64 cur_conn(void)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 *c = ctx_conn.lookup(&id);
	return c ? *c : 0;
}
#endif

static __always_inline void make_key(struct aod_key *k, u64 sesid, u16 cmd, u64 mid)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->sesid = (cmd == SMB2_NEGOTIATE || cmd == SMB2_SESSION_SETUP) ? 0 : sesid;
	k->cmd = cmd;
	k->mid = mid;
}

#ifndef AOD_KPROBE_MODE
/* Compounds. cifs sends CREATE + QUERY_INFO / SET_INFO / QUERY_DIRECTORY ... + CLOSE as one
 * compound, entered one after another by the issuing thread. When a part fails, the kernel
 * traces that error but not the parts after it (checked on 6.1: a CREATE failing with
 * STATUS_OBJECT_NAME_NOT_FOUND leaves its QUERY_INFO and CLOSE untraced, while the STATS2 table
 * of /proc/fs/cifs/Stats counts them): left in flight, they would be reported hung. A thread
 * enters a second request before a completion is traced in it only within a compound (its
 * requests are synchronous) or after async reads and writes (those complete in cifsd).
 * open_enter holds each thread's last enter until a completion is traced in that thread;
 * next_part links an enter to the one the same thread entered after it. An error traced in the
 * issuing process ends the parts linked after it: they complete there (histogram, no record). */
#define AOD_COMPOUND_MAX 4 /* parts after the failed one (a cifs compound has at most 5) */
BPF_TABLE("lru_hash", u64, struct aod_key, open_enter, AOD_CONN_THREADS);
BPF_TABLE("lru_hash", struct aod_key, struct aod_key, next_part, AOD_INFLIGHT_MAX);

static __always_inline void link_part(struct aod_key *k)
{
	u64 id = bpf_get_current_pid_tgid();
	struct aod_key *prev = open_enter.lookup(&id);
	if (prev) {
		struct aod_key p = *prev;
		next_part.update(&p, k);
	}
	open_enter.update(&id, k);
}

/* a completion traced in this thread: its next enter starts a new chain */
static __always_inline void close_enter(void)
{
	u64 id = bpf_get_current_pid_tgid();
	open_enter.delete(&id);
}
#endif

static __always_inline void start(struct aod_key *k, u32 tid)
{
	struct aod_start s = {};
	s.ts = bpf_ktime_get_ns();
	s.pid = bpf_get_current_pid_tgid() >> 32;
	s.tid = tid;
	bpf_get_current_comm(&s.comm, sizeof(s.comm));
#ifdef AOD_CONN_PROBES
	k->conn = cur_conn();
	if (k->conn) {
		struct aod_key r = *k;
		r.conn = 0;
		req_conn.update(&r, &k->conn);
	}
#endif
#ifndef AOD_KPROBE_MODE
	link_part(k);
#endif
	inflight.update(k, &s);
}

static __always_inline void count_unpaired(void)
{
	u32 zero = 0;
	u64 *n = unpaired.lookup(&zero);
	if (n)
		(*n)++;
}

/* the entry of key k, in the LRU or else in hung_v1 (the scan moved it there), copied out and
 * removed; 0 if in neither */
static __always_inline int take(struct aod_key *k, struct aod_start *out)
{
	struct aod_start *s = inflight.lookup(k);
	if (s) {
		*out = *s;
		/* 0 only for the one that removed it: the aging scan may have moved it to hung_v1 since
		 * the lookup (it inserts there before it deletes here), then take that copy instead */
		if (inflight.delete(k) == 0)
			return 1;
	}
	s = hung.lookup(k);
	if (s) {
		*out = *s;
		hung.delete(k);
		return 1;
	}
	return 0;
}

/* the in-flight entry of a completion (k: key with conn 0), copied out and removed; 0 if none */
static __always_inline int finish(struct aod_key *k, struct aod_start *out)
{
#ifdef AOD_CONN_PROBES
	struct aod_key r = *k;
	u64 ctx = cur_conn();
	k->conn = ctx;
	int found = take(k, out);
	if (!found) {
		/* completed in a thread without this connection (a worker), or the enter was
		 * stored without one (the alloc probe is not attached): the latest enter's */
		u64 *c = req_conn.lookup(&r);
		u64 alt = (c && *c != ctx) ? *c : 0;
		if (alt != ctx) {
			k->conn = alt;
			found = take(k, out);
		}
	}
	if (!found) {
		count_unpaired(); /* enter not seen (attached mid-flight, or evicted) */
		return 0;
	}
	u64 *c = req_conn.lookup(&r);
	if (c && *c == k->conn)
		req_conn.delete(&r);
#else
	if (!take(k, out)) {
		count_unpaired(); /* enter not seen (attached mid-flight, or evicted) */
		return 0;
	}
#endif
	return 1;
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

#define AOD_COUNT_ERR 1     /* an error */
#define AOD_COUNT_HIST 2    /* a completion with a latency: histogram and sum */
#define AOD_COUNT_IGNORED 4 /* its status is an ignored one */

/* per-command statistics; without AOD_COUNT_HIST only the error or ignored count (kprobe mode) */
static __always_inline void count(u16 cmd, u64 lat, int what)
{
	u32 slot = cmd < AOD_CMD_SLOTS ? cmd : AOD_CMD_SLOTS - 1;
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
	u32 b = us ? bpf_log2l(us) : 0; /* bucket 0 = under 1 us (bpf_log2l(0) is 1) */
	if (b >= AOD_HIST_BUCKETS)
		b = AOD_HIST_BUCKETS - 1;
	/* hide b from the optimiser so the mask survives for the verifier */
	asm volatile("" : "+r"(b));
	b &= AOD_HIST_BUCKETS - 1;
	st->hist[b]++;
	st->latency_sum_ns += lat;
}

static __always_inline void fill(struct aod_event *ev, u8 kind, u16 cmd, u64 sesid, u32 tid, u64 mid)
{
	ev->version = AOD_EVENT_VERSION;
	ev->size = sizeof(*ev);
	ev->kind = kind;
	ev->tracer_id = AOD_TRACER_ID;
	ev->command = cmd;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->session_id = sesid;
	ev->tree_id = tid;
	ev->mid = mid;
}

/* pid/comm: the issuer's from the in-flight entry, else the current task's */
static __always_inline void who(struct aod_event *ev, struct aod_start *s)
{
	if (s) {
		ev->pid = s->pid;
		__builtin_memcpy(ev->comm, s->comm, AOD_COMM_LEN);
	} else {
		ev->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	}
}

/* the emit filter (pinned emit_cfg_v1, written by the tracer; all zero = nothing emitted) */
static __always_inline int emit_wanted(u16 cmd, u64 lat)
{
	u32 slot = cmd < AOD_CMD_SLOTS ? cmd : AOD_CMD_SLOTS - 1;
	u32 zero = 0;
	struct aod_emit_cfg *c = emit_cfg.lookup(&zero);
	if (!c)
		return 0;
	return lat >= c->emit_min_ns && ((c->cmd_mask >> slot) & 1);
}

/* 1 if this NT status is one the config ignores (a completion, not an error) */
static __always_inline int ignored(u32 status)
{
#ifdef AOD_IGNORED_PIN
	return ignored_status.lookup(&status) != 0;
#else
	return 0;
#endif
}

/* a completion (status 0, or an ignored one); s = in-flight entry (already looked up) */
static __always_inline void completed(u16 cmd, u64 sesid, u32 tid, u64 mid, struct aod_start *s, u32 status)
{
	u64 now = bpf_ktime_get_ns();
	u64 lat = now > s->ts ? now - s->ts : 0;
	count(cmd, lat, AOD_COUNT_HIST | (status ? AOD_COUNT_IGNORED : 0));
	if (!emit_wanted(cmd, lat))
		return;
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_COMPLETION, cmd, sesid, s->tid ? s->tid : tid, mid);
	ev.latency_ns = lat;
	ev.nt_status = status;
	who(&ev, s);
	emit(&ev);
}

#ifndef AOD_KPROBE_MODE
/* the compound parts entered after the failed request k (key as found, with its conn): they
 * complete now, with their latency in the histogram and no record (see open_enter) */
static __always_inline void end_parts(struct aod_key *k)
{
	struct aod_key cur = *k;
	for (int i = 0; i < AOD_COMPOUND_MAX; i++) {
		struct aod_key *n = next_part.lookup(&cur);
		if (!n)
			return;
		struct aod_key nk = *n;
		next_part.delete(&cur);
		struct aod_start s = {}; /* zeroed: a newer clang may carry an unset copy in a register the verifier refuses */
		if (take(&nk, &s)) {
			u64 now = bpf_ktime_get_ns();
			count(nk.cmd, now > s.ts ? now - s.ts : 0, AOD_COUNT_HIST);
		}
		cur = nk;
	}
	next_part.delete(&cur);
}

/* ---- tracepoint mode: smb3_cmd_enter -> smb3_cmd_done / smb3_cmd_err ---- */

#ifdef AOD_HAVE_SMB3_CMD_ENTER
TRACEPOINT_PROBE(cifs, smb3_cmd_enter)
{
	/* smb2_echo_callback never reaches map_smb2_to_linux_error: an echo's completion is never
	 * traced, so an echo is not tracked (it would look hung) */
	if (args->cmd == SMB2_ECHO)
		return 0;
	struct aod_key k;
	make_key(&k, args->sesid, args->cmd, args->mid);
	start(&k, args->tid);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_CMD_DONE
TRACEPOINT_PROBE(cifs, smb3_cmd_done)
{
	struct aod_key k;
	u16 cmd = args->cmd;
	u64 sesid = args->sesid, mid = args->mid;
	u32 tid = args->tid;
	make_key(&k, sesid, cmd, mid);
	struct aod_start copy = {};
	close_enter();
	if (finish(&k, &copy)) {
		next_part.delete(&k); /* a part that succeeded: the rest are traced on their own */
		completed(cmd, sesid, tid, mid, &copy, 0);
	}
	return 0;
}
#endif

#ifdef AOD_CONN_PROBES
/* smb2_mid_entry_alloc(const struct smb2_hdr *shdr, struct TCP_Server_Info *server) */
int aod_conn_alloc(struct pt_regs *ctx)
{
	set_conn(PT_REGS_PARM2(ctx));
	return 0;
}

/* find_mid(struct TCP_Server_Info *server, char *buf): cifsd, before it handles a response */
int aod_conn_recv(struct pt_regs *ctx)
{
	set_conn(PT_REGS_PARM1(ctx));
	return 0;
}
#endif
#endif /* !AOD_KPROBE_MODE */

#ifdef AOD_HAVE_SMB3_CMD_ERR
/* an error response; always emitted, unless its status is ignored (then it is a
 * completion). In kprobe mode the latency is 0 (the release probe measures it and
 * counts the completion). */
TRACEPOINT_PROBE(cifs, smb3_cmd_err)
{
	struct aod_event ev = {};
	u16 cmd = args->cmd;
	u64 sesid = args->sesid, mid = args->mid;
	u32 tid = args->tid, status = args->status;
	int rc = args->rc;
#ifndef AOD_KPROBE_MODE
	struct aod_key k;
	struct aod_start copy = {};
	make_key(&k, sesid, cmd, mid);
	close_enter();
	int paired = finish(&k, &copy);
	if (paired && (bpf_get_current_pid_tgid() >> 32) == copy.pid)
		end_parts(&k); /* issuer's own error: the compound's later parts are never traced */
	if (ignored(status)) {
		if (paired)
			completed(cmd, sesid, tid, mid, &copy, status);
		else
			count(cmd, 0, AOD_COUNT_IGNORED);
		return 0;
	}
	fill(&ev, AOD_KIND_ERROR, cmd, sesid, tid, mid);
	if (paired) {
		u64 now = bpf_ktime_get_ns();
		ev.latency_ns = now > copy.ts ? now - copy.ts : 0;
		ev.tree_id = copy.tid ? copy.tid : tid;
		count(cmd, ev.latency_ns, AOD_COUNT_ERR | AOD_COUNT_HIST);
		who(&ev, &copy);
	} else {
		count(cmd, 0, AOD_COUNT_ERR);
		who(&ev, 0);
	}
#else
	if (ignored(status)) {
		count(cmd, 0, AOD_COUNT_IGNORED);
		return 0;
	}
	fill(&ev, AOD_KIND_ERROR, cmd, sesid, tid, mid);
	count(cmd, 0, AOD_COUNT_ERR);
	who(&ev, 0);
#endif
	ev.nt_status = status;
	ev.err = rc < 0 ? -rc : rc;
	emit(&ev);
	return 0;
}
#endif

/* a __data_loc string field of the tracepoint record (low 16 bits: offset from its start) */
#define AOD_LOC_STR(dst, field) \
	bpf_probe_read_kernel_str((dst), sizeof(dst), (char *)args + (args->data_loc_##field & 0xFFFF))

/* remember conn_id -> hostname for the core's names (servers_v1). No map call inside a macro:
 * bcc rewrites map calls only where they are spelled in this file. */
static __always_inline void learn_server(u64 id, struct aod_host *h)
{
	servers.update(&id, h);
}
#define AOD_LEARN_SERVER(id, field)                     \
	do {                                            \
		struct aod_host h_ = {};                \
		AOD_LOC_STR(h_.name, field);            \
		learn_server((id), &h_);                \
	} while (0)

#ifdef AOD_HAVE_SMB3_RECONNECT
/* the connection is being re-established; no session or tree in this event. session_id = the
 * connection's conn_id where the event has it (not the pairing key's pointer: see conns) */
TRACEPOINT_PROBE(cifs, smb3_reconnect)
{
	struct aod_event ev = {};
	u64 conn_id = 0;
#ifdef AOD_SMB3_RECONNECT_HAS_CONN_ID
	conn_id = args->conn_id;
#ifdef AOD_SMB3_RECONNECT_HAS_HOSTNAME
	AOD_LEARN_SERVER(conn_id, hostname);
#endif
#endif
#ifdef AOD_CONN_PROBES
	/* cifs_reconnect runs in the connection's cifsd (its find_mid probe named the connection) or
	 * in an issuer right after its smb2_mid_entry_alloc (a failed send): both name this server */
	u64 ptr = cur_conn();
	if (ptr) {
		u64 now = bpf_ktime_get_ns();
		reconn.update(&ptr, &now);
#ifdef AOD_SMB3_RECONNECT_HAS_CONN_ID
		conns.update(&ptr, &conn_id);
#endif
	}
#endif
	fill(&ev, AOD_KIND_RECONNECT, AOD_CMD_NONE, conn_id, 0, args->currmid);
	who(&ev, 0);
	emit(&ev);
	return 0;
}
#endif

/* ---- health tracepoints: one AOD_KIND_HEALTH record each; `command` = AOD_HEALTH_* ---- */
static __always_inline void health(u16 code, u64 id, u64 mid, int rc, u64 lat)
{
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_HEALTH, code, id, 0, mid);
	ev.err = rc < 0 ? -rc : rc;
	ev.latency_ns = lat;
	who(&ev, 0);
	emit(&ev);
}

/* credit class: currmid, conn_id, hostname, credits, credits_to_add, in_flight. Spelled out (no
 * macro around TRACEPOINT_PROBE: bcc generates each probe's args struct at its spelling). */
#ifdef AOD_HAVE_SMB3_CREDIT_TIMEOUT
TRACEPOINT_PROBE(cifs, smb3_credit_timeout)
{
	AOD_LEARN_SERVER(args->conn_id, hostname);
	health(AOD_HEALTH_CREDIT_TIMEOUT, args->conn_id, args->currmid, 0, 0);
	return 0;
}
#endif
#ifdef AOD_HAVE_SMB3_INSUFFICIENT_CREDITS
TRACEPOINT_PROBE(cifs, smb3_insufficient_credits)
{
	AOD_LEARN_SERVER(args->conn_id, hostname);
	health(AOD_HEALTH_INSUFFICIENT_CREDITS, args->conn_id, args->currmid, 0, 0);
	return 0;
}
#endif
#ifdef AOD_HAVE_SMB3_RECONNECT_WITH_INVALID_CREDITS
TRACEPOINT_PROBE(cifs, smb3_reconnect_with_invalid_credits)
{
	AOD_LEARN_SERVER(args->conn_id, hostname);
	health(AOD_HEALTH_RECONNECT_INVALID_CREDITS, args->conn_id, args->currmid, 0, 0);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_CONNECT_ERR
/* hostname, conn_id, dst_addr, rc (5.16+) */
TRACEPOINT_PROBE(cifs, smb3_connect_err)
{
	AOD_LEARN_SERVER(args->conn_id, hostname);
	health(AOD_HEALTH_CONNECT_ERR, args->conn_id, 0, args->rc, 0);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_CONNECT_DONE
TRACEPOINT_PROBE(cifs, smb3_connect_done)
{
	AOD_LEARN_SERVER(args->conn_id, hostname);
	health(AOD_HEALTH_CONNECT_DONE, args->conn_id, 0, 0, 0);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_KEY_EXPIRED
/* hostname, username, conn_id, dst_addr, rc: no session id (session_id 0) */
TRACEPOINT_PROBE(cifs, smb3_key_expired)
{
	AOD_LEARN_SERVER(args->conn_id, hostname);
	health(AOD_HEALTH_KEY_EXPIRED, 0, 0, args->rc, 0);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_KERBEROS_AUTH
/* pid, uid, cruid, host, user, addr, sec, upcall_target, rc: failures only */
TRACEPOINT_PROBE(cifs, smb3_kerberos_auth)
{
	if (args->rc == 0)
		return 0;
	health(AOD_HEALTH_KERBEROS_AUTH, 0, 0, args->rc, 0);
	return 0;
}
#endif

#ifndef AOD_HZ
#ifdef CONFIG_HZ
#define AOD_HZ CONFIG_HZ
#else
#define AOD_HZ 0
#endif
#endif

#ifdef AOD_HAVE_SMB3_SLOW_RSP
/* cmd, mid, pid, when_sent, when_received (jiffies); fires only with CONFIG_CIFS_STATS2 */
TRACEPOINT_PROBE(cifs, smb3_slow_rsp)
{
	struct aod_event ev = {};
	u64 sent = args->when_sent, recv = args->when_received;
	fill(&ev, AOD_KIND_HEALTH, AOD_HEALTH_SLOW_RSP, 0, 0, args->mid);
	ev.latency_ns = (AOD_HZ && recv > sent) ? (recv - sent) * (1000000000ULL / (AOD_HZ ? AOD_HZ : 1)) : 0;
	who(&ev, 0);
	ev.pid = args->pid;
	emit(&ev);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_TCON
/* xid, tid, sesid, name (UNC), rc: a tree connect; fills trees_v1, emits nothing */
TRACEPOINT_PROBE(cifs, smb3_tcon)
{
	if (args->rc != 0)
		return 0;
	struct aod_tree_key k = {};
	struct aod_unc u = {};
	k.sesid = args->sesid;
	k.tid = args->tid;
	AOD_LOC_STR(u.name, name);
	trees.update(&k, &u);
	return 0;
}
#endif

#ifdef AOD_SELF_TGID
/* ---- hung records from the aging scan (aod/aging.py): user space cannot write a BPF ring, so
 * it leaves the record in hung_req and calls getppid(); this copies it to the ring once ---- */
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
	r->kind = 0; /* consumed: another getppid() emits nothing */
	ev.version = AOD_EVENT_VERSION;
	ev.size = sizeof(ev);
	ev.tracer_id = AOD_TRACER_ID;
	emit(&ev);
	return 0;
}
#endif

#ifdef AOD_HAVE_SMB3_SES_EXPIRED
/* the server said the session expired (STATUS_NETWORK_SESSION_EXPIRED) */
TRACEPOINT_PROBE(cifs, smb3_ses_expired)
{
	struct aod_event ev = {};
	fill(&ev, AOD_KIND_RECONNECT, args->cmd, args->sesid, args->tid, args->mid);
	ev.nt_status = STATUS_NETWORK_SESSION_EXPIRED;
	who(&ev, 0);
	emit(&ev);
	return 0;
}
#endif

#ifdef AOD_KPROBE_MODE
/* ---- kprobe fallback for kernels without smb3_cmd_enter ----
 * smb2_mid_entry_alloc(const struct smb2_hdr *shdr, server): read the key from
 * the wire header (stable layout), then key the in-flight entry by the returned
 * mid_q_entry pointer; the release function ends it. No NT status here: errors
 * come from smb3_cmd_err when present. Latency ends at mid release, slightly
 * after the response was processed. */
struct aod_kstart {
	struct aod_start s;
	struct aod_key k;
};
BPF_TABLE("lru_hash", u64, struct aod_key, alloc_args, 4096); /* a missed kretprobe cannot leak */
BPF_TABLE("lru_hash", u64, struct aod_kstart, inflight_ptr, AOD_INFLIGHT_MAX);

/* smb2_hdr wire offsets */
#define SHDR_COMMAND 12
#define SHDR_MESSAGE_ID 24
#define SHDR_TREE_ID 36
#define SHDR_SESSION_ID 40

int aod_alloc_enter(struct pt_regs *ctx)
{
	const char *shdr = (const char *)PT_REGS_PARM1(ctx);
	u16 cmd = 0;
	u32 tid = 0;
	u64 mid = 0, sesid = 0;
	bpf_probe_read(&cmd, sizeof(cmd), shdr + SHDR_COMMAND);
	bpf_probe_read(&mid, sizeof(mid), shdr + SHDR_MESSAGE_ID);
	bpf_probe_read(&tid, sizeof(tid), shdr + SHDR_TREE_ID);
	bpf_probe_read(&sesid, sizeof(sesid), shdr + SHDR_SESSION_ID);
	struct aod_key k;
	make_key(&k, sesid, cmd, mid);
	k.sesid = sesid; /* no response header to match: keep the real value */
	k.pad2 = tid; /* carried to the completion record (this key is only stored, never matched) */
	u64 id = bpf_get_current_pid_tgid();
	alloc_args.update(&id, &k);
	return 0;
}

int aod_alloc_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct aod_key *k = alloc_args.lookup(&id);
	if (!k)
		return 0;
	u64 ptr = PT_REGS_RC(ctx);
	if (ptr) {
		struct aod_kstart ks = {};
		ks.k = *k;
		ks.s.ts = bpf_ktime_get_ns();
		ks.s.pid = id >> 32;
		ks.s.tid = k->pad2;
		bpf_get_current_comm(&ks.s.comm, sizeof(ks.s.comm));
		inflight_ptr.update(&ptr, &ks);
	}
	alloc_args.delete(&id);
	return 0;
}

int aod_release(struct pt_regs *ctx)
{
#if AOD_RELEASE_ARG == 1
	u64 ptr = PT_REGS_PARM2(ctx);
#else
	u64 ptr = PT_REGS_PARM1(ctx);
#endif
	ptr -= AOD_RELEASE_OFF;
	struct aod_kstart *ks = inflight_ptr.lookup(&ptr);
	if (!ks)
		return 0;
	struct aod_kstart copy = *ks;
	inflight_ptr.delete(&ptr);
	completed(copy.k.cmd, copy.k.sesid, copy.s.tid, copy.k.mid, &copy.s, 0);
	return 0;
}
#endif /* AOD_KPROBE_MODE */
