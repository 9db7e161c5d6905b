#!/bin/bash
# aodv2 VM scenario: the kernel-matrix smoke run, one boot per extra suite (issue 15). From the host:
#     AOD_VM_SUITE=bullseye make vm-matrix      (or trixie; bookworm runs the full suites instead)
# Keeps this kernel's tracing facts (cifs formats, function names, versions) in /share/facts, then
# (tests/vm/guest/matrix_run.py): 1 install + enable the .deb, 2 the tracepoint path, 3 a latency
# anomaly and its bundle, 4 the kprobe path (tracer.mode: kprobe) and a latency anomaly from it,
# 5 purge. Results: /share/matrix-report.json (seconds per scenario), /share/results.txt,
# /share/logs/; exit 0 iff every scenario passed.
set -u
. /share/vmlib/lib.sh
rm -f "$VM_RESULTS" /share/matrix-report.json
T0=$(vm_now)
vm_one_deb
vm_fact kernel "$(uname -r)"
vm_check "samba up" vm_samba_start
vm_check "cifs mounted" vm_cifs_mount
vm_check "cifs tracepoints" vm_tracepoint_wait smb3_cmd_done 30
rm -rf /share/facts
bash "$VM_LIB_DIR/kernel_facts.sh" /share/facts
while IFS= read -r line; do vm_fact "${line%%=*}" "${line#*=}"; done < /share/facts/facts.txt
python3 -u "$VM_LIB_DIR/matrix_run.py" --deb "$DEB" --report /share/matrix-report.json ${MATRIX_ARGS:-}
RC=$?
vm_report /share/matrix-report.json matrix "$RC" "matrix scenarios (matrix_run.py)"
vm_cifs_umount 2>/dev/null
vm_collect_logs
vm_fact scenario_s "$(vm_since "$T0")"
vm_summary
