"""The reranker wrapper against ``CrossEncoder.predict`` on fixture cross-encoders (built once, saved, loaded)."""

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from tests.model_fixtures import build_rerankers
from worker.models import runtime_choice
from worker.models.reranker import CrossEncoderReranker
from worker.models.runtime_choice import place_reranker
from worker.models.runtimes import CompiledRuntime, load_runtime

QUERY = "where is the eiffel tower"
DOCUMENTS = ["The Eiffel Tower is in Paris.", "bananas", "tower " * 600, "Ünïcödé 🙂"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_rerankers(tmp_path_factory.mktemp("rerankers"))


@pytest.fixture(scope="module")
def sigmoid(folders) -> CrossEncoder:
    return CrossEncoder(str(folders["test/reranker-sigmoid"]), device="cpu")


def test_scores_are_predicts_in_any_batch(sigmoid):
    reranker = CrossEncoderReranker(sigmoid)
    pairs = reranker.pairs(QUERY, DOCUMENTS, truncate=True)
    others = reranker.pairs("something else entirely, and longer than the query", ["x", "y z"], truncate=True)
    expected = sigmoid.predict([(QUERY, document) for document in DOCUMENTS])
    alone = reranker.scores(reranker.encode(pairs))
    mixed = reranker.scores(reranker.encode([others[0], *pairs, others[1]]))[1:-1]
    one_by_one = np.concatenate([reranker.scores(reranker.encode([pair])) for pair in pairs])
    for actual in (alone, mixed, one_by_one):
        np.testing.assert_allclose(actual, expected, atol=1e-6)
    logits = sigmoid.predict([(QUERY, d) for d in DOCUMENTS], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(reranker.scores(reranker.encode(pairs), raw=True), logits, atol=1e-6)


def test_pairs_are_tokenized_together_and_cut_longest_first(sigmoid):
    reranker = CrossEncoderReranker(sigmoid)
    pair = reranker.pairs(QUERY, [DOCUMENTS[2]], truncate=True)[0]
    assert len(pair) == sigmoid.max_seq_length
    assert set(pair.features["token_type_ids"]) == {0, 1}  # query, then document
    query_ids = sigmoid.tokenizer(QUERY)["input_ids"]
    assert pair.features["input_ids"][: len(query_ids)] == query_ids  # the short query is kept whole
    with pytest.raises(ServiceError) as refused:
        reranker.pairs(QUERY, DOCUMENTS, truncate=False)
    assert refused.value.kind is ErrorKind.INPUT_TOO_LONG
    assert "document 2" in refused.value.message


def test_max_tokens_per_doc_cuts_at_a_token_boundary(sigmoid):
    reranker = CrossEncoderReranker(sigmoid)
    [cut] = reranker.pairs(QUERY, ["the tower is in paris"], truncate=True, max_tokens_per_doc=3)
    [whole] = reranker.pairs(QUERY, ["the tower is"], truncate=True)
    [mid_word] = reranker.pairs(QUERY, ["the eiffel tower"], truncate=True, max_tokens_per_doc=2)  # "the e|iff|el"
    [prefix] = reranker.pairs(QUERY, ["the e"], truncate=True)
    assert mid_word.features == prefix.features
    assert cut.features == whole.features


def test_a_two_label_model_scores_each_label(folders):
    model = CrossEncoder(str(folders["test/reranker-two-labels"]), device="cpu")
    reranker = CrossEncoderReranker(model)
    assert reranker.num_labels == 2
    scores = reranker.scores(reranker.encode(reranker.pairs(QUERY, DOCUMENTS[:2], truncate=True)))
    np.testing.assert_allclose(scores, model.predict([(QUERY, d) for d in DOCUMENTS[:2]]), atol=1e-6)


def test_describe_says_kind_and_activation(folders, sigmoid):
    card = CrossEncoderReranker(sigmoid).describe()
    assert card["kind"] == "reranker"
    assert card["activation"] == "torch.nn.modules.activation.Sigmoid"
    identity = CrossEncoder(str(folders["test/reranker-identity"]), device="cpu")
    assert CrossEncoderReranker(identity).describe()["activation"] == "torch.nn.modules.linear.Identity"


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_on_another_runtime_the_scores_are_still_predicts(folders, sigmoid, tmp_path, backend):
    settings = Settings(_env_file=None, backend=backend, export_dir=tmp_path)
    reranker = place_reranker(sigmoid, "test/reranker-sigmoid", settings)
    assert reranker.describe()["backend"] == backend
    pairs = reranker.pairs(QUERY, DOCUMENTS, truncate=True)
    np.testing.assert_allclose(
        reranker.scores(reranker.encode(pairs)), sigmoid.predict([(QUERY, d) for d in DOCUMENTS]), atol=1e-5
    )
    assert any(tmp_path.iterdir())  # exported once, kept for the next load


def test_a_runtime_that_disagrees_with_torch_is_not_used(sigmoid, tmp_path, monkeypatch, caplog):
    def off_by_a_little(*args, **kwargs):
        runtime = load_runtime(*args, **kwargs)
        return CompiledRuntime(lambda *inputs: runtime.forward(*inputs) + 0.01, runtime.precision)

    monkeypatch.setattr(runtime_choice, "load_runtime", off_by_a_little)
    reranker = place_reranker(
        sigmoid, "test/reranker-sigmoid", Settings(_env_file=None, backend="openvino", export_dir=tmp_path)
    )
    assert reranker.describe()["backend"] == "torch"
    assert "serving it with torch" in caplog.text
