"""A test-only adaptation method, loaded by the server through PATCHSHIFT_ADAPTER_PLUGINS.

`test-hold` stays in "running" until the file named by PATCHSHIFT_TEST_RELEASE exists (or the job
is cancelled), then returns a copy of the source: kill -9 and cancellation tests need a job that
is running for as long as they want, whatever the machine's speed."""

import copy
import os
import time
from pathlib import Path

from patchshift.core.adapt.methods import Adapter, register
from patchshift.core.common.progress import check_cancel, report


def hold(model, target, cfg, report_, progress, cancel):
    release = Path(os.environ["PATCHSHIFT_TEST_RELEASE"])
    deadline = time.monotonic() + 600  # never hang a test run for good
    step = 0
    while not release.exists() and time.monotonic() < deadline:
        check_cancel(cancel)
        step += 1
        report(
            progress, "holding", min(step, 99), 100
        )  # progress > 0 shows the job is inside the adapter
        time.sleep(0.05)
    held = copy.copy(model)
    held.extractor = copy.deepcopy(model.extractor)
    held.provenance = copy.deepcopy(model.provenance)
    held.provenance.method, held.provenance.parent = "test-hold", model.version
    held.version = None
    report_.target_scores = None
    return held


register(Adapter("test-hold", "test only: holds the job until released", hold))
