"""Names for SMB2 command ids (and, through nfsproc.py, NFS procedure codes), NT status codes and
errnos (lookup data for config and reports)."""

from __future__ import annotations

import errno as _errno

from . import nfsproc

COMMANDS: dict[str, int] = {
    "NEGOTIATE": 0,
    "SESSION_SETUP": 1,
    "LOGOFF": 2,
    "TREE_CONNECT": 3,
    "TREE_DISCONNECT": 4,
    "CREATE": 5,
    "CLOSE": 6,
    "FLUSH": 7,
    "READ": 8,
    "WRITE": 9,
    "LOCK": 10,
    "IOCTL": 11,
    "CANCEL": 12,
    "ECHO": 13,
    "QUERY_DIRECTORY": 14,
    "CHANGE_NOTIFY": 15,
    "QUERY_INFO": 16,
    "SET_INFO": 17,
    "OPLOCK_BREAK": 18,
    "SERVER_TO_CLIENT_NOTIFICATION": 19,
}
COMMAND_NAMES: dict[int, str] = {v: k for k, v in COMMANDS.items()}

NT_STATUS: dict[str, int] = {
    "STATUS_SUCCESS": 0x00000000,
    "STATUS_PENDING": 0x00000103,
    "STATUS_BUFFER_OVERFLOW": 0x80000005,
    "STATUS_NO_MORE_FILES": 0x80000006,
    "STATUS_STOPPED_ON_SYMLINK": 0x8000002D,
    "STATUS_INVALID_HANDLE": 0xC0000008,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_NO_SUCH_FILE": 0xC000000F,
    "STATUS_END_OF_FILE": 0xC0000011,
    "STATUS_MORE_PROCESSING_REQUIRED": 0xC0000016,
    "STATUS_ACCESS_DENIED": 0xC0000022,
    "STATUS_OBJECT_NAME_NOT_FOUND": 0xC0000034,
    "STATUS_OBJECT_NAME_COLLISION": 0xC0000035,
    "STATUS_OBJECT_PATH_NOT_FOUND": 0xC000003A,
    "STATUS_SHARING_VIOLATION": 0xC0000043,
    "STATUS_QUOTA_EXCEEDED": 0xC0000044,
    "STATUS_LOCK_NOT_GRANTED": 0xC0000055,
    "STATUS_DELETE_PENDING": 0xC0000056,
    "STATUS_LOGON_FAILURE": 0xC000006D,
    "STATUS_RANGE_NOT_LOCKED": 0xC000007E,
    "STATUS_DISK_FULL": 0xC000007F,
    "STATUS_INSUFFICIENT_RESOURCES": 0xC000009A,
    "STATUS_PIPE_DISCONNECTED": 0xC00000B0,
    "STATUS_IO_TIMEOUT": 0xC00000B5,
    "STATUS_FILE_IS_A_DIRECTORY": 0xC00000BA,
    "STATUS_NOT_SUPPORTED": 0xC00000BB,
    "STATUS_BAD_NETWORK_PATH": 0xC00000BE,
    "STATUS_INVALID_NETWORK_RESPONSE": 0xC00000C3,
    "STATUS_UNEXPECTED_NETWORK_ERROR": 0xC00000C4,
    "STATUS_NETWORK_NAME_DELETED": 0xC00000C9,
    "STATUS_NETWORK_ACCESS_DENIED": 0xC00000CA,
    "STATUS_BAD_NETWORK_NAME": 0xC00000CC,
    "STATUS_REQUEST_NOT_ACCEPTED": 0xC00000D0,
    "STATUS_DIRECTORY_NOT_EMPTY": 0xC0000101,
    "STATUS_NOT_A_DIRECTORY": 0xC0000103,
    "STATUS_CANCELLED": 0xC0000120,
    "STATUS_FILE_CLOSED": 0xC0000128,
    "STATUS_PIPE_BROKEN": 0xC000014B,
    "STATUS_USER_SESSION_DELETED": 0xC0000203,
    "STATUS_CONNECTION_DISCONNECTED": 0xC000020C,
    "STATUS_CONNECTION_RESET": 0xC000020D,
    "STATUS_NOT_FOUND": 0xC0000225,
    "STATUS_NETWORK_UNREACHABLE": 0xC000023C,
    "STATUS_HOST_UNREACHABLE": 0xC000023D,
    "STATUS_PATH_NOT_COVERED": 0xC0000257,
    "STATUS_NETWORK_SESSION_EXPIRED": 0xC000035C,
}
NT_STATUS_NAMES: dict[int, str] = {v: k for k, v in NT_STATUS.items()}

# Statuses that mean the session or tree is gone: a reconnect is under way.
RECONNECT_STATUSES: frozenset[int] = frozenset(
    NT_STATUS[n]
    for n in (
        "STATUS_NETWORK_SESSION_EXPIRED",
        "STATUS_USER_SESSION_DELETED",
        "STATUS_NETWORK_NAME_DELETED",
    )
)

ERRNOS: dict[str, int] = {name: num for num, name in _errno.errorcode.items()}


def command_name(cmd: int) -> str:
    """SMB2 command name; an NFS procedure code (the nfs tracer's records share the command
    space, aod/nfsproc.py) is named 'NFSv3 READ'."""
    if nfsproc.is_nfs(cmd):
        return nfsproc.name(cmd)
    return COMMAND_NAMES.get(int(cmd), f"CMD_{int(cmd)}")


def status_name(status: int) -> str:
    return NT_STATUS_NAMES.get(int(status), f"0x{int(status):08X}")


def protocol_status_name(protocol: str, status: int) -> str:
    """A status as a record or a rule of that protocol carries it: NT status (SMB); for NFS an
    NFS4ERR_* or nfsproc.ERRNO_FLAG | errno (the NFS detector's count key)."""
    return nfsproc.status_label(status) if protocol == "nfs" else status_name(status)


def errno_name(err: int) -> str:
    return _errno.errorcode.get(int(err), str(int(err))) if err else "0"
