"""Bounds on untrusted bundle content: tar headers and events.npy (below bundleread.py).

ring -> dispatch -> detect -> collect -> retain; the readers after collect (`aodv2 show`,
`list`, `show --extract`) open bundles anyone could have put there. tarfile reads a GNU long-name
or pax header whole into memory before anything can look at its size, parses pax records with
regexes that are quadratic in the header's size, and loops over GNU sparse maps without bound;
`BoundedTar` refuses those headers as they are met. np.load trusts an .npy header's dtype and
shape; `load_events` accepts exactly record.EVENT_DTYPE with the row count the bytes hold.
"""

from __future__ import annotations

import ast
import tarfile
from typing import Any

import numpy as np

from .record import EVENT_DTYPE

# aodv2 writes no pax or long-name headers (short ASCII names); a path of PATH_MAX in one fits
MAX_EXT_HEADER = 16 * 1024  # one pax ('x', 'g') or GNU long-name ('L', 'K') header
MAX_EXT_TOTAL = 64 * 1024  # all of them in one archive: bounds tarfile's pax regex time (< 1 s)
_EXT_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
              tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 4096  # np.save writes 374 bytes for EVENT_DTYPE
EVENT_DESCR = np.lib.format.dtype_to_descr(EVENT_DTYPE)


class RefusedHeader(tarfile.HeaderError):
    """A header refused before tarfile reads it (not an InvalidHeaderError: those end the
    archive quietly after the first member; this one propagates)."""


class BoundedInfo(tarfile.TarInfo):
    """TarInfo that checks extended and sparse headers before tarfile processes them."""

    def _proc_member(self, tar: Any) -> Any:
        if self.type in _EXT_TYPES:
            if not 0 <= self.size <= MAX_EXT_HEADER:
                raise RefusedHeader(f"an extended tar header of {self.size} bytes (at most {MAX_EXT_HEADER})")
            used = getattr(tar, "aod_ext_bytes", 0) + self.size
            tar.aod_ext_bytes = used
            if used > MAX_EXT_TOTAL:
                raise RefusedHeader(f"extended tar headers of more than {MAX_EXT_TOTAL} bytes in all")
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise RefusedHeader("a sparse member (never in an aodv2 bundle)")
        return super()._proc_member(tar)  # type: ignore[misc]

    # pax GNU sparse formats 0.0, 0.1, 1.0 (1.0 reads its map from the data without bound)
    def _proc_gnusparse_00(self, *args: Any) -> Any:
        raise RefusedHeader("a sparse member (never in an aodv2 bundle)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


class BoundedTar(tarfile.TarFile):
    """TarFile whose members are BoundedInfo."""

    tarinfo = BoundedInfo
    aod_ext_bytes = 0


def load_events(data: bytes) -> np.ndarray:
    """events.npy as a read-only EVENT_DTYPE array. Checked before anything is allocated: the
    header's dtype must be exactly EVENT_DTYPE, the shape 1-d, the row count what the bytes hold.
    Raises ValueError."""
    if len(data) < 10 or data[:6] != NPY_MAGIC:
        raise ValueError("not a .npy file")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise ValueError(f"unsupported .npy format version {major}")
    if hlen > MAX_NPY_HEADER or start + hlen > len(data):
        raise ValueError(f"a .npy header of {hlen} bytes (at most {MAX_NPY_HEADER}, in a file of {len(data)})")
    try:
        header = ast.literal_eval(data[start:start + hlen].decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, UnicodeDecodeError):
        raise ValueError("unreadable .npy header") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("unreadable .npy header")
    if header["descr"] != EVENT_DESCR:
        raise ValueError(f"not aodv2 event records (dtype {str(header['descr'])[:80]!r})")
    shape = header["shape"]
    if header["fortran_order"] is not False or not (
            isinstance(shape, tuple) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0):
        raise ValueError(f"expected a 1-d array of event records, got shape {str(shape)[:40]}")
    n, body = shape[0], len(data) - start - hlen
    if n * EVENT_DTYPE.itemsize != body:
        raise ValueError(f"the header claims {n} records, the file holds {body // EVENT_DTYPE.itemsize}")
    return np.frombuffer(data, EVENT_DTYPE, count=n, offset=start + hlen)
