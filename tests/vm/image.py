#!/usr/bin/env python3
"""Build (or find in the cache) the Debian VM image for the aodv2 VM harness, one per suite.

Sits outside the daemon's data flow: it makes the real-kernel test bed on which
tracers -> ring -> dispatch -> detect -> collect -> retain run end to end.

The suite is AOD_VM_SUITE: bullseye (11), bookworm (12, the default) or trixie (13).
The image is a rootfs of that suite made by mmdebstrap (minbase + systemd, kernel,
headers, samba, cifs-utils, bcc, the aodv2 runtime deps), with the files under
tests/vm/overlay/ laid on top (9p modules in the initramfs, fstab share line,
the oneshot runner unit).  It is turned into an ext4 image with `mkfs.ext4 -d`
and the kernel + initrd are copied next to it for direct kernel boot.

Result, cached outside the repo clone:
    ${AOD_VM_CACHE:-/var/cache/aodv2-vm}/<suite>-<key>/{rootfs.img,vmlinuz,initrd.img,manifest.json}
where <key> hashes every build input (this file, the package list, the
mirror lines, the overlay tree) and the archive's current version of every listed
package (read from the suite's Packages indexes), so a second run is instant and an
archive update (a new kernel, a bcc fix) builds a new image.

Usage: python3 tests/vm/image.py [--force] [--print-dir]
Needs root (mmdebstrap in root mode, chroot) and the Debian mirror.
"""
from __future__ import annotations

import argparse
import email.utils
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
OVERLAY = HERE / "overlay"
SUITES = ("bullseye", "bookworm", "trixie")
DEFAULT_SUITE = "bookworm"
DEFAULT_CACHE = "/var/cache/aodv2-vm"
HOSTNAME = "aodv2-vm"

# Guest packages.  Order does not matter; the list is part of the cache key.
PACKAGES: List[str] = [
    # boot + init
    "systemd", "systemd-sysv", "udev", "kmod", "dbus",
    "linux-image-amd64", "linux-headers-amd64", "initramfs-tools",
    # SMB server and client, traffic shaping; NFS server and client (#17: nfs tracer scenarios)
    "samba", "smbclient", "cifs-utils", "keyutils", "iproute2", "nfs-kernel-server", "nfs-common",
    # eBPF
    "python3-bpfcc", "bpfcc-tools",
    # aodv2 runtime deps (Debian names, as the .deb will depend on them)
    "python3", "python3-numpy", "python3-yaml", "python3-zstandard",  # not in bullseye: SUITE_DROP
    "python3-systemd", "python3-sdnotify",
    # quick actions / evidence tools and test conveniences
    "man-db", "procps", "psmisc", "util-linux", "zstd", "tcpdump", "trace-cmd",
    "python3-pytest", "less", "strace", "file",
    # operator tools (#8): metrics scraped by a real node_exporter, uploads with rclone;
    # security and disk-full faults (#7): loop-mounted small ext4
    "prometheus-node-exporter", "rclone", "curl", "e2fsprogs",
]

# Listed packages a suite's archive lacks; the .deb must work without them there.
SUITE_DROP: Dict[str, Tuple[str, ...]] = {"bullseye": ("python3-zstandard",)}


def suite() -> str:
    """AOD_VM_SUITE, checked (BuildError names the choices)."""
    s = os.environ.get("AOD_VM_SUITE") or DEFAULT_SUITE
    if s not in SUITES:
        raise BuildError(f"AOD_VM_SUITE={s!r}: expected one of {', '.join(SUITES)}")
    return s


def packages(suite_name: str) -> List[str]:
    drop = SUITE_DROP.get(suite_name, ())
    return [p for p in PACKAGES if p not in drop]


# Host tools the build and run.py need (Debian package -> a binary it provides).
HOST_DEPS: Dict[str, str] = {
    "gpgv": "gpgv",
    "mmdebstrap": "mmdebstrap",
    "qemu-system-x86": "qemu-system-x86_64",
    "qemu-utils": "qemu-img",
    "e2fsprogs": "mkfs.ext4",
}

# Units the test image does not need at boot (boot speed under TCG).
MASK_UNITS = [
    "nmbd.service", "samba-ad-dc.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
]
# smbd is started by guest/lib.sh after it wrote its own smb.conf.
# started by the scenarios that need them: not at every boot (nfsd threads, rpcbind, statd)
DISABLE_UNITS = ["smbd.service", "nfs-server.service", "rpcbind.service", "rpcbind.socket", "nfs-client.target"]
ENABLE_UNITS = ["aodv2-vmtest.service"]

# Docs and locales are dropped from the image (man pages stay: `man aodv2`).
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
]

FREE_SPACE_BYTES = 1536 * 1024 * 1024  # free room inside the guest root fs


class BuildError(Exception):
    """A clear, user-facing build failure (no traceback)."""


@dataclass(frozen=True)
class Image:
    """Paths of a built image (all in one cache directory)."""

    dir: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    manifest: Dict[str, object]


def log(msg: str) -> None:
    print(f"[vm-image] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- mirror


def _deb822_stanzas(text: str) -> Iterator[Dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: Dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        if fields:
            yield fields


def _source_pairs(name: str, text: str) -> List[Tuple[str, str]]:
    """(uri, suite) of every `deb` entry in one apt sources file (one-line or deb822)."""
    pairs: List[Tuple[str, str]] = []
    if name.endswith(".sources"):
        for st in _deb822_stanzas(text):
            if "deb" not in st.get("types", "").split():
                continue
            for uri in st.get("uris", "").split():
                for suite in st.get("suites", "").split():
                    pairs.append((uri, suite))
    else:
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb":
                pairs.append((parts[1], parts[2]))
    return pairs


def parse_debian_uris(files: Iterable[Tuple[str, str]]) -> Dict[str, str]:
    """{'debian': uri, 'security': uri} from (file name, content) pairs of apt sources.

    Any suite's lines count (the host may run another release than the guest: the archive URI
    serves every suite); missing ones fall back to deb.debian.org.
    """
    found: Dict[str, str] = {}
    for name, text in files:
        for uri, suite_name in _source_pairs(name, text):
            if not re.match(r"(bullseye|bookworm|trixie|forky|sid)\b", suite_name):
                continue
            if suite_name.endswith("-security") or "debian-security" in uri:
                found.setdefault("security", uri.rstrip("/"))
            elif "debian" in uri:
                found.setdefault("debian", uri.rstrip("/"))
    found.setdefault("debian", "http://deb.debian.org/debian")
    found.setdefault("security", "http://deb.debian.org/debian-security")
    return found


def host_debian_uris() -> Dict[str, str]:
    """The Debian archives this host's apt uses (the build must use the same, reachable, mirror).

    AOD_VM_MIRROR overrides the main archive URI.
    """
    paths = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        paths += sorted(d.iterdir())
    files = []
    for p in paths:
        try:
            files.append((p.name, p.read_text(errors="replace")))
        except OSError:
            continue
    found = parse_debian_uris(files)
    env = os.environ.get("AOD_VM_MIRROR")
    if env:
        found["debian"] = env.rstrip("/")
    return found


def mirror_lines(suite_name: str = DEFAULT_SUITE) -> List[str]:
    uris = host_debian_uris()
    return [
        f"deb {uris['debian']} {suite_name} main",
        f"deb {uris['debian']} {suite_name}-updates main",
        f"deb {uris['security']} {suite_name}-security main",
    ]


# ---------------------------------------------------------------- archive versions


INRELEASE_MAX = 4 << 20  # bytes; bookworm's is ~150 KB
PACKAGES_XZ_MAX = 64 << 20  # bytes; bookworm's main index is ~9 MB
PACKAGES_MAX = 512 << 20  # bytes once decompressed (~45 MB today)
FETCH_DEADLINE_S = 300.0
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _fetch(url: str, timeout: float = 60.0, limit: int = INRELEASE_MAX) -> bytes:
    """The body of `url`, at most `limit` bytes and FETCH_DEADLINE_S in all (BuildError beyond)."""
    end = time.monotonic() + FETCH_DEADLINE_S
    chunks: List[bytes] = []
    size = 0
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http(s) mirror from apt's sources
        while True:
            b = r.read(1 << 16)
            if not b:
                return b"".join(chunks)
            size += len(b)
            if size > limit:
                raise BuildError(f"{url}: more than {limit} bytes; refused")
            if time.monotonic() > end:
                raise BuildError(f"{url}: not read within {FETCH_DEADLINE_S:.0f} s")
            chunks.append(b)


def verified_release(data: bytes, keyring: str = ARCHIVE_KEYRING) -> str:
    """The signed text of an InRelease, checked by gpgv against the Debian archive keyring, and
    not past its Valid-Until (a replayed old InRelease would pin a stale image). BuildError else."""
    try:
        r = subprocess.run(["gpgv", "--keyring", keyring, "--output", "-", "-"],  # noqa: S603,S607
                           input=data, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"gpgv (package gpgv) could not check an InRelease: {e}") from None
    if r.returncode != 0:
        raise BuildError("InRelease signature not valid against " + keyring + ": "
                         + r.stderr.decode("utf-8", "replace").strip()[-300:])
    text = r.stdout.decode("utf-8", "replace")
    m = re.search(r"^Valid-Until:\s*(.+)$", text, re.M)
    if m:
        try:
            until = email.utils.parsedate_to_datetime(m.group(1).strip()).timestamp()
        except (TypeError, ValueError):
            raise BuildError(f"InRelease Valid-Until not understood: {m.group(1).strip()!r}") from None
        if until < time.time():
            raise BuildError(f"InRelease expired (Valid-Until {m.group(1).strip()}): a stale mirror or a replay")
    return text


def packages_index_sha(inrelease: str, member: str = "main/binary-amd64/Packages.xz") -> Optional[str]:
    """SHA256 of `member` from a Release/InRelease text, or None."""
    in_sha = False
    for line in inrelease.splitlines():
        if not line[:1].isspace():
            in_sha = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha and len(parts) == 3 and parts[2] == member and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            return parts[0]
    return None


def parse_packages(text: str, wanted: Iterable[str]) -> Dict[str, str]:
    """{package: version} of the `wanted` packages in a Packages index text."""
    want = set(wanted)
    out: Dict[str, str] = {}
    for st in _deb822_stanzas(text):
        name = st.get("package", "")
        if name in want and "version" in st:
            out[name] = st["version"]
    return out


def archive_versions(mirrors: List[str], wanted: List[str], cache: Path) -> Dict[str, str]:
    """{"<suite> <package>": version} of every wanted package in each mirror line's main index.

    Indexes are fetched only when their InRelease names a new hash (parsed results are kept in
    `cache`). Raises BuildError when the archive cannot be read or a package is in none of them."""
    out: Dict[str, str] = {}
    cache.mkdir(parents=True, exist_ok=True)
    for line in mirrors:
        _, uri, dist, _comp = line.split()
        try:
            raw_rel = _fetch(f"{uri}/dists/{dist}/InRelease")
        except (OSError, ValueError) as e:
            raise BuildError(f"cannot read {uri}/dists/{dist}/InRelease: {e}") from None
        rel = verified_release(raw_rel)
        sha = packages_index_sha(rel)
        if sha is None:
            raise BuildError(f"{uri}/dists/{dist}/InRelease lists no main/binary-amd64/Packages.xz")
        memo = cache / f"{sha}-{hashlib.sha256(' '.join(sorted(wanted)).encode()).hexdigest()[:12]}.json"
        try:
            found = json.loads(memo.read_text())
        except (OSError, ValueError):
            try:
                raw = _fetch(f"{uri}/dists/{dist}/main/binary-amd64/Packages.xz", limit=PACKAGES_XZ_MAX)
            except (OSError, ValueError) as e:
                raise BuildError(f"cannot read the {dist} Packages index: {e}") from None
            if hashlib.sha256(raw).hexdigest() != sha:
                raise BuildError(f"{dist} Packages.xz does not match its InRelease (mirror mid-update?)") from None
            dec = lzma.LZMADecompressor()
            try:
                text = dec.decompress(raw, max_length=PACKAGES_MAX)
            except lzma.LZMAError as e:
                raise BuildError(f"{dist} Packages.xz: {e}") from None
            if not dec.eof:
                raise BuildError(f"{dist} Packages.xz: more than {PACKAGES_MAX} bytes, or truncated; refused") from None
            found = parse_packages(text.decode("utf-8", "replace"), wanted)
            memo.write_text(json.dumps(found, sort_keys=True))
        out.update({f"{dist} {k}": v for k, v in found.items()})
    missing = [p for p in wanted if not any(k.split()[1] == p for k in out)]
    if missing:
        raise BuildError(f"not in the {mirrors[0].split()[2]} archive: {', '.join(missing)}")
    return out


# ---------------------------------------------------------------- cache key


def overlay_files() -> List[Path]:
    return sorted(p for p in OVERLAY.rglob("*") if p.is_file())


def cache_key(mirrors: List[str], versions: Optional[Dict[str, str]] = None,
              pkgs: Optional[List[str]] = None) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update("\n".join(sorted(PACKAGES if pkgs is None else pkgs)).encode())
    h.update("\n".join(mirrors).encode())
    h.update(json.dumps(versions or {}, sort_keys=True).encode())
    for p in overlay_files():
        rel = p.relative_to(OVERLAY).as_posix()
        h.update(f"\0{rel}\0{p.stat().st_mode & 0o777:o}\0".encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("AOD_VM_CACHE") or DEFAULT_CACHE)


def load_cached(d: Path) -> Optional[Image]:
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    paths = [d / "rootfs.img", d / "vmlinuz", d / "initrd.img"]
    if not all(p.is_file() for p in paths):
        return None
    return Image(d, paths[0], paths[1], paths[2], manifest)


# ---------------------------------------------------------------- host deps


def ensure_host_deps() -> None:
    missing = [pkg for pkg, exe in HOST_DEPS.items() if shutil.which(exe) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"missing host packages {missing}; install them as root: "
                         f"apt-get install {' '.join(missing)}")
    log(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env)
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


def run(argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
    try:
        subprocess.run(argv, check=True, env=env, stdin=subprocess.DEVNULL)  # noqa: S603 - fixed argv
    except FileNotFoundError as e:
        raise BuildError(f"{argv[0]}: not found ({e})") from None
    except subprocess.CalledProcessError as e:
        raise BuildError(f"command failed (exit {e.returncode}): {' '.join(argv)}") from None


# ---------------------------------------------------------------- build

# Log lines (mmdebstrap --verbose) that start a build phase we time.  Inside
# "install" apt first downloads everything (install-download), then dpkg
# unpacks and configures (install-dpkg).
PHASES = [
    ("download-essential", re.compile(r"^I: downloading packages")),
    ("extract", re.compile(r"^I: extracting archives")),
    ("install-essential", re.compile(r"^I: installing essential packages")),
    ("install-download", re.compile(r"^I: installing remaining packages")),
    ("install-dpkg", re.compile(r"^(Preparing to unpack|Selecting previously unselected)")),
    ("cleanup", re.compile(r"^I: running --customize-hook|^I: cleaning package lists")),
]
FETCHED = re.compile(r"^Fetched (\S+ \S+) in (\S+)")


def mmdebstrap(rootfs: Path, mirrors: List[str], logf: Path, suite_name: str,
               pkgs: List[str]) -> Dict[str, object]:
    """Run mmdebstrap into directory `rootfs`; return seconds per phase (+ apt 'Fetched' lines)."""
    if " " in str(OVERLAY):
        raise BuildError(f"overlay path must not contain spaces: {OVERLAY}")
    argv = [
        "mmdebstrap", "--verbose", "--variant=minbase", "--mode=root", "--format=directory",
        "--include=" + ",".join(pkgs),
        "--dpkgopt=force-unsafe-io",
        *[f"--dpkgopt={x}" for x in DPKG_EXCLUDES],
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        # Overlay before the kernel package runs update-initramfs, so the 9p
        # modules list (usr/share/initramfs-tools/modules.d) is honoured.
        "--essential-hook=sync-in " + str(OVERLAY) + " /",
        suite_name, str(rootfs), *mirrors,
    ]
    log(f"mmdebstrap --variant=minbase {suite_name} ... {len(pkgs)} packages (log: {logf})")
    start = time.monotonic()
    marks: List[Tuple[str, float]] = [("setup", start)]
    fetched: List[str] = []
    with open(logf, "w") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: S603
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(f"{time.monotonic() - start:8.1f} {line}")
            m = FETCHED.search(line)
            if m:
                fetched.append(f"{m.group(1)} in {m.group(2)}")
            done = [n for n, _ in marks]
            for i, (name, rx) in enumerate(PHASES):
                # phases start in order: each needs the one before it to have started
                if name not in done and (i == 0 or PHASES[i - 1][0] in done) and rx.search(line):
                    marks.append((name, time.monotonic()))
                    log(f"  {time.monotonic() - start:6.1f}s phase {name}")
        rc = proc.wait()
    marks.append(("end", time.monotonic()))
    if rc != 0:
        tail = logf.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"mmdebstrap failed (exit {rc}); last lines:\n" + "\n".join(tail))
    phases: Dict[str, object] = {
        marks[i][0]: round(marks[i + 1][1] - marks[i][1], 1) for i in range(len(marks) - 1)}
    phases["apt_fetched"] = fetched
    return phases


def customize(rootfs: Path) -> None:
    """Post-install settings done from the host on the rootfs directory."""
    (rootfs / "etc/hostname").write_text(HOSTNAME + "\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
                                      "::1\tlocalhost ip6-localhost ip6-loopback\n")
    for d in ("share", "mnt/smb", "var/log/aodv2"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    # Overlay files belong to root whatever uid owns the repo clone.
    for p in overlay_files():
        target = rootfs / p.relative_to(OVERLAY)
        os.chown(target, 0, 0)
    run(["chroot", str(rootfs), "passwd", "--delete", "root"])
    root = f"--root={rootfs}"
    run(["systemctl", root, "enable", *ENABLE_UNITS])
    run(["systemctl", root, "disable", *DISABLE_UNITS])
    run(["systemctl", root, "mask", *MASK_UNITS])
    # Apt lists and caches are not needed in a test image.
    for d in ("var/lib/apt/lists", "var/cache/apt"):
        for p in (rootfs / d).glob("*"):
            if p.is_file():
                p.unlink()


def check_initrd(rootfs: Path, kver: str) -> None:
    """Warn (not fail: udev loads them from the rootfs too) if 9p is not in the initrd."""
    out = subprocess.run(  # noqa: S603 - fixed argv
        ["chroot", str(rootfs), "lsinitramfs", f"/boot/initrd.img-{kver}"],
        capture_output=True, text=True).stdout
    if "9pnet_virtio.ko" not in out:
        log("warning: 9pnet_virtio not found in the initramfs")


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", "--apparent-size", str(path)],  # noqa: S603
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def make_ext4(rootfs: Path, img: Path) -> int:
    used = du_bytes(rootfs)
    size = (int(used * 1.15) + FREE_SPACE_BYTES) // (1 << 20) * (1 << 20)
    with open(img, "wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-L", "aodv2root", "-E", "root_owner=0:0",
         "-d", str(rootfs), str(img)])
    return size


def build(dest: Path, mirrors: List[str], suite_name: str, pkgs: List[str],
          versions: Dict[str, str]) -> Image:
    t0 = time.monotonic()
    work = dest.with_name(dest.name + f".build-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rootfs = work / "rootfs"
    try:
        phases = mmdebstrap(rootfs, mirrors, work / "mmdebstrap.log", suite_name, pkgs)
        t1 = time.monotonic()
        customize(rootfs)
        kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise BuildError("no kernel in rootfs/boot")
        kver = kernels[-1].name[len("vmlinuz-"):]
        initrd = rootfs / "boot" / f"initrd.img-{kver}"
        if not initrd.is_file():
            raise BuildError(f"no initrd for kernel {kver}")
        shutil.copyfile(kernels[-1], work / "vmlinuz")
        shutil.copyfile(initrd, work / "initrd.img")
        check_initrd(rootfs, kver)
        pkgs = subprocess.run(  # noqa: S603 - fixed argv
            ["chroot", str(rootfs), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
            check=True, capture_output=True, text=True).stdout.splitlines()
        t2 = time.monotonic()
        log("mkfs.ext4 -d ...")
        size = make_ext4(rootfs, work / "rootfs.img")
        t3 = time.monotonic()
        shutil.rmtree(rootfs)
        manifest: Dict[str, object] = {
            "key": dest.name, "suite": suite_name, "kernel": kver, "mirrors": mirrors,
            "archive_versions": versions,
            "image_bytes": size, "packages": len(pkgs),
            "versions": {p.split()[0]: p.split()[1] for p in pkgs if len(p.split()) == 2},
            "timings_s": {"mmdebstrap": round(t1 - t0, 1), "mmdebstrap_phases": phases,
                          "customize": round(t2 - t1, 1), "mkfs": round(t3 - t2, 1),
                          "total": round(time.monotonic() - t0, 1)},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    img = load_cached(dest)
    assert img is not None
    return img


def prune_cache(root: Path, keep: str, spare: int = 2) -> List[Path]:
    """Delete cached images of keep's suite other than `keep`, sparing the `spare` most recent
    ones, and every image of the older, suite-less harness (<key> only) unused for a day; other
    suites' stay."""
    prefix = keep.split("-")[0]
    mine = [d for d in root.iterdir()
            if d.is_dir() and d.name != keep and re.fullmatch(rf"{re.escape(prefix)}-[0-9a-f]{{16}}", d.name)]
    mine.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    day = time.time() - 86400  # a suite-less image used in the last day may serve an older checkout
    legacy = [d for d in root.iterdir()
              if d.is_dir() and re.fullmatch(r"[0-9a-f]{16}", d.name) and d.stat().st_mtime < day]
    gone = mine[spare:] + legacy
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
        try:
            (root / f"{d.name}.lock").unlink()
        except OSError:
            pass
    return gone


def image_key(suite_name: str) -> Tuple[str, List[str], List[str], Dict[str, str]]:
    """(cache dir name, mirror lines, packages, archive versions) for a suite."""
    mirrors = mirror_lines(suite_name)
    pkgs = packages(suite_name)
    versions = archive_versions(mirrors, pkgs, cache_root() / "indexes")
    return f"{suite_name}-{cache_key(mirrors, versions, pkgs)}", mirrors, pkgs, versions


def ensure_image(force: bool = False, suite_name: Optional[str] = None) -> Image:
    """Return the cached image of the suite (AOD_VM_SUITE) for the current inputs and archive,
    building it if needed."""
    suite_name = suite_name or suite()
    key, mirrors, pkgs, versions = image_key(suite_name)
    root = cache_root()
    dest = root / key
    if not force:
        img = load_cached(dest)
        if img is not None:
            return img
    if os.geteuid() != 0:
        raise BuildError(f"no cached VM image at {dest} and building one needs root")
    ensure_host_deps()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # one builder per key; others wait, then reuse
        if not force:
            img = load_cached(dest)
            if img is not None:
                return img
        log(f"building VM image {key} in {root} (mirror {mirrors[0].split()[1]})")
        img = build(dest, mirrors, suite_name, pkgs, versions)
        for d in prune_cache(root, key):
            log(f"removed old cached image {d}")
    t = img.manifest.get("timings_s", {})
    log(f"built {img.dir} in {t.get('total') if isinstance(t, dict) else '?'} s")
    return img


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--print-dir", action="store_true", help="print only the image dir")
    ap.add_argument("--key", action="store_true", help="print the cache key and exit")
    args = ap.parse_args(argv)
    try:
        if args.key:
            print(image_key(suite())[0])
            return 0
        img = ensure_image(force=args.force)
    except BuildError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    if args.print_dir:
        print(img.dir)
    else:
        print(json.dumps({k: v for k, v in img.manifest.items() if k != "versions"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
