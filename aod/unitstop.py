"""aodv2.service's ExecStopPost hook: the tracers stop when the core is stopped, not when it restarts.

Outside the data flow: unit wiring. The tracers are not PartOf= the core. systemd passes the
stop half of a restart to PartOf=/BindsTo= dependents (PropagatesStopTo=, 249+, too), so a
watchdog restart of the core detached the tracers and left aodv2 blind while bcc recompiled
(22 s in the VM). The ring is pinned so that either side can restart alone.

systemd runs this after every end of the core (`ExecStopPost=+/usr/bin/aodv2 stop-hook %n`) and
it asks systemd which job is ending the core:
  - a stop job (systemctl stop, disable --now, shutdown, isolate): stop every aodv2-tracer@ and
    aodv2-recorder@ unit with it, before `systemctl stop aodv2` returns;
  - a restart job (systemctl restart) or no job (the core died or the watchdog killed it, and
    Restart=on-failure brings it back): leave the tracers running.
The hook never fails the core's stop: every problem is one line on stderr (the journal) and exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Callable, Optional, Sequence

TRACERS = "aodv2-tracer@*.service"
RECORDERS = "aodv2-recorder@*.service"  # the flight recorders stop with the core the same way
UNIT_RE = re.compile(r"^[A-Za-z0-9@._:\\-]{1,256}$")
TIMEOUT_S = 25.0  # under the core's TimeoutStopSec=30s; a tracer stops in ~1 s

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def job_types(unit: str, run: Runner = _run) -> list[str]:
    """The types of the jobs systemd has queued or running for unit ("stop", "restart", ...)."""
    r = run(["systemctl", "list-jobs", "--no-legend", "--no-pager", "--", unit], TIMEOUT_S)
    types = []
    for line in r.stdout.splitlines():
        f = line.split()  # JOB UNIT TYPE STATE
        if len(f) >= 4 and f[1] == unit:
            types.append(f[2])
    return types


def decide(types: Sequence[str]) -> bool:
    """True when the tracers must stop: only a stop job ends the core for good."""
    return "stop" in types


def main(argv: Optional[Sequence[str]] = None, run: Runner = _run) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    unit = args[0] if args else "aodv2.service"
    if not UNIT_RE.match(unit):
        print(f"aodv2 stop-hook: not a unit name: {unit[:80]!r}; tracers left as they are", file=sys.stderr)
        return 0
    result = os.environ.get("SERVICE_RESULT", "?")
    try:
        types = job_types(unit, run)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"aodv2 stop-hook: cannot ask systemd for {unit}'s job ({e}); tracers left running", file=sys.stderr)
        return 0
    if not decide(types):
        why = f"a {types[0]} job" if types else f"no stop job (result {result}: an automatic restart or a failure)"
        print(f"aodv2 stop-hook: {unit} ended by {why}; tracers left running", file=sys.stderr)
        return 0
    try:
        r = run(["systemctl", "stop", "--", TRACERS, RECORDERS], TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"aodv2 stop-hook: stopping {TRACERS} {RECORDERS} failed: {e}", file=sys.stderr)
        return 0
    if r.returncode != 0:
        print(f"aodv2 stop-hook: systemctl stop {TRACERS} {RECORDERS} exited {r.returncode}: {r.stderr.strip()[:300]}",
              file=sys.stderr)
    else:
        print(f"aodv2 stop-hook: {unit} stopped; stopped {TRACERS} {RECORDERS} with it", file=sys.stderr)
    return 0
