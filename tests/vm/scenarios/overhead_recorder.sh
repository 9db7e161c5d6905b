#!/bin/bash
# aodv2 VM scenario: bench figure 6r, the trace recorder's cost on SMB throughput with the smb
# tracer attached.  A benchmark, not a test of CI.  Run from the host (`make vm-overhead-recorder`):
#     python3 tests/vm/run.py --share dist/vm/overhead-recorder \
#         --script tests/vm/scenarios/overhead_recorder.sh --copy aod --copy bpf --timeout 2700
# The same set-up as overhead.sh (figure 6: share on RAM-backed ext4, rounds on one vCPU, the
# tracer from the tree loaded once through aod.tracer.run), but the tracer stays attached in
# every round and guest/overhead_run.py --compare recorder alternates the trace recorder's
# tracefs instance (aod/recordtrace.py, default TraceRecorderConfig: the cifs events of
# DEFAULT_TRACE_EVENTS, 1024 KiB/CPU overwrite ring, trace_clock boot) between removed and
# applied, ABBA order, and checks per round that the instance recorded cifs entries in "on"
# rounds and did not exist in "off" rounds.  Writes /share/overhead-recorder.json, which
# bench/fig_tracer.py reads (row 6r).  The number of pairs: /share/pairs if the host wrote it
# (the Makefile's RECORDER_PAIRS), else 240; /share/recorder-off (RECORDER_OFF): "disable" keeps
# the instance in "off" rounds with its events disabled (its buffer then fills and wraps, as in
# production) instead of removing it.  Results: /share/results.txt, /share/logs/.
set -u
. /share/vmlib/lib.sh
export PYTHONPATH=/share
O=/share/overhead-recorder.json
rm -f "$VM_RESULTS" $O
T0=$(vm_now)
vm_fact kernel "$(uname -r)"
vm_fact bcc_version "$(python3 -c 'import bcc; print(bcc.__version__)' 2>&1)"
vm_fact nproc "$(nproc)"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q "$TRACEFS" || mount -t tracefs tracefs "$TRACEFS"
rm -rf /sys/fs/bpf/aodv2
R=/tmp/ovh; mkdir -p $R
PAIRS=240
if [ -s /share/pairs ]; then PAIRS=$(tr -dc 0-9 < /share/pairs); fi
OFF=remove
if [ -s /share/recorder-off ]; then OFF=$(tr -dc a-z < /share/recorder-off); fi
vm_fact recorder_off "$OFF"
SETTLE=0.2
CPU1=/sys/devices/system/cpu/cpu1/online
cat > $R/aod-default.yaml <<EOC
ring:
  path: /sys/fs/bpf/aodv2/events
  size_kb: 256
EOC
py() { python3 -c "import json,sys; d=json.load(open('$1')); sys.exit(0 if ($2) else 1)"; }

vm_bench_mount
vm_fact cifs_events "$(ls "$TRACEFS/events/cifs" | grep -c '^smb3_')"
vm_check "no aodv2 tracefs instance before the run" test ! -d "$TRACEFS/instances/aodv2"

vm_check "second vCPU offline for the rounds" bash -c "echo 0 > $CPU1"
vm_fact cpus_online "$(cat /sys/devices/system/cpu/online)"
python3 "$VM_LIB_DIR/overhead_run.py" --compare recorder --config $R/aod-default.yaml --mount "$SMB_MNT" \
    --out $O --pairs "$PAIRS" --target-s 0.75 --settle-s $SETTLE --recorder-off "$OFF"
RC=$?
echo 1 > $CPU1
vm_check "overhead_run.py --compare recorder complete and consistent (exit $RC)" test "$RC" -eq 0
if [ -s $O ]; then
    for k in files_per_round compile_attach_s recorder workload_seconds_off workload_seconds_on pair_ratios \
             median_pair_loss median_loss_ci95 pair_loss_iqr min_loss p10_loss trace_entries_per_on_round \
             bpf_runs_off elapsed_s problems; do
        vm_fact "$k" "$(vm_json $O $k)"
    done
    vm_check "$PAIRS ABBA pairs measured" py $O "len(d.get('pair_ratios', [])) == $PAIRS"
    vm_check "the tracer ran in every round" \
        py $O "all(r['bpf_runs'] > 0 and r['attachments'] > 0 for r in d['rounds'])"
    vm_check "cifs entries recorded in every recorder-on round" \
        py $O "all((r['trace_written'] or 0) > 0 for r in d['rounds'] if r['state'] == 'on')"
    if [ "$OFF" = remove ]; then
        vm_check "no instance in a recorder-off round" py $O \
            "all(r['trace_written'] is None and r['trace_in_buffer'] is None for r in d['rounds'] if r['state'] == 'off')"
    else
        vm_check "no entry written in a recorder-off round" \
            py $O "all(r['trace_written'] == 0 for r in d['rounds'] if r['state'] == 'off')"
    fi
    vm_check "workload without errors" py $O "all(r['errors'] == 0 for r in d['rounds'])"
else
    vm_check "overhead-recorder.json written" false
fi
vm_check "the aodv2 tracefs instance removed after the run" test ! -d "$TRACEFS/instances/aodv2"

vm_cifs_umount
systemctl stop smbd; umount "$SMB_SHARE_DIR"
vm_fact scenario_s "$(vm_since "$T0")"
vm_collect_logs
vm_summary
