"""Redaction of captured text (collect layer: actionrun.py masks every capture of an action with
`redact=True` before it reaches the stage, so no password reaches a bundle).

A table of linear-time byte patterns for the forms mount.cifs, smbclient, net, sudo and their
logs use (docs/bundle-contents.md lists them), plus a word-by-word pass for smbclient's
positional password. A capped capture is first cut to whole lines (`cut_partial_line`), so a
secret split by the cap is dropped, never half kept.
"""

from __future__ import annotations

import re

# Secrets as mount.cifs, smbclient, net, sudo's COMMAND= lines, applications and their logs
# spell them, in any case. Each rule keeps the text before the secret (group "keep") and
# replaces the secret (group "val") by *** (a value that is one quoted string keeps its
# quotes). A key must start a word: mypassword=, bypass=, PASSWD_FILE= (a path), /etc/passwd
# and pam_unix(passwd:chauthtok) stay.
#
# Linear time on any input: a repeated part is always followed by a byte it cannot contain, and
# a form whose prefix can fail (user%, //user:) starts only where the previous attempt's scan
# stops, so no 1 MiB hostile line makes a pattern rescan it per position (measured by
# test_redaction_of_pathological_lines_finishes).

_KEYS = rb"(?:password2?|passwd|pass|credentials|cred)"
# a "..." (backslash escapes) or '...' string; unclosed, it runs to the line end
_QUOTED = rb""""(?:[^"\\\n]|\\.)*"?|'[^'\n]*'?"""


def _word(stop: bytes = b"") -> bytes:
    """Pattern of a password as one shell word: an opening quoted string, then bytes up to a
    blank (or `stop`: "," for mount options, where ",," is an escaped comma), quoted parts with
    blanks inside, and any quote followed by more of the word (a password containing a quote).
    A quote followed by a blank, `stop` or the line end is not taken: it closes a quote around
    the whole option (-o "password=x")."""
    end = rb"\s" + stop
    plain = rb"[^" + end + rb"\"']"
    more = rb"(?=[^" + end + rb"])"  # the word goes on after this quote
    if stop == b",":
        plain, more = rb",,|" + plain, rb"(?=[^" + end + rb"]|,,)"
    return (rb"(?:" + _QUOTED + rb")?(?:" + plain + rb"|\"" + more + rb"[^\"\n]*\"|'" + more
            + rb"[^'\n]*'|[\"']" + more + rb")*")


# key = value, key: value, key%3Dvalue (URL-encoded); not PAM's "(passwd:chauthtok)" service:type
_SEP = rb"(?:[ \t]*(?:=|:(?!(?:auth|account|session|chauthtok|password)\)))[ \t]*|%3[AD])"
# user%password: up to the quote that opened the user, else to the end of the word
_PCT_VALUE = rb"(?(q)(?:(?!(?P=q))[^\n])*|"

# (every group needs one of its markers in the lowercased text, or the rule is skipped; pattern)
_RULES: tuple[tuple[tuple[tuple[bytes, ...], ...], re.Pattern[bytes]], ...] = (
    # smb://user:password@server, //user:password@server (the password may contain @; a port
    # as in //server:445/share has no @ after it and stays)
    (((b"//",), (b"@",)),
     re.compile(rb"(?P<keep>//[^\s/:]*:)(?P<val>[^\s/]*)(?=@)")),
    # JSON / Python dict: "password": "..." or 'password': '...' or a bare value (number)
    (((b"pass", b"cred"),),
     re.compile(rb"""(?i)(?P<keep>(?P<q>["'])(?:--)?""" + _KEYS + rb"""(?P=q)[ \t]*:[ \t]*)"""
                rb"""(?P<val>"(?:[^"\\\n]|\\.)*"?|'[^'\n]*'?|[^\s"',:{}\[\]]+)""")),
    # password= pass= password2= passwd= credentials= cred= --password=, also PASSWD= (env),
    # with blanks or a colon as separator; the value ends at a comma (mount options) or blank
    (((b"pass", b"cred"),),
     re.compile(rb"(?i)(?<![\w/-])(?P<keep>(?:--)?" + _KEYS + _SEP + rb")(?P<val>" + _word(b",") + rb")")),
    # --password VALUE (smbclient, net, rpcclient)
    (((b"--password",),),
     re.compile(rb"(?i)(?<![\w-])(?P<keep>--password[ \t]+)(?P<val>" + _word() + rb")")),
    # username=/user= (mount.cifs options; USER= is smbclient's env) user%password, up to a comma
    # (the user part stops at = and &: user=bob&password%3D... is a URL query, not user%password)
    (((b"%",), (b"user",)),
     re.compile(rb"""(?i)(?<![\w-])(?P<keep>user(?:name)?[ \t]*=[ \t]*(?P<q>["'])?[^\s%"',=&]*%)"""
                rb"(?P<val>" + _PCT_VALUE + _word(b",") + rb"))")),
    # -U / --user user%password (smbclient, net, rpcclient): everything after the first %;
    # the option starts a word (after a blank or quote)
    (((b"%",), (b"-u",)),
     re.compile(rb"""(?<![^\s"'])(?P<keep>(?:-U[ \t]*|--[Uu][Ss][Ee][Rr](?:=|[ \t]+))(?P<q>["'])?[^\s%"']*%)"""
                rb"(?P<val>" + _PCT_VALUE + _word() + rb"))")),
)
_MASK = b"***"
_WHOLE_QUOTED = re.compile(rb""""(?:[^"\\\n]|\\.)*"|'[^'\n]*'""")


def _masked(value: bytes) -> bytes:
    """*** for a secret; one that is a single quoted string keeps its quotes ("***")."""
    return value[:1] + _MASK + value[:1] if _WHOLE_QUOTED.fullmatch(value) else _MASK


def _mask(m: re.Match[bytes]) -> bytes:
    return m.group("keep") + _masked(m.group("val"))


# smbclient [options] //server/share [options] PASSWORD [options]: the first argument after the
# service that is neither an option nor an option's value. Tokens are shell words (a quoted
# part is one word, so -c 'ls; get x' is one value; a quote without a closing one is an ordinary
# byte, so -W O'Brien does not swallow the rest of the line); the service may be quoted or
# \\server\share.
_TOKEN = re.compile(rb"""(?:"[^"\n]*"|'[^'\n]*'|[^\s"']+|["'])+""")
_SMBCLIENT = re.compile(rb"(?i)(?:^|[/=])smbclient$")  # the word that runs it (also COMMAND=/usr/bin/...)
_SERVICE = re.compile(rb"""["']?(?://|\\\\)""")
_SHELL_SEP = frozenset((b";", b"|", b"||", b"&", b"&&"))
# smbclient's options whose value may be the next argument
_SMB_ARG_SHORT = frozenset(b"AbcdDiIlLmMnOpRsStTUW")
_SMB_ARG_LONG = frozenset((
    b"--authentication-file", b"--client-protection", b"--command", b"--configfile", b"--debuglevel",
    b"--directory", b"--ip-address", b"--list", b"--log-basename", b"--max-protocol", b"--message",
    b"--name-resolve", b"--netbios-scope", b"--netbiosname", b"--option", b"--password", b"--port",
    b"--realm", b"--scope", b"--send-buffer", b"--signing", b"--simple-bind-dn", b"--socket-options",
    b"--tar", b"--timeout", b"--use-kerberos", b"--use-krb5-ccache", b"--user", b"--workgroup"))


def _takes_next(opt: bytes) -> bool:
    """Is the argument after this smbclient option its value (-U bob, --port 445, -NU bob)?"""
    if opt.startswith(b"--"):
        return b"=" not in opt and opt.lower() in _SMB_ARG_LONG
    for i, c in enumerate(opt[1:], 1):
        if c in _SMB_ARG_SHORT:  # the rest of the word is its value, or else the next word
            return i == len(opt) - 1
    return False


def _smbclient_password_spans(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each smbclient positional password in data[start:end] (one line)."""
    spans: list[tuple[int, int]] = []
    state = 0  # 0: no smbclient yet, 1: before the service, 2: after it
    skip = only_args = False
    for m in _TOKEN.finditer(data, start, end):
        word = m.group()
        if skip:
            skip = False
        elif word in _SHELL_SEP:
            state = 0
        elif state == 0:
            if _SMBCLIENT.search(word.strip(b"\"'")):
                state, only_args = 1, False
        elif word.startswith(b"-") and len(word) > 1 and not only_args:
            only_args = word == b"--"
            skip = _takes_next(word)
        elif state == 1:
            state = 2 if _SERVICE.match(word) else 1
        else:
            spans.append((m.start(), m.end()))
            state = 0
    return spans


def _mask_smbclient(data: bytes) -> bytes:
    """Mask smbclient's positional password on every line that has a smbclient command."""
    low = data.lower()
    out: list[bytes] = []
    done = 0
    pos = low.find(b"smbclient")
    while pos >= 0:
        start = data.rfind(b"\n", 0, pos) + 1
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        for a, b in _smbclient_password_spans(data, start, end):
            out += (data[done:a], _masked(data[a:b]))
            done = b
        pos = low.find(b"smbclient", end)
    return b"".join(out) + data[done:] if out else data


def redact(data: bytes) -> bytes:
    """Mask passwords and credential files in captured text (the forms above)."""
    low = data.lower()
    for needs, pattern in _RULES:
        if all(any(marker in low for marker in group) for group in needs):
            data = pattern.sub(_mask, data)
    if b"smbclient" in low:
        data = _mask_smbclient(data)
    return data


def cut_partial_line(data: bytes, keep: str) -> bytes:
    """A capped capture starts and ends at line boundaries, so no secret is cut in half where
    the regex would miss it: keep="tail" drops the partial first line, "head" the partial last."""
    if keep == "tail":
        nl = data.find(b"\n")
        return data[nl + 1 :] if nl >= 0 else b""
    nl = data.rfind(b"\n")
    return data[: nl + 1] if nl >= 0 else b""


def redact_capped(data: bytes, cut: str = "") -> bytes:
    """redact() a capped capture; cut="head"/"tail": it was truncated keeping that end, so the
    partial line at the cut is dropped first."""
    return redact(cut_partial_line(data, cut) if cut else data)
