#!/bin/bash
# Copies this kernel's tracing facts into DIR (the host keeps them as test fixtures,
# tests/fixtures/kernels/<suite>/): the cifs tracepoint formats, the cifs part of
# available_events and available_filter_functions, module BTF presence, versions.
# Needs cifs loaded. Usage: kernel_facts.sh DIR
set -u
D=$1
T=/sys/kernel/tracing; [ -d $T/events ] || T=/sys/kernel/debug/tracing
mkdir -p "$D/events"
for f in "$T"/events/cifs/*/format; do
    ev=$(basename "$(dirname "$f")")
    cp "$f" "$D/events/$ev.format"
done
grep -E '^(cifs|sunrpc|nfs|nfs4):' "$T/available_events" | sort > "$D/available_events" || true
# the functions the kprobe fallback and the connection probes choose between, and any *mid* of cifs
grep -E '\[cifs\]' "$T/available_filter_functions" | grep -E 'mid|find_mid|smb2_mid_entry_alloc' \
    | sort > "$D/available_filter_functions" || true
{
    echo "kernel=$(uname -r)"
    echo "bcc=$(python3 -c 'import bcc; print(bcc.__version__)' 2>/dev/null)"
    echo "python=$(python3 -c 'import platform; print(platform.python_version())')"
    echo "systemd=$(systemctl --version | head -1 | awk '{print $2}')"
    echo "btf_vmlinux=$(test -e /sys/kernel/btf/vmlinux && echo yes || echo no)"
    echo "btf_cifs=$(test -e /sys/kernel/btf/cifs && echo yes || echo no)"
    echo "suite=$(. /etc/os-release; echo "${VERSION_CODENAME:-unknown}")"
} > "$D/facts.txt"
[ -e /sys/kernel/btf/cifs ] && cp /sys/kernel/btf/cifs "$D/btf-cifs" 
true
