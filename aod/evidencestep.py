"""Evidence steps: one request to the evidence helper per capture, one section per step (collect layer).

ring -> dispatch -> detect -> **collect** (actionrun.run_step -> here -> evidence_client -> the helper).

The first evidence step to run sends the request for every evidence section of the capture;
the others await the same answer. Each writes its readable file (evidence/<section>.txt) and
the raw section (evidence/<section>.json). No helper -> status "skipped", never an error.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any, Awaitable, Optional

from . import evidence_client
from .actions import Step
from .stageio import StageLike, in_thread, write_capped

if TYPE_CHECKING:
    from .actionrun import StepResult


class EvidenceFetch:
    """One request to the evidence helper per capture, shared by every evidence step: the first
    step to run sends it (for all the capture's sections); the others await the same answer."""

    def __init__(self, path: str, want: tuple[str, ...], pids: tuple[int, ...], timeout: float) -> None:
        self.path, self.want, self.pids, self.timeout = path, want, pids, timeout
        self._fut: Optional[asyncio.Future[dict[str, Any]]] = None

    def get(self) -> Awaitable[dict[str, Any]]:
        if self._fut is None:
            self._fut = asyncio.ensure_future(asyncio.wait_for(
                in_thread(evidence_client.request, self.path, self.want, self.pids, self.timeout),
                self.timeout + 0.5))
        return asyncio.shield(self._fut)


async def run_evidence(step: Step, stage: StageLike, fetch: Optional[EvidenceFetch], res: StepResult) -> None:
    res.source = f"aodv2 evidence ({step.evidence})"
    if fetch is None:
        res.status, res.error = "skipped", "skipped: no evidence request in this capture"
        return
    try:
        resp = await fetch.get()
    except evidence_client.Unavailable as e:
        res.status, res.error = "skipped", f"skipped: evidence helper not available ({e})"
        return
    except asyncio.TimeoutError:
        res.status, res.error = "timeout", f"no answer from the evidence helper within {fetch.timeout:g}s"
        return
    except evidence_client.EvidenceError as e:
        res.status, res.error = "failed", str(e)
        return
    section = resp.get(step.evidence)
    notes = {k: (resp.get(k) or {}).get(step.evidence) for k in ("errors", "missing")
             if isinstance(resp.get(k), dict)}
    text = evidence_client.render(step.evidence, resp)
    raw = json.dumps({step.evidence: section, **{k: v for k, v in notes.items() if v},
                      "truncated": bool((resp.get("truncated") or {}).get(step.evidence))}, indent=1).encode()
    res.bytes, res.truncated = await in_thread(write_capped, stage, step.dest, text, step.cap_bytes)
    size, cut = await in_thread(write_capped, stage, os.path.splitext(step.dest)[0] + ".json", raw,
                                step.cap_bytes)
    res.bytes += size
    res.truncated |= cut or bool((resp.get("truncated") or {}).get(step.evidence))
    if notes.get("missing") and not section:  # e.g. no tracer pinned its maps, no ss
        res.status, res.error = "missing", str(notes["missing"])
    elif notes.get("errors"):
        res.status = "ok" if section else "failed"
        res.error = str(notes["errors"])  # e.g. some stacks unreadable: the rest is kept
