"""Work functions for job tests, run by service.job_worker in a real subprocess."""

from __future__ import annotations

import os
import time


def slow(params, report):
    """Reports progress every `delay` seconds for `steps` steps."""
    steps = int(params.get("steps", 100))
    for step in range(steps):
        report(step / steps, f"step {step}")
        time.sleep(float(params.get("delay", 0.1)))
    return {"steps": steps}


def fail(params, report):
    report(0.5, "about to fail")
    raise RuntimeError("boom")


def environment(params, report):
    return {"admin_token_seen": os.environ.get("SBIR_ADMIN_TOKEN")}
