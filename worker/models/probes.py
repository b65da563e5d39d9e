"""The probe inputs every load checks a model on, and how close two runs of them must be.

Short and long texts in one padded batch, so the attention mask's padded columns are exercised as a served batch
exercises them; for a model that takes images, seeded noise images of two sizes too (its vision tower's precision
is checked as its text tower's is).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.models.encoder import IMAGE_GROUP, SentenceTransformerEncoder
from worker.models.precision import Agreement, agreement
from worker.models.reranker import CrossEncoderReranker, PairTokens

PROBE_TEXTS = [
    "hello",
    "A short sentence about the weather in Lisbon.",
    " ".join(["Long inputs pad the batch and reach the attention mask's every column."] * 12),
    "Ünïcödé, emoji 🙂 and numbers 3.14159 also go through the tokenizer.",
]

#: how far a reranker's logits on another runtime may be from torch float32's (absolute, and relative to the logit)
RERANKER_TOLERANCE = 1e-4
#: how far a reranker's logits in bfloat16 or float16 may be from float32's, relative to the largest probe logit
#: (at least 1): a seeded MiniLM head with logits up to 8.4 measured 0.030 in bfloat16 and 0.003 in float16 on CPU;
#: what this catches is an overflow (inf, NaN) or a precision the model does not hold at all
REDUCED_RERANKER_TOLERANCE = 0.05


def probe_images() -> list[Image.Image]:
    rng = np.random.default_rng(2026)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for h, w in ((48, 64), (224, 160))]


def probe_vectors(encoder: SentenceTransformerEncoder) -> np.ndarray:
    """The encoder's vectors for the probe texts (one padded batch), then for the probe images where it takes
    images (one batch)."""
    vectors = encoder.encode_texts(PROBE_TEXTS)
    if "image" not in encoder.modalities:
        return vectors
    images = encoder.encode(encoder.image_inputs(probe_images()), IMAGE_GROUP)
    return np.concatenate([vectors, images])


def probe_agreement(reference: SentenceTransformerEncoder, candidate: SentenceTransformerEncoder) -> Agreement:
    """How close the two encoders' vectors are for the probe inputs."""
    return agreement(probe_vectors(reference), probe_vectors(candidate))


def probe_pairs(reranker: CrossEncoderReranker) -> list[PairTokens]:
    """A query with every probe text as its document."""
    return reranker.pairs(PROBE_TEXTS[1], PROBE_TEXTS, truncate=True)


def reduced_logits_agree(expected: np.ndarray, actual: np.ndarray) -> tuple[bool, float]:
    """Whether reduced-precision logits are within ``REDUCED_RERANKER_TOLERANCE`` of float32's; and the largest
    difference, relative to the largest float32 logit."""
    if not np.all(np.isfinite(actual)):
        return False, float("inf")
    scale = max(1.0, float(np.max(np.abs(expected))))
    difference = float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale
    return difference <= REDUCED_RERANKER_TOLERANCE, difference
