"""Which prompt a request gets, decided as ``SentenceTransformer.encode`` / ``encode_query`` / ``encode_document`` do.

- ``prompt_name`` names a key of the model's ``prompts``; an unknown name is a 400 that lists the model's names.
- ``input_type`` ``"query"`` / ``"document"`` picks the prompt of that name, as ``encode_query`` /
  ``encode_document`` do; sentence-transformers gives every model both keys, empty unless configured, and an empty
  one means no prompt (not the default either). A model without the key: 400, listing its names.
- With neither, the model's ``default_prompt_name`` applies, if it has one.
- ``prompt_name`` wins over ``input_type``, as an explicit ``prompt_name`` does in ``encode_query``.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import ErrorKind, ServiceError


def resolve_prompt(
    prompts: Mapping[str, str], default_prompt_name: str | None, prompt_name: str | None, input_type: str | None
) -> str:
    """The text to put before each input ("" for none)."""
    if prompt_name is not None:
        return _named(prompts, prompt_name, "prompt_name")
    if input_type is not None:
        return _named(prompts, input_type, "input_type")
    if default_prompt_name is not None:
        return prompts.get(default_prompt_name) or ""
    return ""


def _named(prompts: Mapping[str, str], name: str, param: str) -> str:
    if name not in prompts:
        names = ", ".join(repr(key) for key in prompts) or "none"
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, f"this model has no prompt named {name!r}; its prompts: {names}", param
        )
    return prompts[name] or ""
