"""bpf/aod_event.h and aod/record.py agree: field by field, offset, size, type, constants.

Two independent checks: a small C declaration parser that computes natural
alignment itself, and (when gcc exists) the compiler's own offsetof/sizeof.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import pytest

from aod import record

HEADER = Path(__file__).resolve().parent.parent / "bpf" / "aod_event.h"

# C scalar type -> (numpy kind, size). char arrays are byte strings ("S").
C_TYPES = {
    "__u8": ("u", 1), "__u16": ("u", 2), "__u32": ("u", 4), "__u64": ("u", 8),
    "__s8": ("i", 1), "__s16": ("i", 2), "__s32": ("i", 4), "__s64": ("i", 8),
    "char": ("S", 1),
}


class CField(NamedTuple):
    name: str
    ctype: str
    count: Optional[int]  # array length, None for a scalar
    offset: int
    size: int


class CStruct(NamedTuple):
    fields: List[CField]
    size: int
    align: int


def strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", " ", src)


def parse_defines(src: str) -> Dict[str, int]:
    out = {}
    for name, val in re.findall(r"^[ \t]*#define[ \t]+(\w+)[ \t]+(\S+)[ \t]*$", strip_comments(src), re.M):
        try:
            out[name] = int(val, 0)
        except ValueError:
            pass
    return out


def parse_struct(src: str, name: str, defines: Dict[str, int]) -> CStruct:
    """Layout of `struct name` with natural C alignment (scalar align = size)."""
    m = re.search(r"struct\s+" + name + r"\s*\{(.*?)\}\s*;", strip_comments(src), re.S)
    assert m, f"struct {name} not found"
    fields, off, align = [], 0, 1
    for decl in (d.strip() for d in m.group(1).split(";")):
        if not decl:
            continue
        dm = re.fullmatch(r"(\w+)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?", decl)
        assert dm, f"cannot parse declaration {decl!r}"
        ctype, fname, dim = dm.groups()
        assert ctype in C_TYPES, f"unknown C type {ctype!r} in {decl!r}"
        count = None if dim is None else (int(dim, 0) if dim[0].isdigit() else defines[dim])
        esize = C_TYPES[ctype][1]
        off = -(-off // esize) * esize
        size = esize * (count or 1)
        fields.append(CField(fname, ctype, count, off, size))
        off += size
        align = max(align, esize)
    return CStruct(fields, -(-off // align) * align, align)


def compare(cs: CStruct, dt: np.dtype) -> List[str]:
    """Every difference between a C layout and a numpy dtype (empty list = identical)."""
    errs = []
    if list(dt.names or ()) != [f.name for f in cs.fields]:
        errs.append(f"field names/order: C {[f.name for f in cs.fields]} numpy {dt.names}")
    if dt.itemsize != cs.size:
        errs.append(f"size: C {cs.size} numpy {dt.itemsize}")
    for f in cs.fields:
        if dt.names is None or f.name not in dt.names:
            continue
        fdt, off = dt.fields[f.name][:2]
        if off != f.offset:
            errs.append(f"{f.name}: offset C {f.offset} numpy {off}")
        if fdt.itemsize != f.size:
            errs.append(f"{f.name}: size C {f.size} numpy {fdt.itemsize}")
        kind, esize = C_TYPES[f.ctype]
        if kind == "S":
            if fdt.kind != "S" or fdt.itemsize != (f.count or 1):
                errs.append(f"{f.name}: char[{f.count}] vs numpy {fdt.str}")
            continue
        base, shape = (fdt.subdtype if fdt.subdtype else (fdt, ()))
        want_shape = () if f.count is None else (f.count,)
        if shape != want_shape:
            errs.append(f"{f.name}: array shape C {want_shape} numpy {shape}")
        if (base.kind, base.itemsize) != (kind, esize):
            errs.append(f"{f.name}: type C {f.ctype} numpy {base.str} (signedness/width)")
        if base.str[0] not in "<|":
            errs.append(f"{f.name}: numpy {base.str} is not little-endian")
    return errs


@pytest.fixture(scope="module")
def header() -> str:
    return HEADER.read_text()


@pytest.fixture(scope="module")
def defines(header: str) -> Dict[str, int]:
    return parse_defines(header)


def test_parser_alignment_on_known_layout() -> None:
    src = "struct t { __u8 a; __u64 b; __u16 c; char d[3]; __s32 e; __u8 f; };"
    cs = parse_struct(src, "t", {})
    assert [(f.name, f.offset, f.size) for f in cs.fields] == [
        ("a", 0, 1), ("b", 8, 8), ("c", 16, 2), ("d", 18, 3), ("e", 24, 4), ("f", 28, 1)]
    assert (cs.size, cs.align) == (32, 8)


def test_event_struct_matches_dtype(header: str, defines: Dict[str, int]) -> None:
    cs = parse_struct(header, "aod_event", defines)
    assert compare(cs, record.EVENT_DTYPE) == []
    assert cs.size == record.EVENT_SIZE == 72


def test_cmd_stats_struct_matches_dtype(header: str, defines: Dict[str, int]) -> None:
    cs = parse_struct(header, "aod_cmd_stats", defines)
    assert compare(cs, record.CMD_STATS_DTYPE) == []
    assert cs.size == record.CMD_STATS_DTYPE.itemsize == (record.HIST_BUCKETS + 3) * 8
    v1 = parse_struct(header, "aod_cmd_stats_v1", defines)  # what aodv2 0.1 tracers pin
    assert compare(v1, record.CMD_STATS_V1_DTYPE) == []
    assert v1.size == (record.HIST_BUCKETS + 2) * 8 and record.CMD_STATS_VERSION == 2


def test_cmd_stats_from_v1_keeps_every_count() -> None:
    old = np.zeros(record.CMD_SLOTS, record.CMD_STATS_V1_DTYPE)
    old["hist"][5][3], old["latency_sum_ns"][5], old["errors"][7] = 11, 12345, 2
    new = record.cmd_stats_from_v1(old)
    assert new.dtype == record.CMD_STATS_DTYPE
    assert new["hist"][5][3] == 11 and new["latency_sum_ns"][5] == 12345 and new["errors"][7] == 2
    assert int(new["ignored"].sum()) == 0 and int(new["hist"].sum()) == 11


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: [(n, t) if n != "err" else (n, "<u4") for n, t in d],  # signedness
        lambda d: [(n, t) if n != "tree_id" else (n, "<u8") for n, t in d],  # width
        lambda d: [d[1], d[0]] + d[2:],  # order
        lambda d: [(n, t) if n != "mid" else (n, ">u8") for n, t in d],  # byte order
        lambda d: d[:-1],  # missing field
    ],
)
def test_compare_catches_mismatch(header: str, defines: Dict[str, int], mutate) -> None:  # type: ignore[no-untyped-def]
    base = [(n, record.EVENT_DTYPE.fields[n][0].str) for n in record.EVENT_DTYPE.names]
    assert compare(parse_struct(header, "aod_event", defines), np.dtype(mutate(base))) != []


def test_constants_match(defines: Dict[str, int]) -> None:
    aod = {k: v for k, v in defines.items() if k.startswith("AOD_") and k != "AOD_EVENT_H"}
    assert aod, "no AOD_ constants parsed"
    for cname, value in aod.items():
        py = cname[len("AOD_"):]
        assert hasattr(record, py), f"{cname} has no mirror {py} in aod/record.py"
        assert getattr(record, py) == value, f"{cname}={value} but record.{py}={getattr(record, py)}"
    for py in dir(record):
        if re.fullmatch(r"(KIND|TRACER)_[A-Z]+", py) and isinstance(getattr(record, py), int):
            assert f"AOD_{py}" in aod, f"record.{py} has no #define AOD_{py} in the header"
    assert set(record.KIND_NAMES) == {v for k, v in aod.items() if k.startswith("AOD_KIND_")}
    assert set(record.TRACER_NAMES) == {v for k, v in aod.items() if k.startswith("AOD_TRACER_")}
    assert record.EVENT_VERSION == 1 and record.CMD_SLOTS == 32 and record.HIST_BUCKETS == 32


def _c_program(dt_by_struct: Dict[str, np.dtype], types_include: str) -> str:
    lines = [
        "#include <stdio.h>", "#include <stddef.h>", types_include, '#include "aod_event.h"',
        "int main(void) {",
    ]
    for sname, dt in dt_by_struct.items():
        lines.append(
            f'printf("struct {sname} %zu %zu\\n", sizeof(struct {sname}), _Alignof(struct {sname}));'
        )
        for f in dt.names:
            fdt = dt.fields[f][0]
            arr = fdt.kind == "S" or fdt.subdtype is not None
            elem = f"((struct {sname} *)0)->{f}" + ("[0]" if arr else "")
            lines.append(
                f'printf("field {sname} {f} %zu %zu %zu %d\\n", offsetof(struct {sname}, {f}), '
                f"sizeof(((struct {sname} *)0)->{f}), sizeof({elem}), (int)((__typeof__({elem}))-1 < 0));"
            )
    for name in sorted(parse_defines(HEADER.read_text())):
        if name.startswith("AOD_") and name != "AOD_EVENT_H":
            lines.append(f'printf("define {name} %lld\\n", (long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


def test_gcc_agrees_with_dtype(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    structs = {"aod_event": record.EVENT_DTYPE, "aod_cmd_stats": record.CMD_STATS_DTYPE,
               "aod_cmd_stats_v1": record.CMD_STATS_V1_DTYPE}
    own_types = "\n".join([
        "#include <stdint.h>",
        "typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;",
        "typedef int8_t __s8; typedef int16_t __s16; typedef int32_t __s32; typedef int64_t __s64;",
    ])
    out = None
    for types_include in ("#include <linux/types.h>", own_types):
        src = tmp_path / "layout.c"
        src.write_text(_c_program(structs, types_include))
        exe = tmp_path / "layout"
        cc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [gcc, "-std=gnu11", "-Wall", "-Werror", "-I", str(HEADER.parent), "-o", str(exe), str(src)],
            capture_output=True, text=True, timeout=60,
        )
        if cc.returncode == 0:
            run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, check=True)  # noqa: S603
            out = run.stdout
            break
    assert out is not None, f"header does not compile: {cc.stderr}"
    seen = set()
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "struct":
            dt = structs[parts[1]]
            assert int(parts[2]) == dt.itemsize, line
            assert int(parts[3]) == max(dt.fields[n][0].base.alignment for n in dt.names), line
        elif parts[0] == "field":
            sname, f, off, size, esize, signed = parts[1], parts[2], *map(int, parts[3:])
            fdt, noff = structs[sname].fields[f][:2]
            base = fdt.subdtype[0] if fdt.subdtype else fdt
            assert off == noff, f"{sname}.{f}: offset gcc {off} numpy {noff}"
            assert size == fdt.itemsize, f"{sname}.{f}: size gcc {size} numpy {fdt.itemsize}"
            if fdt.kind == "S":
                assert esize == 1, line  # char: signedness is the platform's, bytes in numpy
            else:
                assert esize == base.itemsize, f"{sname}.{f}: element width gcc {esize} numpy {base.str}"
                assert bool(signed) == (base.kind == "i"), f"{sname}.{f}: signed {signed} numpy {base.str}"
            seen.add((sname, f))
        elif parts[0] == "define":
            assert getattr(record, parts[1][len("AOD_"):]) == int(parts[2]), line
    assert seen == {(s, f) for s, dt in structs.items() for f in dt.names}
    # no gaps in the dtype means sizeof() above also rules out C fields numpy lacks
    for dt in structs.values():
        assert sum(dt.fields[n][0].itemsize for n in dt.names) == dt.itemsize


def test_hist_bucket_is_log2_us_like_bpf() -> None:
    """bucket 0 = 0 us, bucket b = [2^(b-1), 2^b) us, capped at HIST_BUCKETS-1 (checked by bit_length)."""
    us = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, 1025, 2**20 - 1, 2**20, 2**30 - 1, 2**30, 2**31, 2**40, 2**53]
    ns = np.array([u * 1000 + 999 for u in us], dtype=np.uint64)
    want = [min(u.bit_length(), record.HIST_BUCKETS - 1) for u in us]
    assert record.hist_bucket(ns).tolist() == want
    assert record.hist_bucket(np.array([999], dtype=np.uint64)).tolist() == [0]


def test_empty_and_cmd_slot() -> None:
    e = record.empty(3)
    assert e.dtype == record.EVENT_DTYPE and (e["version"] == 1).all() and (e["size"] == 72).all()
    assert record.cmd_slot(np.array([0, 19, 31, 32, 65535])).tolist() == [0, 19, 31, 31, 31]
