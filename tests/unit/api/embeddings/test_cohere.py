import pytest

from api.embeddings.cohere import CohereEmbedRequest
from api.http import parse_body
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings

SETTINGS = Settings(_env_file=None, max_inputs_per_request=3, max_input_chars=10, allow_any_model=True)
PNG_URI = "data:image/png;base64,iVBORw0KGgo="


def parse(**body):
    return parse_body(CohereEmbedRequest, {"model": "m", **body}, {"settings": SETTINGS})


def test_texts_images_and_inputs_become_the_workers_inputs():
    assert parse(texts=["a", "b"]).embed_inputs() == ("text", ["a", "b"])
    assert parse(images=[PNG_URI]).embed_inputs() == ("mixed", [{"image": PNG_URI}])
    inputs = [
        {"content": [{"type": "text", "text": "a"}]},
        {"content": [{"type": "image_url", "image_url": {"url": PNG_URI}}]},
    ]
    assert parse(inputs=inputs, input_type="image").embed_inputs() == ("mixed", ["a", {"image": PNG_URI}])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "exactly one of texts, images and inputs"),
        ({"texts": ["a"], "images": [PNG_URI]}, "exactly one"),
        ({"images": []}, "non-empty"),
        ({"images": [PNG_URI] * 4}, "at most 3"),
        ({"images": [3]}, "data URI or a URL"),
        ({"inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, "at most 1"),
        ({"inputs": [{"content": [{"type": "text", "text": "x" * 11}]}]}, "at most 10"),
    ],
)
def test_bad_images_and_inputs_are_400s(body, fragment):
    with pytest.raises(ServiceError) as info:
        parse(**body)
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert fragment in info.value.message
