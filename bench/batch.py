"""The Batch API measured: a batch of short texts end to end, and the same kind of texts sent as sync requests.

    .venv/bin/python -m bench.run --only batch [--batch-lines 50000]

Timed from the client, as a user sees it: upload, create (the file validated and its chunks queued), the run to
``completed``, and the download of the output file (streamed, counted, not kept). The API's peak resident memory
(``VmHWM``) and CPU time tell whether any of that held the whole file. Then the same stack serves sync requests
(wrk, two shapes) for the throughput a batch is compared with.
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import httpx
import openai

from bench.run import MODEL, SHORT, WORKLOADS, drive, measure_limit, sentence, texts_per_s
from tests.stack import running_stack


def batch_file(lines: int, words: int = 12) -> bytes:
    rng = random.Random(7)
    rows = (
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": text}}
        for i, text in enumerate(sentence(rng, words) for _ in range(lines))
    )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def large_file_section(logs: Path, lines: int = 48_000) -> None:
    """A file near OpenAI's 200 MB limit (long texts): upload and create, then cancel; the API's memory."""
    data = batch_file(lines, words=550)
    with running_stack(logs / "batch-large") as stack:
        assert stack.api is not None
        with openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:
            client.embeddings.create(model=MODEL, input="warm up")
            rss_before = _proc_status(stack.api.pid, "VmRSS")
            started = time.monotonic()
            uploaded = client.files.create(file=("large.jsonl", io.BytesIO(data)), purpose="batch")
            uploaded_at = time.monotonic()
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
            created_at = time.monotonic()
            client.batches.cancel(batch.id)
            peak = _proc_status(stack.api.pid, "VmHWM")
    print(f"\n## Batch API: a {len(data) / 1e6:.0f} MB file ({lines} requests of one long text): upload and create")
    print(f"upload {uploaded_at - started:.1f} s, create {created_at - uploaded_at:.1f} s; API resident ", end="")
    print(f"{rss_before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB")


def _proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise KeyError(field)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def batch_section(logs: Path, lines: int, seconds: float) -> None:
    data = batch_file(lines)
    ceiling, _, _ = measure_limit(SHORT, "openvino")
    with running_stack(logs / "batch") as stack:
        assert stack.api is not None
        api_pid = stack.api.pid
        with openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:
            client.embeddings.create(model=MODEL, input="warm up")
            rss_before = _proc_status(api_pid, "VmRSS")
            cpu_before = _cpu_s(api_pid)
            started = time.monotonic()
            uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
            uploaded_at = time.monotonic()
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
            created_at = time.monotonic()
            peak_after_create = _proc_status(api_pid, "VmHWM")
            while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired"):
                time.sleep(0.5)
            completed_at = time.monotonic()
            assert batch.status == "completed" and batch.request_counts.completed == lines, batch
            size = 0
            with httpx.stream("GET", f"{stack.base_url}/v1/files/{batch.output_file_id}/content", timeout=600) as out:
                for piece in out.iter_bytes():
                    size += len(piece)
            downloaded_at = time.monotonic()
            peak = _proc_status(api_pid, "VmHWM")
            cpu = _cpu_s(api_pid) - cpu_before
        sync = [(workload, drive(stack.base_url, workload, seconds, stack.redis_url)) for workload in WORKLOADS[1:3]]

    run_s = completed_at - created_at
    print(f"\n## Batch API: {lines} requests of one short text, float output (this project's defaults)")
    print(f"{'step':<40} {'seconds':>8}")
    print(f"{'upload ' + f'{len(data) / 1e6:.1f} MB':<40} {uploaded_at - started:8.1f}")
    print(f"{'create (validate, queue the chunks)':<40} {created_at - uploaded_at:8.1f}")
    print(f"{'run to completed':<40} {run_s:8.1f}")
    print(f"{'download ' + f'{size / 1e6:.0f} MB output':<40} {downloaded_at - completed_at:8.1f}")
    print(
        f"API: resident {rss_before / 1024:.0f} MB before, peak {peak_after_create / 1024:.0f} MB after create, "
        f"{peak / 1024:.0f} MB by the end of the download; {cpu:.1f} s of CPU in all"
    )
    print(f"\n{'the same kind of texts':<40} {'texts/s':>8} {'x sync':>7} {'x in-process':>12}")
    batch_rate = lines / run_s
    end_to_end = lines / (downloaded_at - started)
    for workload, result in sync:
        rate = texts_per_s(result, workload)
        print(f"{'sync, ' + workload.name:<40} {rate:8.0f} {'':>7} {rate / ceiling:12.2f}")
    best_sync = max(texts_per_s(result, workload) for workload, result in sync)
    print(f"{'in-process ceiling (OpenVINO)':<40} {ceiling:8.0f}")
    for name, rate in (("batch (create to completed)", batch_rate), ("batch (upload to downloaded)", end_to_end)):
        print(f"{name:<40} {rate:8.0f} {rate / best_sync:7.2f} {rate / ceiling:12.2f}")
