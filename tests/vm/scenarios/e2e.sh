#!/bin/bash
# aodv2 VM scenario: end to end on a real systemd host (issue 5). Run from the host after `make deb`:
#     python3 tests/vm/run.py --share /tmp/vmshare-e2e --script tests/vm/scenarios/e2e.sh \
#         --copy dist/aodv2_0.5.0-1_all.deb --timeout 2100
# Installs the .deb, then (tests/vm/guest/e2e_run.py): 1 install+enable, 2 quiet baseline (with
# one sequential process), 3 latency (and a second slowdown refused in the cooldown), 3b operator
# tools, 3c a low-rate slowdown, 4 errors, 4b low-rate errors, 4c ignored statuses,
# 5 emergency, 6 tracer killed, 7 core hung (watchdog), 8 reload (valid and invalid),
# 11 a real hang (smbd frozen), 12 health events, 13 reloads under traffic counted exactly
# (e2e_hang.py), 14-15 flight recorders (e2e_recorder.py), 16 NFS: both protocols at once, an NFS
# hang and an NFS error (e2e_nfs.py), 9 retention budget, 10 purge. Every scenario asserts.
# Results: /share/e2e-report.json ({scenario: {"pass", "detail", "seconds", measured times}},
# printed at the end), /share/results.txt, /share/logs/; exit 0 iff every scenario passed.
# A failed scenario prints the aodv2 journal since it began and `systemctl status` of every
# aodv2 unit, and keeps their tails in the report (tests/vm/e2e_summary.py prints them in CI).
# E2E_ARGS="--only N,N" runs fewer scenarios; the others are reported as skipped (a failure).
set -u
. /share/vmlib/lib.sh
rm -f "$VM_RESULTS" /share/e2e-report.json
T0=$(vm_now)
vm_one_deb
vm_fact kernel "$(uname -r)"

# An SMB client first: samba on 127.0.0.1 and the CIFS mount (this loads cifs, so the tracer
# attaches as soon as it starts instead of waiting, "activating", for the module).
vm_check "samba up" vm_samba_start
vm_check "cifs mounted" vm_cifs_mount
vm_check "cifs tracepoints" vm_tracepoint_wait smb3_cmd_done 30
vm_check "root-only file is denied through the mount" vm_access_denied

python3 -u "$VM_LIB_DIR/e2e_run.py" --deb "$DEB" --report /share/e2e-report.json \
    --mount "$SMB_MNT" ${E2E_ARGS:-}
RC=$?
vm_report /share/e2e-report.json e2e "$RC" "e2e scenarios (e2e_run.py)"
vm_cifs_umount 2>/dev/null
vm_collect_logs
vm_fact scenario_s "$(vm_since "$T0")"
vm_summary
