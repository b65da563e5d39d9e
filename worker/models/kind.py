"""What kind of model a name holds, decided before it is loaded: loading a cross-encoder as an embedding model
"works" (sentence-transformers converts it, dropping its classifier head) and yields meaningless vectors.

- A sentence-transformers folder says so itself: ``config_sentence_transformers.json``'s ``model_type``
  (``CrossEncoder`` is a reranker; ``SparseEncoder`` a sparse model, SPLADE or inference-free SPLADE;
  ``SentenceTransformer``, or none, an embedding model).
- A plain Hugging Face model (no ``modules.json``) with a sequence-classification head (``config.json``'s
  ``architectures``: ``...ForSequenceClassification``) is a reranker, as ``CrossEncoder`` loads it; any other
  architecture is an embedding model, as ``SentenceTransformer`` loads it (mean pooling).
"""

from __future__ import annotations

import json

from sentence_transformers.util import load_file_path

from shared.errors import ErrorKind, ServiceError
from shared.kinds import ModelKind

__all__ = ["ModelKind", "model_kind"]


_KIND_OF_TYPE: dict[str, ModelKind] = {
    "SentenceTransformer": "embedding",
    "CrossEncoder": "reranker",
    "SparseEncoder": "sparse",
    "MultiVectorEncoder": "multivector",
    "ColBERT": "multivector",  # PyLate 3's saves, which MultiVectorEncoder loads
}


def model_kind(source: str, *, token: str | None = None) -> ModelKind:
    """The kind of the model at ``source`` (a folder or a hub id); ServiceError for a kind this server does not
    serve. Hub errors propagate, as loading the model itself would raise them."""
    st_config = _read_json(source, "config_sentence_transformers.json", token)
    if st_config is not None or load_file_path(source, "modules.json", token=token) is not None:
        model_type = str((st_config or {}).get("model_type", "SentenceTransformer"))
        kind = _KIND_OF_TYPE.get(model_type)
        if kind is None:
            raise ServiceError(ErrorKind.INVALID_REQUEST, f"this server does not serve {model_type} models", "model")
        return kind
    architectures = (_read_json(source, "config.json", token) or {}).get("architectures")
    if isinstance(architectures, list) and any(
        str(name).endswith("ForSequenceClassification") for name in architectures
    ):
        return "reranker"
    return "embedding"


def _read_json(source: str, filename: str, token: str | None) -> dict[str, object] | None:
    path = load_file_path(source, filename, token=token)
    if path is None:
        return None
    with open(path, encoding="utf8") as file:
        content = json.load(file)
    return content if isinstance(content, dict) else None
