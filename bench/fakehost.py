"""A fake host for captures: proc tree, /var/log and journalctl/dmesg/smbinfo on PATH.

Sizes are realistic for a busy CIFS client: a 2 MB /proc/fs/cifs/DebugData (one MID
line per in-flight request), a 50k-line journal window, a 5k-line kernel log, three
cifs mounts. Content is varied (ids, pids, timestamps) so compression is not trivial.
Tools are small sh scripts that `cat` pre-generated files (run as argv, no shell from us).
"""

from __future__ import annotations

import os
import random
from typing import Dict

from aod.actions import ActionEnv

MOUNTS = ("/mnt/projects", "/mnt/home dirs", "/srv/backup")


def _debugdata(size: int, rnd: random.Random) -> bytes:
    head = (
        "Display Internal CIFS Data Structures for Debugging\n"
        "---------------------------------------------------\n"
        "CIFS Version 2.40\nFeatures: DFS,FSCACHE,STATS2,DEBUG,ALLOW_INSECURE_LEGACY,CIFS_POSIX,"
        "UPCALL(SPNEGO),XATTR,ACL,WITNESS\nCIFSMaxBufSize: 16384\nActive VFS Requests: 412\n\nServers:\n"
    )
    out = [head]
    n = len(head)
    srv = 0
    while n < size:
        srv += 1
        block = [
            f"{srv}) ConnectionId: 0x{srv:x} Hostname: fs{srv:02d}.corp.example.com\n",
            f"Number of credits: {rnd.randint(100, 8190)},1,1 Dialect 0x311\n",
            "TCP status: 1 Instance: 1\nLocal Users To Server: 3 SecMode: 0x1 Req On Wire: 97\n",
            f"In Send: 0 In MaxReq Wait: 0\n\n\tSessions:\n\t1) Address: 10.0.{srv}.4 Uses: 2 "
            f"Capability: 0x300067\tSession Status: 1\n\tSecurity type: RawNTLMSSP  "
            f"SessionId: 0x{rnd.getrandbits(48):x}\n\tUser: 1000 Cred User: 0\n\n\tShares:\n",
            f"\t0) IPC: \\\\fs{srv:02d}.corp.example.com\\IPC$ Mounts: 1 DevInfo: 0x0 Attributes: 0x0\n",
            f"\t1) \\\\fs{srv:02d}.corp.example.com\\projects Mounts: 3 DevInfo: 0x20 Attributes: 0xc706ff\n"
            "\tPathComponentMax: 255 Status: 1 type: DISK Serial Number: 0x6a1b\n\n\tMIDs:\n",
        ]
        for _ in range(4000):
            block.append(
                f"\tState: {rnd.choice((2, 2, 2, 4))} com: {rnd.choice((5, 6, 8, 9, 14, 16))} "
                f"pid: {rnd.randint(1000, 65000)} cbdata: {rnd.getrandbits(64):016x} "
                f"mid {rnd.getrandbits(24)}\n"
            )
        s = "".join(block)
        out.append(s)
        n += len(s)
    return "".join(out).encode()[:size]


def _journal(lines: int, rnd: random.Random, kernel: bool) -> bytes:
    units = ("systemd[1]", "sshd[2211]", "cron[812]", "aodv2[901]", "backup-agent[3310]", "sudo[4411]",
             "kernel", "NetworkManager[655]", "rsyslogd[640]")
    msgs = (
        "CIFS: VFS: \\\\fs{n:02d}.corp.example.com has not responded in 180 seconds. Reconnecting...",
        "CIFS: VFS: Send error in read = -11",
        "CIFS: Status code returned 0xc000035c STATUS_NETWORK_SESSION_EXPIRED",
        "Started Session {n} of User backup.",
        "pam_unix(sshd:session): session opened for user deploy(uid=1001) by (uid=0)",
        "Accepted publickey for deploy from 10.1.{n}.7 port {p} ssh2: ED25519 SHA256:abc{p}",
        "(root) CMD (/usr/local/bin/sync-shares --quiet --job {p})",
        "backup job {p} wrote {n} files to /mnt/projects/archive/2026-11-27",
        "deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/bin/mount -t cifs "
        "//fs{n:02d}/projects /mnt/projects -o username=svc,password=S3cret{p}",
    )
    weights = [1.0] * (len(msgs) - 1) + [0.01]  # the sudo mount line (a secret to redact) is rare
    out = []
    for i in range(lines):
        ts = f"2026-11-27T21:{(i // 1000) % 60:02d}:{(i // 17) % 60:02d}.{rnd.randint(0, 999999):06d}+0000"
        unit = "kernel" if kernel else rnd.choice(units)
        msg = rnd.choices(msgs, weights)[0].format(n=rnd.randint(1, 40), p=rnd.randint(1024, 65535))
        out.append(f"{ts} client01 {unit}: {msg}\n")
    return "".join(out).encode()


def _tool(bindir: str, name: str, body: str) -> None:
    p = os.path.join(bindir, name)
    with open(p, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(p, 0o755)


def build(root: str, debugdata_bytes: int = 2 * 1024 * 1024, journal_lines: int = 50_000,
          seed: int = 11) -> Dict[str, str]:
    """Create the fake host under root; returns paths (env fields, data files)."""
    rnd = random.Random(seed)
    proc, var_log, bindir, journal, data = (os.path.join(root, n) for n in ("proc", "log", "bin", "journal", "data"))
    for d in (os.path.join(proc, "fs", "cifs"), var_log, bindir, journal, data):
        os.makedirs(d, exist_ok=True)
    files = {
        os.path.join(proc, "fs", "cifs", "DebugData"): _debugdata(debugdata_bytes, rnd),
        os.path.join(proc, "fs", "cifs", "Stats"): "".join(
            f"{i}) \\\\fs{i:02d}.corp.example.com\\projects\nSMBs: {rnd.randint(1, 10**7)}\n"
            f"Reads: {rnd.randint(1, 10**6)} Bytes: {rnd.randint(1, 10**11)}\n"
            f"Writes: {rnd.randint(1, 10**6)} Bytes: {rnd.randint(1, 10**11)}\n" for i in range(1, 40)).encode(),
        os.path.join(proc, "fs", "cifs", "open_files"): "".join(
            f"0x{rnd.getrandbits(32):x} 0x{rnd.getrandbits(48):x} 0x{rnd.getrandbits(64):x} 0x1 "
            f"{rnd.randint(1000, 9000)} 0x0 projects/src/file{i}.c\n" for i in range(800)).encode(),
        os.path.join(proc, "mounts"): (
            "".join(f"/dev/sda{i} /data{i} ext4 rw,relatime 0 0\n" for i in range(20))
            + "".join(f"//fs0{i}/share {m.replace(' ', chr(92) + '040')} cifs rw,vers=3.1.1,"
                      f"username=svc,password=pw{i},uid=0 0 0\n" for i, m in enumerate(MOUNTS))
        ).encode(),
        os.path.join(var_log, "syslog"): _journal(20_000, rnd, kernel=False),
        os.path.join(data, "journal.txt"): _journal(journal_lines, rnd, kernel=False),
        os.path.join(data, "kernel.txt"): _journal(journal_lines // 10, rnd, kernel=True),
        os.path.join(data, "smbinfo.txt"): ("".join(f"{k}: {rnd.getrandbits(40)}\n" for k in (
            "Total Allocation Units", "Caller Available Allocation Units", "Actual Available Allocation Units",
            "Sectors Per Allocation Unit", "Bytes Per Sector", "CreationTime", "LastAccessTime",
            "LastWriteTime", "ChangeTime", "Attributes", "AllocationSize", "EndOfFile", "NumberOfLinks",
            "IndexNumber", "EaSize", "AccessFlags", "Mode"))).encode(),
    }
    for p, b in files.items():
        with open(p, "wb") as f:
            f.write(b)
    j, k, s = (os.path.join(data, n) for n in ("journal.txt", "kernel.txt", "smbinfo.txt"))
    _tool(bindir, "journalctl", f'for a in "$@"; do [ "$a" = -k ] && exec /bin/cat {k}; done\nexec /bin/cat {j}')
    _tool(bindir, "dmesg", f"exec /bin/cat {k}")
    _tool(bindir, "smbinfo", f"exec /bin/cat {s}")
    return {"proc": proc, "var_log": var_log, "bin": bindir, "journal_dir": journal, "data": data}


def env_for(paths: Dict[str, str]) -> ActionEnv:
    return ActionEnv(proc_root=paths["proc"], var_log=paths["var_log"], path=paths["bin"],
                     journal_dir=paths["journal_dir"])
