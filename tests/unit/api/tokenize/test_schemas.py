"""``api.tokenize.schemas``: TEI's tokenize and decode requests within the deployment's limits, and the model a
request is for."""

import pytest

from api.tokenize.schemas import DecodeRequest, TokenizeRequest, requested_model, sole_model
from shared.errors import ServiceError
from shared.settings import Settings

SETTINGS = Settings(_env_file=None, max_inputs_per_request=3, max_input_chars=10, max_tokens_per_request=6)


def tokenize(**body):
    return TokenizeRequest.model_validate(body, context={"settings": SETTINGS})


def decode(**body):
    return DecodeRequest.model_validate(body, context={"settings": SETTINGS})


def test_tokenize_takes_a_string_or_a_list_with_teis_defaults():
    one = tokenize(inputs="hello")
    assert (one.inputs, one.add_special_tokens, one.prompt_name, one.model, one.truncate) == (
        ["hello"],
        True,
        None,
        None,
        False,
    )
    assert tokenize(inputs=["a", "b"], add_special_tokens=False).inputs == ["a", "b"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("", "must not contain empty strings"),
        ([], "must not be empty"),
        (["a", ""], "must not contain empty strings"),
        (["a"] * 4, "inputs has 4 items; at most 3"),
        ("x" * 11, "11 characters; at most 10"),
        ([1], "a string or a list of strings"),
        ({"a": 1}, "a string or a list of strings"),
    ],
)
def test_tokenize_refuses_what_the_limits_forbid(inputs, message):
    with pytest.raises(ValueError, match=message):
        tokenize(inputs=inputs)


def test_decode_takes_one_list_or_many():
    assert decode(ids=[1, 2.0]).ids == [[1, 2]]
    assert decode(ids=[[1], []], skip_special_tokens=False).ids == [[1], []]
    assert decode(ids=[[1]]).skip_special_tokens is True


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([], "must not be empty"),
        ([[1]] * 4, "4 lists; at most 3"),
        ([1] * 7, "7 ids; at most 6"),
        ([-1], "integers from 0 to"),
        ([True], "a list of token ids or a list of token-id lists"),
        ([1, [2]], "integers from 0 to"),
        ([[1], 2], "a list of token ids or a list of token-id lists"),
        ([2**31], "integers from 0 to"),
        ([1.5], "integers from 0 to"),
        ("1", "a list of token ids"),
    ],
)
def test_decode_refuses_what_is_not_ids(ids, message):
    with pytest.raises(ValueError, match=message):
        decode(ids=ids)


def test_model_defaults_only_to_a_deployments_sole_model():
    one = Settings(_env_file=None, embed_models=["a"])
    assert sole_model(one) == "a"
    assert requested_model(tokenize(inputs="x"), one) == "a"
    assert requested_model(tokenize(inputs="x", model="b"), one) == "b"
    assert sole_model(Settings(_env_file=None, embed_models=["a"], allowed_models=["a"])) == "a"
    for many in (
        Settings(_env_file=None, embed_models=["a", "b"]),
        Settings(_env_file=None, embed_models=["a"], default_rerank_model="r"),
        Settings(_env_file=None, embed_models=["a"], allow_any_model=True),
    ):
        assert sole_model(many) is None
        with pytest.raises(ServiceError, match="model is required"):
            requested_model(decode(ids=[1]), many)
