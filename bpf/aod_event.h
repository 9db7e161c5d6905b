/* aod_event.h - the one event record shared by every aodv2 tracer and the core.
 *
 * Fixed size, little-endian, versioned. Mirrored by aod/record.py:EVENT_DTYPE;
 * tests/test_record.py parses this header and checks the two agree.
 * Bump AOD_EVENT_VERSION on any layout change.
 */
#ifndef AOD_EVENT_H
#define AOD_EVENT_H

#define AOD_EVENT_VERSION 1
#define AOD_COMM_LEN 16

/* kind */
#define AOD_KIND_COMPLETION 1
#define AOD_KIND_ERROR 2
#define AOD_KIND_RECONNECT 3

/* tracer_id */
#define AOD_TRACER_SMB 1
#define AOD_TRACER_SYNTHETIC 2
#define AOD_TRACER_FILE 3

/* per-command latency statistics (pinned per-CPU array, key = command slot) */
#define AOD_CMD_SLOTS 32
#define AOD_HIST_BUCKETS 32 /* log2(latency in microseconds) */
/* Layout version of struct aod_cmd_stats. Pins outlive the package, so a pinned
 * map whose layout changes gets a new pin name: `cmd_stats` (v1), `cmd_stats_v2`
 * (aod/record.py pin_name). The core reads the previous version for one release. */
#define AOD_CMD_STATS_VERSION 2
#define AOD_IGNORED_MAX 256 /* entries of the pinned `ignored_status` hash */

struct aod_event {
	__u16 version;     /* AOD_EVENT_VERSION */
	__u16 size;        /* sizeof(struct aod_event) */
	__u8 kind;         /* AOD_KIND_* */
	__u8 tracer_id;    /* AOD_TRACER_* */
	__u16 command;     /* SMB2 command id */
	__u64 ts_ns;       /* completion time, CLOCK_MONOTONIC */
	__u64 latency_ns;  /* enter -> done/err; 0 if unknown */
	__u64 session_id;
	__u64 mid;
	__u32 tree_id;
	__u32 nt_status;   /* 0 on success */
	__s32 err;         /* positive errno, 0 on success */
	__u32 pid;         /* issuing task (tgid), captured at enter */
	char comm[AOD_COMM_LEN]; /* issuing task, captured at enter */
};

struct aod_cmd_stats {
	__u64 hist[AOD_HIST_BUCKETS]; /* completions by log2(latency_us) */
	__u64 latency_sum_ns;
	__u64 errors;
	__u64 ignored;     /* completions whose NT status is in the ignored_status map */
};

/* layout 1 (aodv2 0.1), pinned as `cmd_stats`: read by the core for one release */
struct aod_cmd_stats_v1 {
	__u64 hist[AOD_HIST_BUCKETS];
	__u64 latency_sum_ns;
	__u64 errors;
};

#endif /* AOD_EVENT_H */
