"""``worker.tokenizing``: tokenize and decode tasks on real MiniLM encoders (one with prompts) and a MiniLM
reranker, held to the ids the embedding pipeline feeds the model, with no Redis."""

import orjson
import pytest

from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from shared.protocol import DecodeTask, TokenizeTask
from tests import model_fixtures
from tests.fakes import FakeEncoder, make_embed_task
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.registry import ModelRegistry
from worker.models.reranker import CrossEncoderReranker
from worker.pipeline import EmbeddingPipeline
from worker.tokenizing import Tokenizing

TEXTS = ["The food was delicious.", "héllo wörld, 这是 [SEP] ok", "a"]


@pytest.fixture(scope="module")
def models():
    return {
        "minilm": SentenceTransformerEncoder(model_fixtures._minilm()),
        "prompts": SentenceTransformerEncoder(model_fixtures.prompts()),
        "reranker": CrossEncoderReranker(model_fixtures._cross_encoder()),
        "stub": FakeEncoder(),
    }


@pytest.fixture
async def registry(models):
    registry = ModelRegistry(models.__getitem__, max_loaded=4, failure_ttl_s=60, max_batch_size=4, max_batch_tokens=512)
    yield registry
    await registry.close()


def tokenize_task(**overrides: object) -> TokenizeTask:
    fields = {
        "request_id": "r1",
        "model": "minilm",
        "inputs": TEXTS,
        "add_special_tokens": True,
        "prompt_name": None,
        "truncate": False,
        "enqueued_ms": now_ms(),
        "deadline_ms": now_ms() + 60_000,
        "reply_to": "replies",
    }
    return TokenizeTask(**{**fields, **overrides})  # type: ignore[arg-type]


def decode_task(**overrides: object) -> DecodeTask:
    fields = {
        "request_id": "r1",
        "model": "minilm",
        "inputs": [[101, 7592, 102]],
        "skip_special_tokens": True,
        "enqueued_ms": now_ms(),
        "deadline_ms": now_ms() + 60_000,
        "reply_to": "replies",
    }
    return DecodeTask(**{**fields, **overrides})  # type: ignore[arg-type]


async def tokens_of(registry, **overrides):
    tokenized = await Tokenizing(registry).tokenize(tokenize_task(**overrides))
    answer = orjson.loads(tokenized.data)
    assert tokenized.tokens == sum(map(len, answer))
    return answer


async def fed_ids(registry, model, texts, **options):
    """What the embedding pipeline feeds the model for ``texts``."""
    pipeline = EmbeddingPipeline(registry)
    task = make_embed_task(model=model, inputs=texts, **options)
    return pipeline.sequences(pipeline.prepare(await registry.get(model), task), task)


@pytest.mark.parametrize(
    ("model", "prompt_name", "prompt"),
    [("minilm", None, ""), ("prompts", None, "passage: "), ("prompts", "query", "query: ")],
)
async def test_the_ids_are_those_fed_to_the_model_prompt_included_with_tei_offsets(
    registry, model, prompt_name, prompt
):
    answer = await tokens_of(registry, model=model, prompt_name=prompt_name)
    fed = await fed_ids(registry, model, TEXTS, prompt_name=prompt_name)
    assert [[token["id"] for token in tokens] for tokens in answer] == fed
    for text, tokens in zip(TEXTS, answer, strict=True):
        first, *middle, last = tokens
        assert (first["text"], first["special"], first["start"], first["stop"]) == ("[CLS]", True, None, None)
        assert (last["text"], last["special"], last["start"], last["stop"]) == ("[SEP]", True, None, None)
        prompted = (prompt + text).encode()
        for token in middle:  # UTF-8 byte offsets into the prompted text, as TEI's
            assert token["special"] is False
            assert prompted[token["start"] : token["stop"]].decode() == token["text"]
        if prompt:
            assert prompted[middle[0]["start"] : middle[0]["stop"]].decode() == prompt.split(":")[0]
    unicode = answer[1][1:-1]
    assert [t["text"] for t in unicode if t["text"] in ("héllo", "这", "[SEP]")] == ["héllo", "这", "[SEP]"]
    sep = next(t for t in unicode if t["text"] == "[SEP]")
    assert sep["special"] is False  # written in the text: an ordinary token, as TEI's tokenizer marks it


async def test_without_special_tokens_and_cut_to_what_the_model_reads(registry, models):
    bare = await tokens_of(registry, inputs=["hello world"], add_special_tokens=False)
    assert [t["text"] for t in bare[0]] == ["hello", "world"] and not any(t["special"] for t in bare[0])
    long = " ".join(["word"] * 600)
    whole = await tokens_of(registry, inputs=[long])
    assert len(whole[0]) == 602  # every token, as TEI answers
    cut = await tokens_of(registry, inputs=[long], truncate=True)
    assert len(cut[0]) == models["minilm"].max_seq_length
    assert [t["id"] for t in cut[0]] == (await fed_ids(registry, "minilm", [long], truncate=True))[0]
    cut_bare = await tokens_of(registry, inputs=[long], truncate=True, add_special_tokens=False)
    assert len(cut_bare[0]) == models["minilm"].max_seq_length - 2


async def test_a_reranker_tokenizes_one_text_as_its_tokenizer_does(registry, models):
    answer = await tokens_of(registry, model="reranker", inputs=["Paris is in France"])
    assert [t["id"] for t in answer[0]] == models["reranker"].tokenizer("Paris is in France")["input_ids"]


async def test_refusals(registry):
    tokenizing = Tokenizing(registry, max_tokens=5)
    with pytest.raises(ServiceError, match="6 tokens; at most 5") as too_many:
        await tokenizing.tokenize(tokenize_task(inputs=["one two three four"]))
    assert (too_many.value.kind, too_many.value.param) == (ErrorKind.INVALID_REQUEST, "inputs")
    with pytest.raises(ServiceError, match="no prompt named 'nope'") as prompt:
        await tokenizing.tokenize(tokenize_task(model="prompts", prompt_name="nope"))
    assert prompt.value.param == "prompt_name"
    with pytest.raises(ServiceError, match="has no tokenizer") as stub:
        await tokenizing.tokenize(tokenize_task(model="stub"))
    assert (stub.value.kind, stub.value.param) == (ErrorKind.INVALID_REQUEST, "model")
    with pytest.raises(ServiceError, match="has no tokenizer"):
        await tokenizing.decode(decode_task(model="stub"))


async def test_decode_is_the_tokenizers_and_refuses_ids_outside_the_vocabulary(registry, models):
    tokenizer = models["minilm"].tokenizer
    tokenizing = Tokenizing(registry)
    fed = await fed_ids(registry, "minilm", TEXTS)
    texts = orjson.loads(await tokenizing.decode(decode_task(inputs=fed)))
    assert texts == [tokenizer.decode(ids, skip_special_tokens=True) for ids in fed]
    assert texts[0] == "the food was delicious."  # MiniLM lower-cases
    kept = orjson.loads(await tokenizing.decode(decode_task(inputs=fed[:1], skip_special_tokens=False)))
    assert kept == ["[CLS] the food was delicious. [SEP]"]
    assert orjson.loads(await tokenizing.decode(decode_task(inputs=[[]]))) == [""]
    with pytest.raises(ServiceError, match=r"token id 30522 is outside this model's vocabulary \(0..30521\)") as out:
        await tokenizing.decode(decode_task(inputs=[[101], [30522]]))
    assert (out.value.kind, out.value.param) == (ErrorKind.INVALID_REQUEST, "ids")
