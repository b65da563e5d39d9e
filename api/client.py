"""Command-line client for asynchronous jobs: submit a file of texts, watch progress, save the vectors.

    python -m api.client submit texts.txt --model sentence-transformers/all-MiniLM-L6-v2 --out vectors.npy

The file holds one text per line, or JSON Lines (each line a JSON string, or an object with a "text" field).
The standard library, numpy and tqdm (the progress bar): it runs wherever the API's package is installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

TERMINAL = ("completed", "failed", "cancelled", "expired")


class ClientError(Exception):
    pass


def read_texts(path: Path) -> list[str]:
    texts = []
    jsonl = path.suffix in (".jsonl", ".ndjson")
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if jsonl:
            item = json.loads(line)
            texts.append(item["text"] if isinstance(item, dict) else str(item))
        else:
            texts.append(line)
    return texts


def call(base_url: str, method: str, path: str, api_key: str | None, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url.rstrip("/") + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ClientError(f"{method} {path}: {exc.code} {message}") from None


def _show(bar: tqdm, job: dict[str, Any]) -> None:
    counts = job["request_counts"]
    bar.update(counts["completed"] + counts["failed"] - bar.n)
    bar.set_postfix_str(job["status"])


def submit(args: argparse.Namespace) -> int:
    texts = read_texts(args.file)
    if not texts:
        raise ClientError(f"{args.file} holds no text")
    body = {"model": args.model, "input": texts, "encoding_format": "base64"}
    if args.dimensions:
        body["dimensions"] = args.dimensions
    job = call(args.url, "POST", "/v1/embeddings/jobs", args.api_key, body)
    with tqdm(total=len(texts), desc=job["id"], unit="text", file=sys.stderr) as bar:
        _show(bar, job)
        while job["status"] not in TERMINAL:
            time.sleep(args.poll)
            job = call(args.url, "GET", f"/v1/embeddings/jobs/{job['id']}", args.api_key)
            _show(bar, job)
    if job["status"] != "completed":
        raise ClientError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    result = call(args.url, "GET", f"/v1/embeddings/jobs/{job['id']}/result", args.api_key)
    rows = {item["index"]: np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in result["data"]}
    dim = len(next(iter(rows.values())))
    vectors = np.full((len(texts), dim), np.nan, dtype=np.float32)  # failed inputs stay NaN
    for index, row in rows.items():
        vectors[index] = row
    np.save(args.out, vectors)
    failed = job["request_counts"]["failed"]
    print(
        f"wrote {args.out}: {vectors.shape[0]} x {dim}" + (f", {failed} failed (NaN rows)" if failed else ""),
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    submit_parser = commands.add_parser("submit", help="embed a file of texts with an asynchronous job")
    submit_parser.add_argument("file", type=Path)
    submit_parser.add_argument("--model", required=True)
    submit_parser.add_argument("--out", type=Path, required=True, help="where to write the .npy of vectors")
    submit_parser.add_argument("--dimensions", type=int)
    submit_parser.add_argument("--url", default=os.environ.get("EMBEDDINGS_URL", "http://127.0.0.1:8000"))
    submit_parser.add_argument("--api-key", default=os.environ.get("EMBEDDINGS_API_KEY"))
    submit_parser.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    args = parser.parse_args(argv)
    try:
        return submit(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
