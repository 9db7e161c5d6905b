/* synthetic.bpf.c - test-only aodv2 tracer (bcc dialect). Loaded by aod/tracer.py.
 *
 * Data flow: syscalls:sys_enter_getppid of one process -> one struct aod_event
 * per call into the same pinned ring as the smb tracer (tracer_id
 * AOD_TRACER_SYNTHETIC). Lets tests drive the real kernel ring, the drops
 * counter and a second concurrent producer without any SMB traffic.
 *
 * cflags: AOD_TRACER_ID, AOD_RING_PAGES, AOD_RING_PIN, AOD_DROPS_PIN,
 *   AOD_STATS_PIN (unused here, the smb tracer owns cmd_stats),
 *   AOD_SYNTH_PID (tgid to follow; 0 = every process), AOD_SYNTH_KIND,
 *   AOD_SYNTH_CMD, AOD_SYNTH_LATENCY_NS, AOD_SYNTH_STATUS, AOD_SYNTH_ERRNO.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "aod_event.h"

#ifndef AOD_TRACER_ID
#define AOD_TRACER_ID AOD_TRACER_SYNTHETIC
#endif
#ifndef AOD_RING_PAGES
#define AOD_RING_PAGES 1024
#endif
#ifndef AOD_SYNTH_PID
#define AOD_SYNTH_PID 0
#endif
#ifndef AOD_SYNTH_KIND
#define AOD_SYNTH_KIND AOD_KIND_COMPLETION
#endif
#ifndef AOD_SYNTH_CMD
#define AOD_SYNTH_CMD 8
#endif
#ifndef AOD_SYNTH_LATENCY_NS
#define AOD_SYNTH_LATENCY_NS 0ULL
#endif
#ifndef AOD_SYNTH_STATUS
#define AOD_SYNTH_STATUS 0
#endif
#ifndef AOD_SYNTH_ERRNO
#define AOD_SYNTH_ERRNO 0
#endif

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

/* per-CPU sequence number, carried in `mid` so tests can check order and loss */
BPF_PERCPU_ARRAY(seq, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
	u64 id = bpf_get_current_pid_tgid();
	if (AOD_SYNTH_PID && (id >> 32) != AOD_SYNTH_PID)
		return 0;
	u32 zero = 0;
	u64 n = 0;
	u64 *sp = seq.lookup(&zero);
	if (sp) {
		n = ++(*sp);
	}
	struct aod_event ev = {};
	ev.version = AOD_EVENT_VERSION;
	ev.size = sizeof(ev);
	ev.kind = AOD_SYNTH_KIND;
	ev.tracer_id = AOD_TRACER_ID;
	ev.command = AOD_SYNTH_CMD;
	ev.ts_ns = bpf_ktime_get_ns();
	ev.latency_ns = AOD_SYNTH_LATENCY_NS;
	ev.mid = n;
	ev.nt_status = AOD_SYNTH_STATUS;
	ev.err = AOD_SYNTH_ERRNO;
	ev.pid = id >> 32;
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
		u64 *d = drops.lookup(&zero);
		if (d)
			(*d)++;
	}
	return 0;
}
