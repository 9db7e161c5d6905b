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
#define AOD_KIND_HUNG 4     /* the aging scan found a request in flight past the hung threshold (once) */
#define AOD_KIND_HEALTH 5   /* a cifs health tracepoint; `command` holds an AOD_HEALTH_* code */

/* `command` of a record that is no SMB command (smb3_reconnect) */
#define AOD_CMD_NONE 0xffff

/* AOD_KIND_HEALTH codes (aod/record.py HEALTH_*); session_id = conn_id for 1-5 */
#define AOD_HEALTH_CREDIT_TIMEOUT 1
#define AOD_HEALTH_INSUFFICIENT_CREDITS 2
#define AOD_HEALTH_RECONNECT_INVALID_CREDITS 3
#define AOD_HEALTH_CONNECT_ERR 4
#define AOD_HEALTH_CONNECT_DONE 5
#define AOD_HEALTH_KEY_EXPIRED 6
#define AOD_HEALTH_KERBEROS_AUTH 7 /* failures only */
#define AOD_HEALTH_SLOW_RSP 8
/* the nfs tracer's transport events (sunrpc); session_id = client_id for 9 */
#define AOD_HEALTH_RPC_RETRANSMIT 9   /* latency_ns holds the transmissions so far */
#define AOD_HEALTH_XPRT_TIMEOUT 10    /* err = the status */
#define AOD_HEALTH_XPRT_DISCONNECT 11
#define AOD_HEALTH_XPRT_CONNECT 12

/* tracer_id */
#define AOD_TRACER_SMB 1
#define AOD_TRACER_SYNTHETIC 2
#define AOD_TRACER_FILE 3
#define AOD_TRACER_NFS 4

/* per-command latency statistics (pinned per-CPU array, key = command slot) */
#define AOD_CMD_SLOTS 32
#define AOD_HIST_BUCKETS 32 /* log2(latency in microseconds) */
/* Layout version of struct aod_cmd_stats. Pins outlive the package, so a pinned
 * map whose layout changes gets a new pin name: `cmd_stats` (v1), `cmd_stats_v2`
 * (aod/record.py pin_name). The core reads the previous version for one release. */
#define AOD_CMD_STATS_VERSION 2
#define AOD_IGNORED_MAX 256 /* entries of the pinned `ignored_status` hash */
#define AOD_HUNG_MAX 4096   /* entries of the pinned `hung_v1` hash */
#define AOD_SERVERS_MAX 1024 /* entries of the pinned `servers_v1` hash */
#define AOD_TREES_MAX 4096  /* entries of the pinned `trees_v1` hash */
#define AOD_HOST_LEN 64     /* servers_v1 value: hostname, NUL-terminated */
#define AOD_UNC_LEN 128     /* trees_v1 value: "\\\\server\\share", NUL-terminated */

/* the nfs tracer (bpf/nfs.bpf.c): `command` is an NFS procedure code (0x0300 | v3 procedure,
 * 0x0400 | v4 client procedure: aod/nfsproc.py), its statistics a map of its own */
#define AOD_NFS_SLOTS 128     /* nfs_stats_v1 entries: v3 codes in 0-31, v4 in 32-127 */
#define AOD_NFS_PROCS_MAX 256 /* procedure names the front loads */
#define AOD_NFS_NAME_LEN 28
struct aod_nfs_proc {
	__u32 version;
	char name[AOD_NFS_NAME_LEN]; /* sunrpc's procname, NUL-padded */
};

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

/* Pinned maps of the smb tracer read by other processes (aod/record.py mirrors them; versioned
 * pin names in aod/pins.py). inflight_v1 (lru_hash) and hung_v1 (hash): aod_key -> aod_start. */
struct aod_key {
	__u64 conn; /* struct TCP_Server_Info * of the connection, 0 if unknown */
	__u64 sesid;
	__u64 mid;
	__u16 cmd;
	__u16 pad;
	__u32 pad2;
};

struct aod_start {
	__u64 ts;  /* enter time, CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u32 pid; /* issuing task (tgid) */
	__u32 tid; /* the request's tree id */
	char comm[AOD_COMM_LEN];
};

/* trees_v1 key (value: char[AOD_UNC_LEN]); servers_v1 is u64 conn_id -> char[AOD_HOST_LEN] */
struct aod_tree_key {
	__u64 sesid;
	__u32 tid;
	__u32 pad;
};

/* emit_cfg_v1 (array, 1 entry): which completions reach the ring; the tracer writes it at
 * attach and on reload (no rebuild) */
struct aod_emit_cfg {
	__u64 emit_min_ns;
	__u32 cmd_mask; /* bit = command slot whose completions may be emitted */
	__u32 pad;
};

#endif /* AOD_EVENT_H */
