"""The packet recorder's ring names are ones Debian's enforcing AppArmor profile for tcpdump lets
it write (the minbase VM runs no AppArmor, so only this check sees a violation)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from aod.configrecorder import PCAP_PREFIX, PcapRecorderConfig
from aod.recordpcap import pcap_argv

PROFILE = Path("/etc/apparmor.d/usr.bin.tcpdump")  # shipped by Debian's tcpdump (tests/run installs it)


def aa_regex(glob: str) -> re.Pattern[str]:
    """An AppArmor path glob as a regex: ** any chars, * any but '/', [..] a class, {a,b} alternatives."""
    out, i = "", 0
    while i < len(glob):
        ch = glob[i]
        if glob.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "[":
            j = glob.index("]", i)
            out, i = out + glob[i:j + 1], j + 1
            continue
        elif ch == "{":
            j = glob.index("}", i)
            out, i = out + "(?:" + "|".join(re.escape(x) for x in glob[i + 1:j].split(",")) + ")", j + 1
            continue
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + r"\Z")


def writable_globs(text: str) -> list[str]:
    rules = []
    for line in text.splitlines():
        m = re.match(r"^\s*(?:owner\s+)?(/\S+)\s+([a-z]+),\s*$", line)
        if m and "w" in m.group(2):
            rules.append(m.group(1))
    return rules


def test_the_profile_parser_can_refuse() -> None:
    rules = writable_globs("  /**.[pP][cC][aA][pP] rw,\n  audit deny @{HOME}/.* mrwkl,\n  /tmp/x r,\n")
    assert rules == ["/**.[pP][cC][aA][pP]"]
    assert aa_regex(rules[0]).match("/var/lib/aodv2/pcap/smb.pcap")
    assert not aa_regex(rules[0]).match("/var/lib/aodv2/pcap/smb.pcap0")
    assert not aa_regex(rules[0]).match("/var/lib/aodv2/pcap/smb.dump")


def test_ring_files_match_a_writable_rule_of_debians_profile() -> None:
    if not PROFILE.exists():
        pytest.skip(f"{PROFILE} missing: install Debian's tcpdump (tests/run does)")
    rules = [aa_regex(g) for g in writable_globs(PROFILE.read_text())]
    cfg = PcapRecorderConfig()
    argv = pcap_argv("/usr/bin/tcpdump", cfg)
    base = argv[argv.index("-w") + 1]
    assert os.path.basename(base) == PCAP_PREFIX
    # tcpdump -C/-W names the files base + the file number (zero-padded to the width of files-1)
    width = len(str(cfg.files - 1))
    names = [base] + [f"{base}{n:0{width}d}" for n in range(cfg.files)] + [f"{base}{n}" for n in range(100)]
    refused = [n for n in names[1:] if not any(r.match(n) for r in rules)]
    assert not refused, refused
    # and the check is real: a name outside the profile is refused
    assert not any(r.match("/var/lib/aodv2/pcap/smb.ring0") for r in rules)
