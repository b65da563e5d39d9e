import sys
import tempfile
import time
from pathlib import Path

from bench.load import run_wrk
from tests.stack import free_port, running_stack, spawn, stop, wait_for_port

body = {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "The quick brown fox jumps over the lazy dog."}
port = free_port()
bare = spawn(
    [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_server:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ],
    Path("/tmp/bare.log"),
)
wait_for_port(port, 20)
time.sleep(1)
for c in (1, 64):
    print("bare", c, run_wrk(f"http://127.0.0.1:{port}/v1/embeddings", body, connections=c, seconds=5))
stop(bare)
with (
    tempfile.TemporaryDirectory() as d,
    running_stack(Path(d), ENCODER=sys.argv[1] if len(sys.argv) > 1 else "stub") as s,
):
    for c in (1, 64):
        print("stack", c, run_wrk(s.base_url + "/v1/embeddings", body, connections=c, seconds=5))
