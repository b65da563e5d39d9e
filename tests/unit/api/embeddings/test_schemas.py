import pytest

from api.embeddings.schemas import parse_embedding_request
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings

SETTINGS = Settings(
    _env_file=None, max_inputs_per_request=3, max_input_chars=10, max_tokens_per_request=12, allow_any_model=True
)


def parse(**body):
    return parse_embedding_request({"model": "m", **body}, SETTINGS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hi", ("text", ["hi"])),
        (["a", "b"], ("text", ["a", "b"])),
        ([1, 2, 3], ("tokens", [[1, 2, 3]])),
        ([[1], [2, 3]], ("tokens", [[1], [2, 3]])),
    ],
)
def test_accepted_input_shapes(value, expected):
    assert parse(input=value).input == expected


def test_integers_are_what_json_schema_calls_integers():
    """3.0 is an integer to JSON Schema (and to clients that write every number as a float); "3" is not."""
    request = parse(input=[1.0, 100_276.0], dimensions=8.0)
    assert request.input == ("tokens", [[1, 100_276]]) and request.dimensions == 8
    assert type(request.input[1][0][0]) is int and type(request.dimensions) is int


def test_token_ids_are_read_as_the_deployment_says():
    model_ids = SETTINGS.model_copy(update={"token_ids": "model"})
    assert parse_embedding_request({"model": "m", "input": [250_000]}, model_ids).input == ("tokens", [[250_000]])
    with pytest.raises(ServiceError) as info:
        parse_embedding_request({"model": "m", "input": [2**31]}, model_ids)
    assert "above" in info.value.message
    with pytest.raises(ServiceError):
        parse(input=[250_000])


def test_token_ids_are_bounded_by_the_token_limit_not_the_character_limit():
    assert parse(input=[7] * 12).input == ("tokens", [[7] * 12])


def test_defaults():
    request = parse(input="x")
    assert request.encoding_format == "float"
    assert request.dimensions is None and request.truncate is None


@pytest.mark.parametrize("field", ["encodin_format", "output_dtypes"])
def test_unknown_fields_are_refused_naming_the_field(field):
    with pytest.raises(ServiceError) as caught:
        parse(input="x", **{field: "base64"})
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.param == field
    assert field in caught.value.message


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": ""}, "input", "empty"),
        ({"input": []}, "input", "empty"),
        ({"input": [""]}, "input", "empty"),
        ({"input": [[]]}, "input", "empty"),
        ({"input": ["a", 1]}, "input", "mix"),
        ({"input": [[1], 2]}, "input", "mix"),
        ({"input": [1, "a"]}, "input", "non-negative"),
        ({"input": [-1]}, "input", "non-negative"),
        ({"input": [True]}, "input", "string"),
        ({"input": [1.5]}, "input", "non-negative"),
        ({"input": [100_277]}, "input", "cl100k_base"),
        ({"input": [[5], [100_256]]}, "input", "cl100k_base"),
        ({"input": "x", "dimensions": 8.5}, "dimensions", "integer"),
        ({"input": "x", "normalize": 0}, "normalize", "boolean"),
        ({"input": {"a": 1}}, "input", "string"),
        ({"input": None}, "input", "string"),
        ({"input": ["a", "b", "c", "d"]}, "input", "at most 3"),
        ({"input": "x" * 11}, "input", "at most 10"),
        ({"input": [[1] * 7, [2] * 6]}, "input", "13 tokens; at most 12"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format", "float"),
        ({"input": "x", "dimensions": 0}, "dimensions", "greater"),
        ({"input": "x", "dimensions": "8"}, "dimensions", "integer"),
        ({"input": "x", "dimensions": True}, "dimensions", "integer"),
        ({"input": "x", "model": ""}, "model", "at least 1"),
        ({}, "input", "required"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(body, param, fragment):
    with pytest.raises(ServiceError) as info:
        parse(**body)
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert info.value.param == param
    assert fragment in info.value.message


def test_missing_model():
    with pytest.raises(ServiceError) as info:
        parse_embedding_request({"input": "x"}, SETTINGS)
    assert info.value.param == "model"


def test_body_must_be_an_object():
    with pytest.raises(ServiceError) as info:
        parse_embedding_request(["x"], SETTINGS)
    assert info.value.kind is ErrorKind.INVALID_REQUEST


def test_only_served_models_are_accepted():
    settings = Settings(_env_file=None, embed_models=["a/served"], allowed_models=["b/allowed"])
    for model in ("a/served", "b/allowed"):
        assert parse_embedding_request({"model": model, "input": "x"}, settings).model == model
    with pytest.raises(ServiceError) as info:
        parse_embedding_request({"model": "c/anything", "input": "x"}, settings)
    assert (info.value.kind, info.value.param) == (ErrorKind.MODEL_NOT_FOUND, "model")
    any_model = Settings(_env_file=None, allow_any_model=True)
    assert parse_embedding_request({"model": "c/anything", "input": "x"}, any_model).model == "c/anything"


PNG_URI = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([{"type": "text", "text": "hi"}, "yo"], ("text", ["hi", "yo"])),
        (
            ["hi", {"type": "image_url", "image_url": {"url": PNG_URI}}],
            ("mixed", ["hi", {"image": PNG_URI}]),
        ),
        (
            [{"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "auto"}}],
            ("mixed", [{"image": "https://x/a.png"}]),
        ),
    ],
)
def test_content_parts_are_texts_and_images(value, expected):
    assert parse(input=value).input == expected


def test_modality_image_reads_strings_as_images_whatever_their_length():
    uri = "data:image/png;base64," + "A" * 400  # longer than max_input_chars (10): images are bounded by bytes
    assert parse(modality="image", input=uri).input == ("mixed", [{"image": uri}])
    assert parse(modality="image", input=[uri, uri]).input == ("mixed", [{"image": uri}] * 2)
    assert parse(modality="text", input="hi").input == ("text", ["hi"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"input": [{"type": "image_url", "image_url": "x"}]}, "content part"),
        ({"input": [{"type": "image_url", "image_url": {"url": ""}}]}, "data URI or a URL"),
        ({"input": [{"type": "image", "image": PNG_URI}]}, "content part"),
        ({"input": [{"type": "text", "text": "x" * 11}]}, "at most 10"),
        ({"input": [{"type": "text", "text": ""}]}, "empty"),
        ({"input": [{"type": "text", "text": "a", "extra": 1}]}, "content part"),
        ({"input": [{"type": "image_url", "image_url": {"url": 5}}]}, "data URI or a URL"),
        ({"input": ["a", "b", "c", {"type": "text", "text": "d"}]}, "at most 3"),
        ({"modality": "image", "input": [[1, 2]]}, "each a data URI or URL"),
        ({"modality": "image", "input": ["data:image/png;base64," + "A" * 12_000_000]}, "characters; at most"),
    ],
)
def test_bad_content_is_a_400(body, fragment):
    with pytest.raises(ServiceError) as info:
        parse(**body)
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert info.value.param == "input"
    assert fragment in info.value.message


@pytest.mark.parametrize("value", [True, False, "chunk"])
def test_truncate_takes_chunk(value):
    assert parse(input="x", truncate=value).truncate == value


@pytest.mark.parametrize("value", ["yes", 1, 0, "CHUNK"])
def test_other_truncations_are_refused(value):
    with pytest.raises(ServiceError) as info:
        parse(input="x", truncate=value)
    assert info.value.param == "truncate"
    assert '"chunk"' in info.value.message
