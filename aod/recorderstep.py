"""Recorder steps: freeze a flight recorder's last window into the bundle (collect layer).

ring -> dispatch -> detect -> **collect** (actionrun.run_step -> here -> tracefreeze / pcapfreeze,
pcapscrub).

trace_recorder writes recorder/trace.txt from the tracefs instance, packet_recorder writes
recorder/smb.pcap from the tcpdump ring, scrubbed of file data (recorder.pcap.scrub). A recorder
that is down, or has nothing, never fails the capture: the step is "missing" and its error says
what the recorder's unit last reported.
What a freeze had to leave out (a cut, a corrupt ring file) is in the step's error with status ok.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from . import pcapfreeze, pcapscrub, safefs, tracefreeze
from .actions import ActionEnv, Step
from .configrecorder import PCAP_PREFIX
from .stageio import StageLike, in_thread, write_capped
from .tracerstate import read_recorder

if TYPE_CHECKING:
    from .actionrun import StepResult

UNITS = {"trace": "aodv2-recorder@trace.service", "pcap": "aodv2-recorder@pcap.service"}


def recorder_state(env: ActionEnv, name: str) -> str:
    """What the recorder unit last said, for a step's error: "aodv2-recorder@NAME: STATE (why)"."""
    d, state = read_recorder(env.run_dir, name)
    if not d:
        return f"{UNITS[name]} has not run (no {env.run_dir}/recorder-{name}.json)"
    err = d.get("error")
    return f"{UNITS[name]}: {state}" + (f" ({err})" if isinstance(err, str) and err else "")


def _low_space(path: str, floor: int = 1 << 20) -> str:
    """Why the recorder may have nothing: its filesystem is (nearly) full."""
    try:
        st = os.statvfs(path)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    return f"the filesystem of {path} is full ({free} bytes free): tcpdump cannot write" if free < floor else ""


def _note_unless_recording(env: ActionEnv, name: str, notes: list[str]) -> None:
    if read_recorder(env.run_dir, name)[1] != "recording":
        notes.append(recorder_state(env, name))


async def run_recorder(step: Step, stage: StageLike, timeout: float, env: ActionEnv, res: StepResult) -> None:
    deadline = time.monotonic() + max(0.1, timeout - 0.2)
    if step.recorder == "trace":
        inst = next((p for p in step.files if os.path.isdir(p)), None)
        if inst is None:
            res.status = "missing"
            where = f"{', '.join(step.files)} absent" if step.files else "no tracefs to look in"
            res.error = f"no trace recorder instance ({where}); {recorder_state(env, 'trace')}"
            return
        res.source = inst
        try:
            fz = await asyncio.wait_for(in_thread(tracefreeze.freeze, inst, step.window_start, step.cap_bytes,
                                                  deadline), timeout)
        except asyncio.TimeoutError:
            res.status, res.error = "timeout", f"reading the trace of {inst} took over {timeout:g}s"
            return
        except OSError as e:
            res.status, res.error = "failed", f"{e.filename or inst}: {e.strerror or e}; {recorder_state(env, 'trace')}"
            return
        data, notes, res.truncated = fz.data, list(fz.notes), fz.truncated
        if not fz.lines:
            notes.append(f"no events in the last {time.time() - step.window_start:.0f} s")
        _note_unless_recording(env, "trace", notes)  # an instance left behind may be stale
    else:
        ring = step.files[0]
        try:  # the recorder refuses a ring directory others could write: so does the capture
            safefs.check_dir(ring, "recorder.pcap.dir")
        except (safefs.UnsafePath, OSError) as e:
            res.status, res.error = "failed", f"ring directory refused: {e}"
            return
        window = max(0.0, time.time() - step.window_start)
        try:
            pz = await asyncio.wait_for(in_thread(pcapfreeze.freeze, ring, time.time(), window, step.cap_bytes,
                                                  PCAP_PREFIX, deadline), timeout)
        except asyncio.TimeoutError:
            res.status, res.error = "timeout", f"reading the packet ring {ring} took over {timeout:g}s"
            return
        res.source = ring
        data, notes, res.truncated = pz.data, list(pz.notes), pz.truncated
        _note_unless_recording(env, "pcap", notes)
        full = _low_space(ring)
        if full:
            notes.append(full)
        if not pz.packets:
            res.status, res.error = "missing", "; ".join(notes) or f"no packets in {ring}"
            return
        if step.redact:  # recorder.pcap.scrub: no file data in the bundle
            data, n = await in_thread(pcapscrub.scrub, data)
            if n:
                notes.append(f"{n} of {pz.packets} frames cut to their headers (TCP segments that continue a "
                             "message: file data)")
    res.bytes, cut = await in_thread(write_capped, stage, step.dest, data, step.cap_bytes)
    res.truncated = res.truncated or cut
    res.error = "; ".join(notes)[:2000]

