#!/bin/bash
# aodv2 VM scenario: bench figure 6n, the nfs tracer's cost on NFS throughput on a real kernel.
# A benchmark, not a test of CI.  Run from the host (`make vm-overhead-nfs`):
#     python3 tests/vm/run.py --share dist/vm/overhead-nfs --script tests/vm/scenarios/overhead_nfs.sh \
#         --copy aod --copy bpf --timeout 2400
# Figure 6's method (overhead.sh) on NFS: the export lives on ext4 in RAM (a loop file in
# /dev/shm), the in-guest nfsd serves it over 127.0.0.1 and it is mounted NFSv4.2; the nfs tracer
# from the tree (aod/tracer.py + aod/front_nfs.py + bpf/nfs.bpf.c, default thresholds) is loaded
# once, and guest/overhead_run.py --tracer nfs alternates workload rounds with its programs
# detached and attached (ABBA order, no recompile), the second vCPU offline.  Writes
# /share/overhead-nfs.json, which bench/fig_tracer.py reads (row 6n).  The number of pairs:
# /share/pairs if the host wrote it (the Makefile's NFS_PAIRS), else 120.
set -u
. /share/vmlib/lib.sh
export PYTHONPATH=/share
O=/share/overhead-nfs.json
rm -f "$VM_RESULTS" $O
T0=$(vm_now)
vm_fact kernel "$(uname -r)"
vm_fact bcc_version "$(python3 -c 'import bcc; print(bcc.__version__)' 2>&1)"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
rm -rf /sys/fs/bpf/aodv2
R=/tmp/ovh; mkdir -p $R
PAIRS=120
if [ -s /share/pairs ]; then PAIRS=$(tr -dc 0-9 < /share/pairs); fi
CPU1=/sys/devices/system/cpu/cpu1/online
EXPORT=/srv/nfs-bench
MNT=/mnt/nfs-bench
cat > $R/aod-default.yaml <<EOC
ring:
  path: /sys/fs/bpf/aodv2/events
  size_kb: 256
EOC
py() { python3 -c "import json,sys; d=json.load(open('$1')); sys.exit(0 if ($2) else 1)"; }

nfs_ram_export() {
    truncate -s 512M /dev/shm/nfs.img && mkfs.ext4 -q -F -m 0 /dev/shm/nfs.img &&
        mkdir -p "$EXPORT" && mount -o loop /dev/shm/nfs.img "$EXPORT" &&
        echo "$EXPORT 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,insecure)" > /etc/exports &&
        systemctl restart nfs-kernel-server && exportfs -ra
}
vm_check "export on a RAM-backed ext4, nfsd serving it" nfs_ram_export
mkdir -p $MNT
vm_check "NFSv4.2 mount over 127.0.0.1" mount -t nfs -o vers=4.2,hard 127.0.0.1:$EXPORT $MNT
if ! mountpoint -q $MNT; then
    vm_collect_logs; vm_summary; exit 1
fi
vm_fact sunrpc_events "$(ls "$TRACEFS/events/sunrpc" | wc -l)"

vm_check "second vCPU offline for the rounds" bash -c "echo 0 > $CPU1"
python3 "$VM_LIB_DIR/overhead_run.py" --tracer nfs --config $R/aod-default.yaml --mount $MNT \
    --out $O --pairs "$PAIRS" --target-s 0.75
RC=$?
echo 1 > $CPU1
vm_check "overhead_run.py --tracer nfs complete and consistent (exit $RC)" test "$RC" -eq 0
if [ -s $O ]; then
    for k in files_per_round compile_attach_s workload_seconds_off workload_seconds_on pair_ratios \
             median_pair_loss median_loss_ci95 pair_loss_iqr min_loss p10_loss bpf_cpu_share_of_workload problems; do
        vm_fact "$k" "$(vm_json $O $k)"
    done
    vm_check "$PAIRS ABBA pairs measured" py $O "len(d.get('pair_ratios', [])) == $PAIRS"
    vm_check "BPF programs ran in every attached round" \
        py $O "all(r['bpf_runs'] > 0 for r in d['rounds'] if r['state'] == 'on')"
    vm_check "no BPF program ran in a detached round" \
        py $O "all(r['bpf_runs'] == 0 and r['attachments'] == 0 for r in d['rounds'] if r['state'] == 'off')"
    vm_check "workload without errors" py $O "all(r['errors'] == 0 for r in d['rounds'])"
else
    vm_check "overhead-nfs.json written" false
fi

umount -f -l $MNT
systemctl stop nfs-kernel-server; umount "$EXPORT"
vm_fact scenario_s "$(vm_since "$T0")"
vm_collect_logs
vm_summary
