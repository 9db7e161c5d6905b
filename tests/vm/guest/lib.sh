# shellcheck shell=bash
# aodv2 VM harness: reusable guest-side steps.  Source it from a guest script:
#     . /share/vmlib/lib.sh
# Gives: a SMB server on 127.0.0.1 (samba, user aodtest), a CIFS mount at
# /mnt/smb, a workload, netem delay on lo, bpffs + tracepoint waits, and
# check/summary helpers.  Everything logs to stdout (-> /share/guest-output.log).

VM_LIB_DIR=${VM_LIB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
VM_SHARE=${VM_SHARE:-/share}
SMB_USER=${SMB_USER:-aodtest}
SMB_PASS=${SMB_PASS:-aodtest-Pw1}
SMB_SHARE_DIR=${SMB_SHARE_DIR:-/srv/smb/share}
SMB_MNT=${SMB_MNT:-/mnt/smb}
SMB_CRED=${SMB_CRED:-/root/.aodtest.cred}
CIFS_OPTS=${CIFS_OPTS:-}
TRACEFS=${TRACEFS:-/sys/kernel/tracing}
VM_RESULTS=${VM_RESULTS:-$VM_SHARE/results.txt}
VM_CHECKS_FAILED=0
VM_CHECKS_PASSED=0

vm_log() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }

# vm_now: seconds since boot (float), for timings.
vm_now() { cut -d' ' -f1 /proc/uptime; }

# vm_since T: seconds elapsed since vm_now returned T (one decimal).
vm_since() { awk -v a="$1" -v b="$(vm_now)" 'BEGIN { printf "%.1f\n", b - a }'; }

# vm_check NAME CMD [ARGS...]: run CMD, record PASS/FAIL NAME in $VM_RESULTS.
vm_check() {
    local name=$1; shift
    if "$@"; then
        VM_CHECKS_PASSED=$((VM_CHECKS_PASSED + 1))
        echo "PASS $name" | tee -a "$VM_RESULTS"
    else
        VM_CHECKS_FAILED=$((VM_CHECKS_FAILED + 1))
        echo "FAIL $name" | tee -a "$VM_RESULTS"
    fi
}

# vm_fact KEY VALUE: record an observation (numbers, timings) in $VM_RESULTS.
vm_fact() { echo "FACT $1=$2" | tee -a "$VM_RESULTS"; }

# vm_summary: print the closing line and return non-zero if a check failed.
vm_summary() {
    echo "$VM_CHECKS_PASSED passed, $VM_CHECKS_FAILED failed" | tee -a "$VM_RESULTS"
    [ "$VM_CHECKS_FAILED" -eq 0 ]
}

# vm_booted: wait for the boot transaction to finish; true if "running" or "degraded".
vm_booted() {
    local st
    st=$(timeout 300 systemctl is-system-running --wait 2>/dev/null)
    [ "$st" = running ] || [ "$st" = degraded ]
}

# vm_wait SECONDS CMD [ARGS...]: poll CMD every 0.2 s until it succeeds.
vm_wait() {
    local secs=$1; shift
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}

# vm_samba_start: configure and start smbd on 127.0.0.1 with share [share]
# for user $SMB_USER; $SMB_SHARE_DIR/secret/ (root 0700) and
# $SMB_SHARE_DIR/secret.txt (root 0600) are unreadable for that user.
vm_samba_start() {
    id "$SMB_USER" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$SMB_USER"
    mkdir -p "$SMB_SHARE_DIR/secret"
    chown "$SMB_USER:" "$SMB_SHARE_DIR"
    echo "top secret" > "$SMB_SHARE_DIR/secret/secret.txt"
    echo "top secret" > "$SMB_SHARE_DIR/secret.txt"
    chown root:root "$SMB_SHARE_DIR/secret" "$SMB_SHARE_DIR/secret/secret.txt" "$SMB_SHARE_DIR/secret.txt"
    chmod 0700 "$SMB_SHARE_DIR/secret"
    chmod 0600 "$SMB_SHARE_DIR/secret/secret.txt" "$SMB_SHARE_DIR/secret.txt"
    cat > /etc/samba/smb.conf <<EOF
[global]
   server role = standalone server
   workgroup = WORKGROUP
   interfaces = lo
   bind interfaces only = yes
   smb ports = 445
   disable netbios = yes
   map to guest = never
   load printers = no
   printing = bsd
   printcap name = /dev/null
   disable spoolss = yes
   log file = /var/log/samba/log.%m
   max log size = 1000
   logging = file

[share]
   path = $SMB_SHARE_DIR
   read only = no
   valid users = $SMB_USER
   create mask = 0644
EOF
    printf '%s\n%s\n' "$SMB_PASS" "$SMB_PASS" | smbpasswd -s -a "$SMB_USER" >/dev/null
    systemctl restart smbd
    vm_wait 60 vm_samba_listening || { vm_log "smbd not listening"; return 1; }
    vm_log "samba up on 127.0.0.1:445"
}

vm_samba_listening() { ss -Hltn 'sport = :445' | grep -q .; }

# vm_cifs_mount [EXTRA_OPTS]: modprobe cifs, mount //127.0.0.1/share at $SMB_MNT (SMB 3.1.1).
vm_cifs_mount() {
    local extra=${1:-$CIFS_OPTS}
    modprobe cifs || return 1
    install -m 0600 /dev/null "$SMB_CRED"
    printf 'username=%s\npassword=%s\ndomain=WORKGROUP\n' "$SMB_USER" "$SMB_PASS" > "$SMB_CRED"
    mkdir -p "$SMB_MNT"
    local opts="credentials=$SMB_CRED,vers=3.1.1,uid=0,gid=0"
    [ -n "$extra" ] && opts="$opts,$extra"
    mount -t cifs //127.0.0.1/share "$SMB_MNT" -o "$opts" || return 1
    vm_log "mounted //127.0.0.1/share on $SMB_MNT ($opts)"
}

vm_cifs_umount() { umount "$SMB_MNT"; }

vm_cifs_mounted() { findmnt -t cifs "$SMB_MNT" >/dev/null; }

# vm_access_denied: reading the root-only files through the mount must fail
# (server answers STATUS_ACCESS_DENIED -> EACCES).  Returns 0 if both were denied.
vm_access_denied() {
    local ok=0
    cat "$SMB_MNT/secret/secret.txt" >/dev/null 2>&1 && ok=1
    cat "$SMB_MNT/secret.txt" >/dev/null 2>&1 && ok=1
    [ "$ok" -eq 0 ]
}

# vm_workload [N] [SIZE] [DIR]: create/write/read/stat/list/delete N files; JSON line out.
vm_workload() {
    python3 "$VM_LIB_DIR/workload.py" "${3:-$SMB_MNT}" -n "${1:-30}" --size "${2:-4096}"
}

# vm_netem_add DELAY: add latency on lo (e.g. 100ms); vm_netem_del removes it.
vm_netem_add() { tc qdisc replace dev lo root netem delay "$1"; }
vm_netem_del() { tc qdisc del dev lo root 2>/dev/null || true; }

# vm_tracepoint_wait [EVENT] [SECONDS]: wait for a cifs tracepoint dir to exist.
vm_tracepoint_wait() {
    vm_wait "${2:-30}" test -d "$TRACEFS/events/cifs/${1:-smb3_cmd_done}"
}

# vm_bpffs [DIR]: make sure bpffs is mounted at /sys/fs/bpf and DIR exists in it.
vm_bpffs() {
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || return 1
    mkdir -p "/sys/fs/bpf/${1:-aodv2}"
}

# vm_probe_start PIN READY_FILE LOG: start ring_probe.py in the background; sets VM_PROBE_PID.
vm_probe_start() {
    rm -f "$2"
    python3 "$VM_LIB_DIR/ring_probe.py" --pin "$1" --ready "$2" >"$3" 2>&1 &
    VM_PROBE_PID=$!
    vm_wait "${VM_PROBE_TIMEOUT:-240}" test -e "$2"
}

vm_probe_stop() {
    [ -n "${VM_PROBE_PID:-}" ] || return 0
    kill -TERM "$VM_PROBE_PID" 2>/dev/null
    wait "$VM_PROBE_PID" 2>/dev/null
    VM_PROBE_PID=
}

# vm_json FILE KEY: print a top-level key of the last JSON line in FILE.
vm_json() {
    python3 -c 'import json,sys
lines=[l for l in open(sys.argv[1]) if l.startswith("{")]
v=json.loads(lines[-1]).get(sys.argv[2]) if lines else None
print("" if v is None else (json.dumps(v) if isinstance(v,(dict,list)) else v))' "$1" "$2"
}

# vm_install_deb FILE...: install aodv2 packages built on the host (runtime deps are in the image).
# vm_one_deb: DEB=the one aodv2 .deb in the share, checked and recorded; exits the scenario if
# there is not exactly one (run.py removes older aodv2_*.deb before copying; a stale one left
# next to the new must not be the one tested)
vm_one_deb() {
    local debs
    shopt -s nullglob
    debs=(/share/aodv2_*_all.deb)
    shopt -u nullglob
    vm_fact debs_in_share "${#debs[@]}: ${debs[*]:-none}"
    DEB=""
    [ ${#debs[@]} -eq 1 ] && DEB=${debs[0]}
    vm_check "exactly one aodv2 .deb in the share (found ${#debs[@]})" test -n "$DEB"
    [ -n "$DEB" ] || { vm_summary; exit 1; }
    vm_fact deb "$(basename "$DEB")"
}
vm_install_deb() { DEBIAN_FRONTEND=noninteractive dpkg -i "$@"; }

# vm_collect_logs: copy journal and samba logs into $VM_SHARE/logs for the host.
vm_collect_logs() {
    mkdir -p "$VM_SHARE/logs"
    journalctl -b --no-pager -o short-monotonic > "$VM_SHARE/logs/journal.txt" 2>&1
    dmesg > "$VM_SHARE/logs/dmesg.txt" 2>&1
    { systemctl is-system-running; systemd-analyze time; systemd-analyze blame; } \
        > "$VM_SHARE/logs/systemd-analyze.txt" 2>&1
    cp -r /var/log/samba "$VM_SHARE/logs/" 2>/dev/null
    true
}

# vm_report REPORT PREFIX RC WHAT: print a driver's JSON report, check its exit status RC,
# and record one FACT per scenario (PREFIX_<scenario>=PASS|FAIL <seconds>s).
vm_report() {
    echo "===== $1"
    cat "$1" 2>/dev/null || echo "(no report)"
    echo
    vm_check "$4 all passed (exit $3)" test "$3" -eq 0
    python3 - "$1" "$2" <<'PY' 2>/dev/null | while read -r k v; do vm_fact "$k" "$v"; done
import json, sys
for k, v in json.load(open(sys.argv[1])).items():
    print(f"{sys.argv[2]}_{k}", ("PASS" if v.get("pass") else "FAIL") + f" {v.get('seconds')}s")
PY
}

# The overhead benches (overhead.sh, overhead_recorder.sh): the share on a RAM-backed ext4 (no
# disk noise in the rounds), samba and the CIFS mount; without the mount the run ends here.
vm_bench_mount() {
    vm_ram_share() {
        truncate -s 512M /dev/shm/smb.img && mkfs.ext4 -q -F -m 0 /dev/shm/smb.img &&
            mkdir -p "$SMB_SHARE_DIR" && mount -o loop /dev/shm/smb.img "$SMB_SHARE_DIR"
    }
    vm_check "share on a RAM-backed ext4" vm_ram_share
    vm_check "samba listening" vm_samba_start
    vm_check "cifs mount" vm_cifs_mount
    if ! vm_cifs_mounted; then
        vm_collect_logs; vm_summary; exit 1
    fi
}
