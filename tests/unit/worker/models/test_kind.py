"""A model's kind from its files alone: folders written here hold only the JSON files the decision reads."""

import json
from pathlib import Path

import pytest

from shared.errors import ServiceError
from worker.models.kind import model_kind


def folder(tmp_path: Path, **files: object) -> str:
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    return str(tmp_path)


def test_sentence_transformers_says_its_own_kind(tmp_path):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    ]
    assert (
        model_kind(folder(tmp_path, modules=modules, config_sentence_transformers={"model_type": "CrossEncoder"}))
        == "reranker"
    )


def test_an_older_sentence_transformer_has_no_model_type(tmp_path):
    (tmp_path / "typed").mkdir()
    (tmp_path / "bare").mkdir()
    config = {"__version__": {"sentence_transformers": "2.2.2"}}
    assert model_kind(folder(tmp_path / "typed", modules=[], config_sentence_transformers=config)) == "embedding"
    # modules.json alone, beside a classifier's config.json: sentence-transformers loads it as an embedding model
    bare = folder(tmp_path / "bare", modules=[], config={"architectures": ["BertForSequenceClassification"]})
    assert model_kind(bare) == "embedding"


def test_a_plain_classifier_is_a_reranker_and_a_plain_encoder_an_embedding_model(tmp_path):
    classifier = tmp_path / "classifier"
    encoder = tmp_path / "encoder"
    classifier.mkdir()
    encoder.mkdir()
    assert (
        model_kind(folder(classifier, config={"architectures": ["XLMRobertaForSequenceClassification"]})) == "reranker"
    )
    assert model_kind(folder(encoder, config={"architectures": ["BertModel"]})) == "embedding"


def test_a_sparse_encoder_is_sparse(tmp_path):
    config = {"model_type": "SparseEncoder"}
    assert model_kind(folder(tmp_path, modules=[], config_sentence_transformers=config)) == "sparse"


def test_a_kind_this_server_does_not_serve_is_refused(tmp_path):
    with pytest.raises(ServiceError, match="does not serve SomeFutureEncoder models"):
        model_kind(folder(tmp_path, modules=[], config_sentence_transformers={"model_type": "SomeFutureEncoder"}))


@pytest.mark.parametrize("model_type", ["MultiVectorEncoder", "ColBERT"])
def test_a_multi_vector_model_and_a_pylate_colbert_are_multivector(tmp_path, model_type):
    assert model_kind(folder(tmp_path, modules=[], config_sentence_transformers={"model_type": model_type})) == (
        "multivector"
    )
