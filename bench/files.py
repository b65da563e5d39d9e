"""``GET /v1/files`` with many batch outputs listed: what a file's ``bytes`` costs the listing.

    .venv/bin/python -m bench.run --only files [--listed-batches 1000]

Each batch lists its upload and its output file (no request fails, so it has no error file); the first listing
measures every output's size, later ones read the sizes it remembered. Timed from the client.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx

from bench.run import MODEL
from tests.stack import running_stack

_REQUESTS_PER_BATCH = 4


def _batch_lines(batch: int) -> bytes:
    rows = (
        {
            "custom_id": f"b{batch}-r{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": [f"batch {batch} request {i} text {j}" for j in range(8)]},
        }
        for i in range(_REQUESTS_PER_BATCH)
    )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def files_listing_section(logs: Path, batches: int) -> None:
    with running_stack(logs / "files") as stack, httpx.Client(base_url=stack.base_url + "/v1", timeout=600) as client:
        ids = []
        for number in range(batches):
            upload = {"file": ("batch.jsonl", io.BytesIO(_batch_lines(number)))}
            uploaded = client.post("/files", files=upload, data={"purpose": "batch"}).json()
            body = {"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
            ids.append(client.post("/batches", json=body).json()["id"])
        for batch_id in ids:
            while client.get(f"/batches/{batch_id}").json()["status"] != "completed":
                time.sleep(0.2)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            listed = client.get("/files").json()["data"]
            timings.append(time.perf_counter() - started)
        outputs = [item for item in listed if item["purpose"] == "batch_output"]
        assert sum(item["bytes"] > 0 for item in outputs) == batches, outputs[:4]
    print(f"\n## GET /v1/files: {len(listed)} files listed, {len(outputs)} of them batch outputs")
    print(f"first listing (every output measured) {timings[0] * 1000:.0f} ms; ", end="")
    print(f"then {timings[1] * 1000:.0f} and {timings[2] * 1000:.0f} ms (sizes remembered)")
