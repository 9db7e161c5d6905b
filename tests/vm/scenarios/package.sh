#!/bin/bash
# aodv2 VM scenario: the .deb on a real systemd host (Debian 12 guest, no network).
# Run from the host after `make deb`:
#     python3 tests/vm/run.py --share /tmp/vmshare-pkg --script tests/vm/scenarios/package.sh \
#         --copy dist/aodv2_0.5.0-1_all.deb --timeout 900
# Proves: install from the local .deb alone (the guest has no network; runtime deps are in
# the image; apt's --no-download refuses local .deb paths, so plain `apt-get install /path`), postinst enables
# and starts the core and aodv2-tracer@smb, the core reaches READY inside its sandbox,
# `systemd-analyze verify` of the installed units prints nothing, `disable --now` stops both and
# removes both links and `enable --now` brings both back, quick actions still work under the
# hardening (journal, /proc/fs/cifs, smbinfo), reload, upgrade restarts the core, a second
# tracer instance (aodv2-tracer@synthetic) runs next to smb and `aodv2 status` reports it once
# config `tracers` names it, `man aodv2` renders, and purge leaves no unit (not even the link
# of an instance the admin enabled), process, pin or log dir. Last, the last release
# (tests/vm/releases/, --copy tests/vm/releases) installed and detecting, then `apt install` of
# this .deb over it: same ring and counters, the new maps pinned, the evidence socket up,
# detection works.
# Results: /share/results.txt (PASS/FAIL/FACT), /share/logs/; exit 0 iff every check passed.
set -u
. /share/vmlib/lib.sh
rm -f "$VM_RESULTS"
T0=$(vm_now)
DEB=$(ls /share/aodv2_*_all.deb 2>/dev/null | head -1)
vm_check "a .deb was copied into the share" test -n "$DEB"
[ -n "$DEB" ] || { vm_summary; exit 1; }
vm_fact deb "$(basename "$DEB")"

active() { [ "$(systemctl is-active "$1" 2>/dev/null)" = active ]; }
inactive() { [ "$(systemctl is-active "$1" 2>/dev/null)" = inactive ]; }
# journal_since UNIT EPOCH PATTERN: the unit logged PATTERN since EPOCH (date +%s)
journal_since() { journalctl -u "$1" --since "@$2" --no-pager -o cat 2>/dev/null | grep -q "$3"; }
# status_tracers: "name=state ..." of `aodv2 status --json` (sorted)
status_tracers() {
    aodv2 status --json 2>/dev/null | python3 -c 'import json, sys
print(" ".join(f"{k}={v}" for k, v in sorted(json.load(sys.stdin).get("tracers", {}).items())))'
}
status_tracers_are() { [ "$(status_tracers)" = "$1" ]; }
WANTS=/etc/systemd/system/aodv2.service.wants
journal_has() { journalctl -u "$1" -b --no-pager -o cat 2>/dev/null | grep -q "$2"; }
main_pid() { systemctl show -p MainPID --value aodv2.service; }
no_aodv2_procs() { ! pgrep -f '/usr/bin/aodv2 ' >/dev/null; }
# (aodv2-vmtest.service is the harness's own runner, not ours)
OUR_UNITS="/lib/systemd/system/aodv2.service /lib/systemd/system/aodv2-tracer@.service /etc/systemd/system/aodv2.service /etc/systemd/system/aodv2.service.wants /etc/systemd/system/aodv2.service.d /etc/systemd/system/multi-user.target.wants/aodv2.service"
no_units() {
    local f
    for f in $OUR_UNITS; do { [ -e "$f" ] || [ -L "$f" ]; } && return 1; done
    ! systemctl list-unit-files aodv2.service 'aodv2-tracer@*' --no-legend 2>/dev/null | grep -q .
}

# --- a SMB server; the cifs module is loaded only after the install (the tracer waits for it)
vm_check "samba up" vm_samba_start
vm_check "cifs not loaded before the install" test ! -d /sys/module/cifs

# --- install: local file only, no download
t=$(vm_now)
vm_check "apt install /share/aodv2.deb (no network: deps from the image)" \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y "$DEB"
vm_fact install_s "$(vm_since "$t")"
if ! dpkg-query -W -f='${Status}' aodv2 2>/dev/null | grep -q "install ok installed"; then
    vm_collect_logs; vm_summary; exit 1
fi
vm_check "config is a conffile" grep -qx /etc/aodv2/config.yaml /var/lib/dpkg/info/aodv2.conffiles
vm_check "/var/log/aodv2 is 0700 root" test "$(stat -c '%a %U' /var/log/aodv2)" = "700 root"
vm_check "/sys/fs/bpf/aodv2 exists (tmpfiles)" test -d /sys/fs/bpf/aodv2
vm_check "enabled after install" systemctl is-enabled --quiet aodv2.service
vm_check "tracer instance wanted by the core" test -L /etc/systemd/system/aodv2.service.wants/aodv2-tracer@smb.service

# --- the user's command, on a host where cifs is not loaded yet: the tracer is started and
#     READY with STATUS=waiting (no start job left pending, so boot could finish), and attaches
#     once the module is loaded
t=$(vm_now)
systemctl enable --now aodv2; vm_fact enable_now_rc "$?"
vm_check "aodv2-tracer@smb active while cifs is not loaded" vm_wait 120 active aodv2-tracer@smb.service
vm_fact tracer_active_waiting_s "$(vm_since "$t")"
vm_check "tracer STATUS says it waits for cifs" vm_wait 30 sh -c \
    'systemctl show -p StatusText --value aodv2-tracer@smb.service | grep -q "waiting for cifs"'
vm_check "tracer state file says waiting" grep -q '"waiting"' /run/aodv2/tracer-smb.json
vm_check "no aodv2 start job left pending" sh -c '! systemctl list-jobs --no-legend | grep -q aodv2'
vm_fact system_state_while_waiting "$(systemctl is-system-running)"
vm_check "cifs mounted" vm_cifs_mount
vm_check "cifs tracepoints" vm_tracepoint_wait smb3_cmd_done 30
t=$(vm_now)
vm_check "tracer attached after modprobe" vm_wait 300 grep -q '"attached"' /run/aodv2/tracer-smb.json
vm_fact modprobe_to_attached_s "$(vm_since "$t")"
vm_check "aodv2-tracer@smb active (attached)" active aodv2-tracer@smb.service
# inside the unit's sandbox (no /proc/kallsyms) the connection probes still engage and attach
vm_check "tracer under the unit: pairing key names the connection" \
    journal_has aodv2-tracer@smb.service "pairing key names the connection"
vm_check "tracer under the unit: no probe failed to attach" sh -c \
    '! journalctl -u aodv2-tracer@smb.service -b --no-pager -o cat | grep -q "probe not attached"'
vm_check "aodv2.service active" vm_wait 120 active aodv2.service
vm_fact core_active_s "$(vm_since "$t")"
vm_check "journal: AOD core ready" vm_wait 30 journal_has aodv2.service "AOD core ready"
vm_check "pinned ring exists" test -e /sys/fs/bpf/aodv2/events
cat /run/aodv2/tracer-smb.json 2>&1; echo
systemctl status --no-pager aodv2.service aodv2-tracer@smb.service | sed -n '1,40p'
vm_fact core_status "$(systemctl show -p StatusText --value aodv2.service)"
vm_fact tracer_status "$(systemctl show -p StatusText --value aodv2-tracer@smb.service)"
vm_fact security_core "$(systemd-analyze security aodv2.service 2>/dev/null | tail -1)"
vm_fact security_tracer "$(systemd-analyze security aodv2-tracer@smb.service 2>/dev/null | tail -1)"

# --- the installed units: verify exits 0 on warnings, so its output must be empty
verify_out=$(systemd-analyze verify aodv2.service aodv2-tracer@smb.service 2>&1); verify_rc=$?
printf '%s\n' "$verify_out"
vm_check "systemd-analyze verify exits 0 (rc $verify_rc)" test "$verify_rc" = 0
vm_check "systemd-analyze verify prints nothing" test -z "$verify_out"

# --- from a disabled state: disable --now stops the core and (stop-hook) the tracer and removes
#     both links (Also= names the template); enable --now recreates them and starts both
vm_check "systemctl disable --now aodv2" systemctl disable --now aodv2
vm_check "disabled: aodv2.service inactive" vm_wait 60 inactive aodv2.service
vm_check "disabled: aodv2-tracer@smb inactive" vm_wait 60 inactive aodv2-tracer@smb.service
vm_check "disabled: is-enabled says disabled" test "$(systemctl is-enabled aodv2.service 2>/dev/null)" = disabled
vm_check "disabled: no multi-user.target.wants/aodv2.service link" \
    test ! -L /etc/systemd/system/multi-user.target.wants/aodv2.service
vm_check "disabled: no aodv2.service.wants/aodv2-tracer@smb.service link" test ! -L "$WANTS/aodv2-tracer@smb.service"
ls -la "$WANTS" 2>&1
t=$(vm_now)
systemctl enable --now aodv2; vm_fact reenable_now_rc "$?"
vm_check "re-enabled: is-enabled says enabled" systemctl is-enabled --quiet aodv2.service
vm_check "re-enabled: tracer link back" test -L "$WANTS/aodv2-tracer@smb.service"
vm_check "re-enabled: aodv2-tracer@smb active" vm_wait 300 active aodv2-tracer@smb.service
vm_check "re-enabled: aodv2.service active" vm_wait 120 active aodv2.service
vm_fact reenable_active_s "$(vm_since "$t")"
vm_check "re-enabled: tracer state file says attached" vm_wait 300 grep -q '"attached"' /run/aodv2/tracer-smb.json

# --- quick actions inside the sandbox: a manual capture must still read /proc/fs/cifs,
#     the journal and run smbinfo
vm_workload 10 >/dev/null
n0=$(ls /var/log/aodv2/*.tar.zst 2>/dev/null | wc -l)
systemctl kill -s USR1 aodv2.service
vm_check "SIGUSR1 wrote a bundle" vm_wait 120 sh -c "[ \$(ls /var/log/aodv2/*.tar.zst 2>/dev/null | wc -l) -gt $n0 ]"
B=$(ls -t /var/log/aodv2/*.tar.zst 2>/dev/null | head -1)
if [ -n "$B" ]; then
    vm_fact bundle "$B $(stat -c %s "$B") bytes, mode $(stat -c %a "$B")"
    mkdir -p /tmp/b && tar --zstd -xf "$B" -C /tmp/b
    S=$(find /tmp/b -name summary.json | head -1)
    python3 - "$S" <<'PY' | tee /tmp/actions.txt
import json, sys
d = json.load(open(sys.argv[1]))
for a in d.get("actions", []):
    print(a.get("name"), a.get("status"), a.get("bytes"), (a.get("error") or "")[:160])
PY
    for a in journal kernel_log cifs_debug cifs_stats mounts smbinfo; do
        vm_check "action $a ok under the sandbox" grep -q "^$a ok " /tmp/actions.txt
    done
fi

# --- systemd, not Python, restarts: a killed tracer comes back (Restart=on-failure), and a
#     hung core (SIGSTOP: no watchdog pings) is killed by the watchdog and restarted
tpid=$(systemctl show -p MainPID --value aodv2-tracer@smb.service)
cpid=$(main_pid)
t=$(vm_now)
kill -KILL "$tpid"
kill -STOP "$cpid"
tracer_back() { p=$(systemctl show -p MainPID --value aodv2-tracer@smb.service); [ "$p" != 0 ] && [ "$p" != "$tpid" ] && active aodv2-tracer@smb.service; }
core_back() { p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$cpid" ] && active aodv2.service; }
vm_check "killed tracer restarted by systemd" vm_wait 300 tracer_back
vm_fact tracer_restart_s "$(vm_since "$t")"
vm_check "hung core killed by the watchdog and restarted" vm_wait 300 core_back
vm_fact core_watchdog_restart_s "$(vm_since "$t")"
vm_check "journal: watchdog timeout" journal_has aodv2.service "Watchdog timeout"
vm_check "pinned ring survived the restarts" test -e /sys/fs/bpf/aodv2/events

# --- reload and upgrade
systemctl reload aodv2.service
vm_check "reload: config reloaded" vm_wait 30 journal_has aodv2.service "AOD config reloaded"
pid1=$(main_pid)
vm_check "re-install (upgrade path) succeeds" env DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB"
vm_check "core active after upgrade" vm_wait 120 active aodv2.service
pid2=$(main_pid)
vm_check "upgrade restarted the core (pid $pid1 -> $pid2)" test "$pid1" != "$pid2"
vm_check "tracer active after upgrade" vm_wait 300 active aodv2-tracer@smb.service

# --- a second tracer instance next to smb: the synthetic one (bpf/synthetic.bpf.c; getppid()
#     calls become events, no driver needed to attach). The core reports the tracers that
#     config `tracers` names, so `aodv2 status` lists it only once that names it.
vm_check "synthetic.bpf.c shipped in the .deb" sh -c 'dpkg -L aodv2 | grep -qx /usr/share/aodv2/bpf/synthetic.bpf.c'
aodv2 tracer no-such-tracer >/dev/null 2>&1; rc=$?
vm_check "aodv2 tracer rejects an unknown name (exit 2, got $rc)" test "$rc" = 2
t=$(vm_now)
systemctl enable --now aodv2-tracer@synthetic.service; vm_fact synthetic_enable_now_rc "$?"
vm_check "synthetic: link in aodv2.service.wants" test -L "$WANTS/aodv2-tracer@synthetic.service"
vm_check "synthetic: aodv2-tracer@synthetic active" vm_wait 300 active aodv2-tracer@synthetic.service
vm_fact synthetic_active_s "$(vm_since "$t")"
vm_check "synthetic: state file says attached" vm_wait 300 grep -q '"attached"' /run/aodv2/tracer-synthetic.json
cat /run/aodv2/tracer-synthetic.json 2>&1; echo
vm_check "both tracer units active at once" sh -c \
    'systemctl is-active --quiet aodv2-tracer@smb.service && systemctl is-active --quiet aodv2-tracer@synthetic.service'
vm_check "status --json lists smb only (config tracers: [smb])" vm_wait 30 status_tracers_are "smb=attached"
vm_fact status_tracers_default "$(status_tracers)"
cp -p /etc/aodv2/config.yaml /root/config.yaml.orig
sed -i 's/^tracers: \[smb\]$/tracers: [smb, synthetic]/' /etc/aodv2/config.yaml
vm_check "config now names both tracers" grep -qx 'tracers: \[smb, synthetic\]' /etc/aodv2/config.yaml
t0=$(date +%s)
systemctl reload aodv2.service
vm_check "status --json lists both tracers attached after reload" \
    vm_wait 30 status_tracers_are "smb=attached synthetic=attached"
vm_fact status_tracers_both "$(status_tracers)"
vm_check "reload reached aodv2-tracer@smb (ReloadPropagatedFrom=): maps updated, nothing rebuilt" \
    vm_wait 30 journal_since aodv2-tracer@smb.service "$t0" "nothing rebuilt or re-attached"
vm_check "reload reached aodv2-tracer@synthetic" \
    vm_wait 30 journal_since aodv2-tracer@synthetic.service "$t0" "nothing of it applies to this tracer"
cp -p /root/config.yaml.orig /etc/aodv2/config.yaml
systemctl reload aodv2.service
vm_check "status --json lists smb only again" vm_wait 30 status_tracers_are "smb=attached"
vm_check "systemctl disable --now aodv2-tracer@synthetic" systemctl disable --now aodv2-tracer@synthetic.service
vm_check "synthetic: inactive" vm_wait 60 inactive aodv2-tracer@synthetic.service
vm_check "synthetic: link gone" test ! -L "$WANTS/aodv2-tracer@synthetic.service"
vm_check "synthetic: state file says stopped" grep -q '"stopped"' /run/aodv2/tracer-synthetic.json
vm_check "smb tracer still active" active aodv2-tracer@smb.service
vm_check "core still active" active aodv2.service

# --- docs
vm_check "man aodv2 renders" sh -c 'MANWIDTH=80 man aodv2 2>/dev/null | grep -q "always-on diagnostics"'
vm_check "man aodv2.yaml renders" sh -c 'MANWIDTH=80 man 5 aodv2.yaml 2>/dev/null | grep -q "watch_interval_sec"'
vm_check "man aodv2-tracer renders" sh -c 'MANWIDTH=80 man aodv2-tracer 2>/dev/null | grep -q "stop-hook"'

# --- purge, with a tracer instance the admin enabled (not started): deb-systemd-helper did not
#     record its link, the postrm must remove it
systemctl enable aodv2-tracer@synthetic.service
vm_check "admin-enabled instance link before purge" test -L "$WANTS/aodv2-tracer@synthetic.service"
t=$(vm_now)
vm_check "apt purge aodv2" env DEBIAN_FRONTEND=noninteractive apt-get purge -y aodv2
vm_fact purge_s "$(vm_since "$t")"
vm_check "no aodv2 unit left" no_units
vm_check "purge removed the admin-enabled instance link" test ! -L "$WANTS/aodv2-tracer@synthetic.service"
vm_check "no aodv2 process left" vm_wait 30 no_aodv2_procs
vm_check "no pinned ring dir left" test ! -e /sys/fs/bpf/aodv2
vm_check "no /var/log/aodv2 left" test ! -e /var/log/aodv2
vm_check "no /etc/aodv2 left" test ! -e /etc/aodv2
vm_check "units not loaded" sh -c '! systemctl is-active --quiet aodv2.service && ! systemctl is-active --quiet aodv2-tracer@smb.service'
ls -la /sys/fs/bpf/ 2>&1
ls -ld $OUR_UNITS 2>&1
systemctl list-unit-files aodv2.service 'aodv2-tracer@*' --no-legend 2>&1
pgrep -af aodv2 || true

# --- upgrade from the last release (tests/vm/releases/), while it runs and traces: pins outlive
#     the package, so the new core and tracer meet the old ring and maps. `apt install` of the
#     new .deb must be all it takes (no conffile edited, so no prompt; no manual step).
OLD=$(ls /share/releases/aodv2_*_all.deb 2>/dev/null | head -1)
vm_check "the last release is in the share" test -n "$OLD"
vm_fact old_deb "$(basename "${OLD:-none}")"
# slowdown_alerts SINCE TYPE: netem 300 ms on lo (a 600 ms round trip: over the shipped 500 ms
# threshold, under the 1000 ms emergency) and 4 workloads until a TYPE anomaly is in the journal
slowdown_alerts() {
    local since=$1 type=$2 end=$(( $(date +%s) + 90 )) rc=1
    vm_netem_add 300ms
    while [ "$(date +%s)" -lt "$end" ]; do
        for i in 1 2 3 4; do vm_workload 2 >/dev/null & done
        wait
        if journalctl -u aodv2 --since "@$since" --no-pager -o cat | grep -q "AOD detected anomaly: $type"; then
            rc=0; break
        fi
    done
    vm_netem_del
    return $rc
}
status_json() { python3 -c "import json; d = json.load(open('/run/aodv2/status.json')); print($1)" 2>/dev/null; }
map_id() { python3 -c 'import os, sys; from aod import bpfsys
fd = bpfsys.obj_get("/sys/fs/bpf/aodv2/" + sys.argv[1], bpfsys.BPF_F_RDONLY); print(bpfsys.map_info(fd).id); os.close(fd)' "$1"; }
ring_id() { map_id events; }
if [ -n "$OLD" ]; then
    t0=$(date +%s)
    vm_check "old: apt install the last release" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$OLD"
    systemctl enable --now aodv2
    vm_check "old: tracer attached" vm_wait 300 grep -q '"attached"' /run/aodv2/tracer-smb.json
    vm_check "old: core active" vm_wait 120 active aodv2.service
    vm_fact old_version "$(dpkg-query -W -f='${Version}' aodv2)"
    vm_check "old: cmd_stats_v2 and the in-flight maps pinned" test -e /sys/fs/bpf/aodv2/cmd_stats_v2 \
        -a -e /sys/fs/bpf/aodv2/inflight_v1 -a -e /sys/fs/bpf/aodv2/emit_cfg_v1
    vm_check "old: its tracer unit is PartOf= the core (what the upgrade must undo)" \
        sh -c 'systemctl show -p PartOf --value aodv2-tracer@smb.service | grep -q aodv2.service'
    vm_check "old: a slowdown alerts (the release detects)" slowdown_alerts "$t0" latency
    RING_OLD=$(ring_id); STATS_OLD=$(map_id cmd_stats_v2); CPID_OLD=$(main_pid)
    TPID_OLD=$(systemctl show -p MainPID --value aodv2-tracer@smb.service)
    t=$(vm_now); t1=$(date +%s)
    vm_check "upgrade: apt install of the new .deb over the running release" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y "$DEB"
    vm_fact upgrade_install_s "$(vm_since "$t")"
    vm_check "upgrade: the new version is installed" test "$(dpkg-query -W -f='${Version}' aodv2)" != "$(basename "$OLD" | cut -d_ -f2)"
    vm_check "upgrade: core restarted (pid $CPID_OLD -> new)" vm_wait 120 sh -c "[ \"\$(systemctl show -p MainPID --value aodv2.service)\" != $CPID_OLD ] && systemctl is-active --quiet aodv2.service"
    vm_check "upgrade: tracer restarted and attached" vm_wait 300 grep -q '"attached"' /run/aodv2/tracer-smb.json
    vm_check "upgrade: tracer pid changed (postinst try-restarts the tracers)" test "$(systemctl show -p MainPID --value aodv2-tracer@smb.service)" != "$TPID_OLD"
    vm_check "upgrade: the tracer is no longer PartOf= the core" \
        test -z "$(systemctl show -p PartOf --value aodv2-tracer@smb.service)"
    vm_fact upgrade_to_attached_s "$(vm_since "$t")"
    vm_check "upgrade: same ring map (id $RING_OLD)" test "$(ring_id)" = "$RING_OLD"
    vm_check "upgrade: same cmd_stats_v2 map (id $STATS_OLD): the counters go on" test "$(map_id cmd_stats_v2)" = "$STATS_OLD"
    vm_check "upgrade: the new maps pinned (inflight_v1 hung_v1 emit_cfg_v1 servers_v1 trees_v1)" sh -c \
        'for m in inflight_v1 hung_v1 emit_cfg_v1 servers_v1 trees_v1; do test -e /sys/fs/bpf/aodv2/$m || exit 1; done'
    vm_check "upgrade: the new tracer ages requests (hung threshold published)" \
        python3 -c "import json, sys; sys.exit(0 if json.load(open('/run/aodv2/tracer-smb.json')).get('hung_threshold_ns', 0) > 0 else 1)"
    vm_check "upgrade: the evidence socket is enabled and listening" sh -c \
        'systemctl is-enabled --quiet aodv2-evidence.socket && systemctl is-active --quiet aodv2-evidence.socket && test -S /run/aodv2/evidence.sock'
    vm_check "upgrade: no failed aodv2 unit" sh -c '! systemctl --failed --no-legend | grep -q aodv2'
    vm_check "upgrade: detection works (a slowdown alerts)" slowdown_alerts "$t1" latency
    vm_check "upgrade: a bundle written after the upgrade" vm_wait 120 journal_since aodv2.service "$t1" "AOD bundle written"
    vm_fact upgrade_status "$(systemctl show -p StatusText --value aodv2.service)"
    vm_check "upgrade: purge" env DEBIAN_FRONTEND=noninteractive apt-get purge -y aodv2
fi

vm_cifs_umount
vm_collect_logs
vm_fact scenario_s "$(vm_since "$T0")"
vm_summary
