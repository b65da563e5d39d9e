"""``python -m worker``: run one embedding worker until SIGINT or SIGTERM."""

import asyncio
import logging
import os
import sys

import uvloop

from shared import tracing
from shared.settings import get_settings
from shared.tracing import TracingMisconfigured
from worker.app import build_worker
from worker.cuda_driver import CudaUnusable, require_usable_cuda
from worker.models.precision import PrecisionUnavailable


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("arq").setLevel(logging.WARNING)  # arq logs two lines a job at INFO
    # arq runs on the thread's event loop; uvloop's socket I/O costs a fraction of asyncio's, per Redis round trip
    asyncio.set_event_loop(uvloop.new_event_loop())
    try:
        require_usable_cuda(settings.device)
        tracing.configure("embeddings-worker")
        worker = build_worker(settings)
    except (PrecisionUnavailable, TracingMisconfigured, CudaUnusable) as exc:
        logging.getLogger("worker").error("%s", exc)
        sys.exit(2)
    worker.run()
    tracing.flush()
    logging.shutdown()
    # past SHUTDOWN_GRACE_S a model thread may still be inside a forward pass for jobs the worker already gave up
    # (their leases lapse and another worker runs them): leave now rather than join that thread at exit
    os._exit(0)


if __name__ == "__main__":
    main()
