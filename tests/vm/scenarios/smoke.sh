#!/bin/bash
# aodv2 VM harness smoke scenario: proves the DESIGN.md "checked on a real kernel"
# facts on this VM.  Run from the host:
#     python3 tests/vm/run.py --share /tmp/vmshare --script tests/vm/scenarios/smoke.sh --copy aod
# Results: /share/results.txt (PASS/FAIL/FACT lines), /share/logs/, exit 0 iff all passed.
set -u
. /share/vmlib/lib.sh
rm -f "$VM_RESULTS"
T0=$(vm_now)
vm_fact boot_uptime_s "$T0"
vm_fact kernel "$(uname -r)"

# --- systemd host
vm_check "systemd is PID 1" test "$(cat /proc/1/comm)" = systemd
vm_check "boot finished (running or degraded)" vm_booted
vm_fact system_state "$(systemctl is-system-running)"
systemctl --failed --no-pager --no-legend
vm_fact systemd_boot_time "$(systemd-analyze time 2>/dev/null | head -1)"
vm_check "bpffs at /sys/fs/bpf" vm_bpffs aodv2
vm_check "tracefs mounted" test -d "$TRACEFS/events"

# --- samba + cifs
t=$(vm_now)
vm_check "samba listening on 127.0.0.1:445" vm_samba_start
vm_fact samba_start_s "$(vm_since "$t")"
vm_check "no cifs tracepoints before modprobe" test ! -d "$TRACEFS/events/cifs"
t=$(vm_now)
vm_check "cifs mount //127.0.0.1/share (3.1.1)" vm_cifs_mount
vm_fact cifs_mount_s "$(vm_since "$t")"
vm_check "cifs mounted" vm_cifs_mounted
vm_check "tracepoint cifs/smb3_cmd_done exists" vm_tracepoint_wait smb3_cmd_done 10
for ev in smb3_cmd_enter smb3_cmd_err smb3_reconnect; do
    vm_check "tracepoint cifs/$ev exists" test -d "$TRACEFS/events/cifs/$ev"
done
vm_fact smb3_cmd_err_format "$(grep -E '^\s+field:.* (status|rc);' "$TRACEFS/events/cifs/smb3_cmd_err/format" | tr -s ' \t' ' ' | tr '\n' '|')"
vm_check "access denied on root-only files" vm_access_denied

# --- bcc probe -> pinned ring -> separate reader process
PIN=/sys/fs/bpf/aodv2/events
rm -f "$PIN"
t=$(vm_now)
vm_check "bcc probe attached (pinned ring created)" vm_probe_start "$PIN" /tmp/probe.ready /tmp/probe1.log
vm_fact bcc_compile_attach_s "$(vm_since "$t")"
cat /tmp/probe1.log
vm_check "ring pinned at $PIN" test -e "$PIN"

rm -f /tmp/stop.reader
python3 "$VM_LIB_DIR/ring_read.py" --pin "$PIN" --until-file /tmp/stop.reader >/tmp/reader1.json 2>&1 &
RPID=$!
sleep 1
vm_workload 30 > /tmp/wl1.json; cat /tmp/wl1.json
touch /tmp/stop.reader; wait "$RPID"; cat /tmp/reader1.json
N1=$(vm_json /tmp/reader1.json records)
vm_fact ring_records_baseline "${N1:-0}"
vm_fact baseline_per_cmd "$(vm_json /tmp/reader1.json per_cmd)"
vm_fact baseline_median_latency_ms "$(vm_json /tmp/reader1.json median_latency_ms)"
vm_fact workload_baseline_s "$(vm_json /tmp/wl1.json seconds)"
vm_check "workload ok" test "$(vm_json /tmp/wl1.json errors)" = 0
vm_check "ring got records during workload" test "${N1:-0}" -gt 0
vm_check "ring map type is RINGBUF (27)" test "$(vm_json /tmp/reader1.json map_type)" = 27
MAPID1=$(vm_json /tmp/reader1.json map_id)

# --- netem delay moves the latency
vm_netem_add 100ms
rm -f /tmp/stop.reader
python3 "$VM_LIB_DIR/ring_read.py" --pin "$PIN" --until-file /tmp/stop.reader >/tmp/reader2.json 2>&1 &
RPID=$!
sleep 1
vm_workload 5 > /tmp/wl2.json; cat /tmp/wl2.json
touch /tmp/stop.reader; wait "$RPID"; cat /tmp/reader2.json
vm_netem_del
MED2=$(vm_json /tmp/reader2.json median_latency_ms)
vm_fact netem100_median_latency_ms "$MED2"
vm_fact netem100_per_cmd "$(vm_json /tmp/reader2.json per_cmd)"
vm_check "netem 100ms: median latency >= 100 ms" python3 -c "import sys; sys.exit(0 if float('${MED2:-0}' or 0) >= 100 else 1)"

# --- the ring survives a tracer restart (pinned)
vm_probe_stop
cat /tmp/probe1.log
vm_check "pin survives probe exit" test -e "$PIN"
vm_check "bcc probe re-attached (pinned ring reused)" vm_probe_start "$PIN" /tmp/probe.ready /tmp/probe2.log
cat /tmp/probe2.log
vm_check "probe reports ring reused" grep -q '"ring": "reused"' /tmp/probe2.log

# --- the project's reader (aod/ring.py), if the repo's aod/ was copied into the share
if [ -f /share/aod/ring.py ]; then
    rm -f /tmp/stop.aod
    python3 "$VM_LIB_DIR/aod_ring_check.py" /share "$PIN" /tmp/stop.aod >/tmp/aod.json 2>&1 &
    APID=$!
    sleep 2
    vm_workload 10 > /tmp/wl3.json
    touch /tmp/stop.aod; wait "$APID"; cat /tmp/aod.json
    vm_fact aod_reader_stats "$(tail -1 /tmp/aod.json)"
    vm_check "aod RingReader.open_pinned drained the kernel ring" \
        python3 -c "import json,sys; d=json.loads(open('/tmp/aod.json').readlines()[-1]); sys.exit(0 if d['foreign']+d['records_read']>0 and d['resyncs']==0 else 1)"
    MAPID2=$(python3 "$VM_LIB_DIR/ring_read.py" --pin "$PIN" --max-seconds 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["map_id"])')
else
    echo "(no /share/aod: skipping aod RingReader check; run.py --copy aod)"
    MAPID2=$(python3 "$VM_LIB_DIR/ring_read.py" --pin "$PIN" --max-seconds 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["map_id"])')
fi
vm_check "same ring map id after restart ($MAPID1 == $MAPID2)" test "$MAPID1" = "$MAPID2"
vm_probe_stop
cat /tmp/probe2.log

vm_cifs_umount
vm_fact scenario_s "$(vm_since "$T0")"
vm_collect_logs
vm_summary
