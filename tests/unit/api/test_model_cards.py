"""What /v1/models says of a model: each live worker's card, and the variants when workers serve it differently;
and what ``api.metrics`` makes of the variants (the gauge, a warning once)."""

import logging

from api.metrics import MODEL_VARIANTS, record_model_variants
from api.model_cards import model_cards
from shared.workers import WorkerInfo


def worker(worker_id: str, backend: str, dtype: str, model: str = "m") -> WorkerInfo:
    card = {"dimensions": 384, "backend": backend, "dtype": dtype}
    return WorkerInfo(worker_id, "cpu", models=[model], started_ms=0, model_cards={model: card})


def test_a_model_served_alike_by_every_worker_has_one_card():
    cards, variants = model_cards(
        ["m", "configured"], [worker("a", "openvino", "float32"), worker("b", "openvino", "float32")]
    )
    assert cards == {"m": {"dimensions": 384, "backend": "openvino", "dtype": "float32"}, "configured": {}}
    assert variants == {"m": {("openvino", "float32"): 2}}
    record_model_variants(variants)
    assert MODEL_VARIANTS.labels("m")._value.get() == 1


def test_model_cards_is_pure(caplog):
    """It sets no gauge and logs nothing: the same workers give the same answer, however often it is asked."""
    fleet = [worker("x", "torch", "float32", model="pure"), worker("y", "onnx", "float32", model="pure")]
    with caplog.at_level(logging.DEBUG):
        first = model_cards([], fleet)
        second = model_cards([], fleet)
    assert first == second
    assert ("pure",) not in MODEL_VARIANTS._metrics
    assert not caplog.records


def test_workers_that_serve_a_model_at_different_precisions_are_listed_and_logged_once(caplog):
    fleet = [worker(name, "openvino", dtype) for name, dtype in [("a", "float32"), ("b", "bfloat16"), ("c", "float32")]]
    with caplog.at_level(logging.WARNING, logger="api.metrics"):
        cards, variants = model_cards([], fleet)
        record_model_variants(variants)
        record_model_variants(model_cards([], fleet).variants)
    assert cards["m"]["variants"] == [
        {"backend": "openvino", "dtype": "bfloat16", "workers": 1},
        {"backend": "openvino", "dtype": "float32", "workers": 2},
    ]
    assert MODEL_VARIANTS.labels("m")._value.get() == 2
    warnings = [r for r in caplog.records if "served with different runtimes or precisions" in r.getMessage()]
    assert len(warnings) == 1


def test_each_card_says_its_kind_and_the_routes_that_serve_it():
    cards = {"s": {"kind": "sparse", "dimensions": 30522}, "r": {"kind": "reranker"}, "e": {"kind": "embedding"}}
    fleet = [WorkerInfo("a", "cpu", models=list(cards), started_ms=0, model_cards=cards)]
    shown = model_cards(["configured"], fleet).cards
    assert shown["s"]["routes"] == ["/embed_sparse", "/v1/embeddings", "/v1/embeddings/jobs"]
    assert shown["r"]["routes"] == ["/v1/rerank", "/v2/rerank", "/rerank"]
    assert shown["e"]["routes"][0] == "/v1/embeddings"
    assert shown["configured"] == {}  # not loaded: its kind is not known yet


def test_each_card_says_the_modalities_its_model_takes():
    cards = {"clip": {"kind": "embedding", "modalities": ["text", "image"]}, "e": {"kind": "embedding"}}
    fleet = [WorkerInfo("a", "cpu", models=list(cards), started_ms=0, model_cards=cards)]
    shown = model_cards([], fleet).cards
    assert shown["clip"]["modalities"] == ["text", "image"]
    assert shown["e"]["modalities"] == ["text"]  # a worker of an older release says none: text
