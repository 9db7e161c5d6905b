"""NFS procedure codes and status names (lookup data for the nfs tracer, config and reports).

A record's `command` is one 16-bit space for both protocols: SMB2 command ids stay below 0x100,
an NFS procedure is CODE_BASE[version] | index:
  - NFSv3: 0x0300 | the RFC 1813 procedure number (GETATTR 0x0301, READ 0x0306, COMMIT 0x0315);
  - NFSv4.x: 0x0400 | the index of the client procedure in V4 (READ 0x0401, OPEN 0x0404). The
    kernel names a v4 RPC by its client procedure (nfs4_procedures' p_name: one COMPOUND per
    procedure), not by the operations inside, and all minor versions share the names;
  - a name this table lacks: 0x03ff or 0x04ff ("NFSv4 ?").
The nfs tracer gets the name from sunrpc's `procname` string and looks it up in the program's
`procs` map, which the front fills from this table at each attach (name_keys()): the kernel side
never parses names, and the numbering never depends on the kernel's own enum, which grows.
Append only: codes are kept in bundles and metrics.
"""

from __future__ import annotations

import errno as _errno
import re
from typing import Any, Iterator, Optional

import numpy as np

from .record import NFS_NAME_LEN

V3 = ("NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE", "CREATE", "MKDIR",
      "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK", "READDIR", "READDIRPLUS", "FSSTAT", "FSINFO",
      "PATHCONF", "COMMIT")
V4 = ("NULL", "READ", "WRITE", "COMMIT", "OPEN", "OPEN_CONFIRM", "OPEN_NOATTR", "OPEN_DOWNGRADE", "CLOSE",
      "SETATTR", "FSINFO", "RENEW", "SETCLIENTID", "SETCLIENTID_CONFIRM", "LOCK", "LOCKT", "LOCKU", "ACCESS",
      "GETATTR", "LOOKUP", "LOOKUP_ROOT", "REMOVE", "RENAME", "LINK", "SYMLINK", "CREATE", "PATHCONF",
      "STATFS", "READLINK", "READDIR", "SERVER_CAPS", "DELEGRETURN", "GETACL", "SETACL", "FS_LOCATIONS",
      "RELEASE_LOCKOWNER", "SECINFO", "FSID_PRESENT", "EXCHANGE_ID", "CREATE_SESSION", "DESTROY_SESSION",
      "SEQUENCE", "GET_LEASE_TIME", "RECLAIM_COMPLETE", "LAYOUTGET", "GETDEVICEINFO", "LAYOUTCOMMIT",
      "LAYOUTRETURN", "SECINFO_NO_NAME", "TEST_STATEID", "FREE_STATEID", "GETDEVICELIST",
      "BIND_CONN_TO_SESSION", "DESTROY_CLIENTID", "SEEK", "ALLOCATE", "DEALLOCATE", "LAYOUTSTATS", "CLONE",
      "COPY", "OFFLOAD_CANCEL", "LOOKUPP", "LAYOUTERROR", "COPY_NOTIFY", "GETXATTR", "SETXATTR",
      "LISTXATTRS", "REMOVEXATTR", "READ_PLUS")
TABLES = {3: V3, 4: V4}
CODE_BASE = {3: 0x0300, 4: 0x0400}
UNKNOWN = 0xFF  # index of a name the table lacks
FIRST, LAST = 0x0300, 0x04FF  # the NFS part of the command space
NAME_LEN = NFS_NAME_LEN  # procs key: u32 version, then the NUL-padded name (bpf/aod_event.h)

# NFSv4 status codes (RFC 7530, 8881) worth naming; a v4 RPC fails with -status when status >= 10000
NFS4ERR: dict[str, int] = {
    "NFS4ERR_PERM": 1, "NFS4ERR_NOENT": 2, "NFS4ERR_IO": 5, "NFS4ERR_NXIO": 6, "NFS4ERR_ACCESS": 13,
    "NFS4ERR_EXIST": 17, "NFS4ERR_XDEV": 18, "NFS4ERR_NOTDIR": 20, "NFS4ERR_ISDIR": 21, "NFS4ERR_INVAL": 22,
    "NFS4ERR_FBIG": 27, "NFS4ERR_NOSPC": 28, "NFS4ERR_ROFS": 30, "NFS4ERR_NAMETOOLONG": 63,
    "NFS4ERR_NOTEMPTY": 66, "NFS4ERR_DQUOT": 69, "NFS4ERR_STALE": 70, "NFS4ERR_BADHANDLE": 10001,
    "NFS4ERR_BAD_COOKIE": 10003, "NFS4ERR_NOTSUPP": 10004, "NFS4ERR_TOOSMALL": 10005,
    "NFS4ERR_SERVERFAULT": 10006, "NFS4ERR_BADTYPE": 10007, "NFS4ERR_DELAY": 10008, "NFS4ERR_SAME": 10009,
    "NFS4ERR_DENIED": 10010, "NFS4ERR_EXPIRED": 10011, "NFS4ERR_LOCKED": 10012, "NFS4ERR_GRACE": 10013,
    "NFS4ERR_FHEXPIRED": 10014, "NFS4ERR_SHARE_DENIED": 10015, "NFS4ERR_WRONGSEC": 10016,
    "NFS4ERR_CLID_INUSE": 10017, "NFS4ERR_RESOURCE": 10018, "NFS4ERR_MOVED": 10019,
    "NFS4ERR_NOFILEHANDLE": 10020, "NFS4ERR_MINOR_VERS_MISMATCH": 10021, "NFS4ERR_STALE_CLIENTID": 10022,
    "NFS4ERR_STALE_STATEID": 10023, "NFS4ERR_OLD_STATEID": 10024, "NFS4ERR_BAD_STATEID": 10025,
    "NFS4ERR_BAD_SEQID": 10026, "NFS4ERR_LOCK_RANGE": 10028, "NFS4ERR_SYMLINK": 10029,
    "NFS4ERR_LEASE_MOVED": 10031, "NFS4ERR_ATTRNOTSUPP": 10032, "NFS4ERR_NO_GRACE": 10033,
    "NFS4ERR_RECLAIM_BAD": 10034, "NFS4ERR_RECLAIM_CONFLICT": 10035, "NFS4ERR_BADXDR": 10036,
    "NFS4ERR_LOCKS_HELD": 10037, "NFS4ERR_OPENMODE": 10038, "NFS4ERR_BADOWNER": 10039,
    "NFS4ERR_BADNAME": 10041, "NFS4ERR_OP_ILLEGAL": 10044, "NFS4ERR_DEADLOCK": 10045,
    "NFS4ERR_FILE_OPEN": 10046, "NFS4ERR_ADMIN_REVOKED": 10047, "NFS4ERR_CB_PATH_DOWN": 10048,
    "NFS4ERR_BADSESSION": 10052, "NFS4ERR_BADSLOT": 10053, "NFS4ERR_CONN_NOT_BOUND_TO_SESSION": 10055,
    "NFS4ERR_SEQ_MISORDERED": 10063, "NFS4ERR_REQ_TOO_BIG": 10065, "NFS4ERR_REP_TOO_BIG": 10066,
    "NFS4ERR_RETRY_UNCACHED_REP": 10068, "NFS4ERR_TOO_MANY_OPS": 10070, "NFS4ERR_OP_NOT_IN_SESSION": 10071,
    "NFS4ERR_CLIENTID_BUSY": 10074, "NFS4ERR_SEQ_FALSE_RETRY": 10076, "NFS4ERR_BAD_HIGH_SLOT": 10077,
    "NFS4ERR_DEADSESSION": 10078, "NFS4ERR_WRONG_CRED": 10082, "NFS4ERR_DELEG_REVOKED": 10087,
}
NFS4ERR_NAMES = {v: k for k, v in NFS4ERR.items()}
NFS4ERR_MIN = 10000  # a v4 RPC status at or past this is an NFS4ERR_*, not an errno


def code(version: int, name: str) -> int:
    """The command code of procedure `name` of NFS `version` (3, 4); UNKNOWN index if not listed."""
    table = TABLES.get(version)
    if table is None:
        raise ValueError(f"NFS version {version}: expected 3 or 4")
    try:
        return CODE_BASE[version] | table.index(name)
    except ValueError:
        return CODE_BASE[version] | UNKNOWN


def is_nfs(cmd: int) -> bool:
    return FIRST <= int(cmd) <= LAST


def name(cmd: int) -> str:
    """'NFSv3 READ', 'NFSv4 OPEN', 'NFSv4 ?' for a code; ValueError outside the NFS space."""
    cmd = int(cmd)
    version, idx = cmd >> 8, cmd & 0xFF
    table = TABLES.get(version)
    if table is None or not is_nfs(cmd):
        raise ValueError(f"{cmd:#x} is no NFS command code")
    return f"NFSv{version} {table[idx] if idx < len(table) else '?'}"


def lookup(text: str) -> Optional[int]:
    """Config names: 'READ' is not enough (both versions have it); 'NFSv3 READ', 'NFSv4 READ',
    'NFSv4.2 READ' or 'v3 READ' name one code. None if unknown."""
    parts = text.strip().split()
    if len(parts) != 2:
        return None
    ver = parts[0].upper().removeprefix("NFS").removeprefix("V")
    if not re.fullmatch(r"[34](\.[0-9])?", ver):  # ASCII only: str.isdigit() takes '³', int() refuses it
        return None
    major = ver[0]
    table = TABLES[int(major)]
    proc = parts[1].upper()
    return CODE_BASE[int(major)] | table.index(proc) if proc in table else None


def slot(cmd: int) -> int:
    """nfs_stats_v1 entry of a code, as bpf/nfs.bpf.c nfs_slot: v3 in 0-31, v4 (and any other) in 32-127.
    The core's statistics row of an NFS code is record.stats_row (CMD_SLOTS + this, for 0x03xx/0x04xx)."""
    cmd = int(cmd)
    idx = cmd & 0xFF
    if cmd >> 8 == 3:
        return min(idx, 31)
    return 32 + idx if idx < 95 else 127


def name_keys() -> Iterator[tuple[bytes, int]]:
    """(procs key, code) for every listed procedure: u32 version, then NAME_LEN bytes."""
    for version, table in TABLES.items():
        for i, proc in enumerate(table):
            yield version.to_bytes(4, "little") + proc.encode().ljust(NAME_LEN, b"\0"), CODE_BASE[version] | i


ERRNO_FLAG = 0x40000000  # the NFS detector counts an errno-only error as ERRNO_FLAG | errno


def status_key(status: Any, err: Any) -> Any:
    """What NFS errors are counted by (numpy arrays): the NFS4ERR_* status, else ERRNO_FLAG | errno."""
    return np.where(status != 0, status, np.asarray(err).astype(np.uint32) | np.uint32(ERRNO_FLAG))


def status_label(s: int) -> str:
    """A status the NFS detector counted (NFS4ERR_* or ERRNO_FLAG | errno), named."""
    s = int(s)
    return status_name(0, s & ~ERRNO_FLAG) if s & ERRNO_FLAG else status_name(s, 0)


def status_name(status: int, err: int) -> str:
    """An NFS error record's status: NFS4ERR_* (nt_status) or the errno."""
    if status:
        return NFS4ERR_NAMES.get(int(status), f"NFS4ERR_{int(status)}")
    return _errno.errorcode.get(int(err), str(int(err))) if err else "0"
