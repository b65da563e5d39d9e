import pytest

from shared.errors import ErrorKind, ServiceError
from worker.models.prompts import resolve_prompt

PROMPTS = {"query": "query: ", "document": "", "web": "web: "}


@pytest.mark.parametrize(
    ("default", "prompt_name", "input_type", "expected"),
    [
        (None, None, None, ""),
        ("web", None, None, "web: "),  # the model's default
        ("web", None, "document", ""),  # an empty prompt is none, and not the default either (encode_document)
        ("web", None, "query", "query: "),
        (None, "web", "query", "web: "),  # a name wins over the input type, as in encode_query(prompt_name=...)
    ],
)
def test_prompts_resolve_as_sentence_transformers_does(default, prompt_name, input_type, expected):
    assert resolve_prompt(PROMPTS, default, prompt_name, input_type) == expected


@pytest.mark.parametrize(
    ("prompt_name", "input_type", "param"), [("nope", None, "prompt_name"), (None, "query", "input_type")]
)
def test_a_prompt_the_model_lacks_is_a_400_listing_its_prompts(prompt_name, input_type, param):
    with pytest.raises(ServiceError) as info:
        resolve_prompt({"web": "web: "}, None, prompt_name, input_type)
    assert (info.value.kind, info.value.param) == (ErrorKind.INVALID_REQUEST, param)
    assert "'web'" in info.value.message
