#!/bin/bash
# aodv2 VM scenario: faults and security on a real systemd host (issue 7). Run from the host
# after `make deb` (or `make vm-faults`):
#     python3 tests/vm/run.py --share /tmp/vmshare-faults --script tests/vm/scenarios/faults.sh \
#         --copy dist/aodv2_0.5.0-1_all.deb --timeout 1200
# Installs the .deb (lib.sh vm_install_deb), writes a quiet config (only SIGUSR1 captures),
# `systemctl enable --now aodv2`, then tests/vm/guest/faults_run.py:
#   1 security: user aodtest cannot read /var/log/aodv2 or a bundle, open the pinned ring
#     (bpf or open), signal the core, reach /run/aodv2/control.sock, or run `aodv2 status|collect`
#   2 a quick action hangs: smbd SIGSTOPped under the mount, smbinfo killed at
#     capture.action_timeout_sec (5 s after a reload), the rest of the bundle written
#  2b the server stopped (connection closed, cifs reconnecting): smbinfo fails or is killed,
#     the rest of the bundle written, the mount works again once smbd is back
#   3 disk full / read-only: /var/log/aodv2 on a 4 MiB ext4 loop -> capture_failed with the
#     path and ENOSPC/EROFS, the core never restarts, captures succeed again once fixed
#   4 core restart: SIGSTOP the core; the watchdog restarts it and aodv2-tracer@smb keeps its
#     MainPID; `systemctl stop aodv2` stops both, `systemctl start aodv2` starts both (faults_harden.py)
#   5 hostile output_dir (owned by aodtest, or under a parent aodtest owns): exit 78, no loop
#   6 a FIFO at anomalies.jsonl: the capture completes, status answers, SIGTERM obeyed
# Results: /share/faults-report.json ({part: {"pass", "seconds", times, "detail": {"checks", ...}}},
# printed at the end), /share/results.txt, /share/logs/; exit 0 iff every check passed.
set -u
. /share/vmlib/lib.sh
rm -f "$VM_RESULTS" /share/faults-report.json
T0=$(vm_now)
DEB=$(ls /share/aodv2_*_all.deb 2>/dev/null | head -1)
vm_check "a .deb was copied into the share" test -n "$DEB"
vm_fact deb "$(basename "${DEB:-none}")"
vm_fact kernel "$(uname -r)"
active() { [ "$(systemctl is-active "$1" 2>/dev/null)" = active ]; }
journal_has() { journalctl -u "$1" -b --no-pager -o cat 2>/dev/null | grep -q "$2"; }

# An SMB client first (samba on 127.0.0.1, the CIFS mount): cifs is loaded before the tracer starts.
vm_check "samba up" vm_samba_start
vm_check "cifs mounted" vm_cifs_mount
vm_check "cifs tracepoints" vm_tracepoint_wait smb3_cmd_done 30

# Install without starting (policy-rc.d), write the quiet test config, then the user's command.
t=$(vm_now)
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
vm_check "install the .deb" vm_install_deb "${DEB:-/share/missing.deb}"
rm -f /usr/sbin/policy-rc.d
vm_check "quiet test config written" python3 "$VM_LIB_DIR/faults_run.py" --write-config
vm_check "aodv2 check-config of the test config" aodv2 check-config /etc/aodv2/config.yaml
vm_check "systemctl enable --now aodv2" systemctl enable --now aodv2
vm_check "aodv2.service active" vm_wait 120 active aodv2.service
vm_check "journal: AOD core ready" vm_wait 60 journal_has aodv2.service "AOD core ready"
vm_fact install_to_ready_s "$(vm_since "$t")"

python3 -u "$VM_LIB_DIR/faults_run.py" --report /share/faults-report.json --mount "$SMB_MNT" ${FAULTS_ARGS:-}
RC=$?
vm_report /share/faults-report.json faults "$RC" "faults parts (faults_run.py)"
systemctl status --no-pager aodv2.service 2>&1 | sed -n '1,12p'
vm_cifs_umount 2>/dev/null
vm_collect_logs
vm_fact scenario_s "$(vm_since "$T0")"
vm_summary
