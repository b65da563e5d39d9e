"""Image inputs of an embeddings request, in the shapes the peers take, as the worker's ``mixed`` inputs.

- vLLM's chat-content parts as ``input`` items: ``{"type": "text", "text": ...}`` and
  ``{"type": "image_url", "image_url": {"url": ...}}``, mixed freely with plain strings, one vector per item;
- Infinity's ``modality: "image"``: ``input`` is a string or a list of strings, each an image;
- Cohere's ``images`` (a list of data URIs) and ``inputs`` (``{"content": [one part]}``), in ``api.embeddings.cohere``.

The API only checks their shape and size: an image is a data URI or a URL, decoded or fetched by the worker alone
(``worker.images``), which holds every other bound (formats, pixels, allowed hosts). A request with no image stays a
text request, so a text model takes text parts too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import PydanticCustomError

from shared.protocol import IMAGE_KEY, InputKind
from shared.settings import Settings

#: characters of a data URI around its base64 payload ("data:image/webp;base64,")
_DATA_URI_FRAME = 64


def image_input(source: Any, settings: Settings) -> dict[str, str]:
    """One image input of a ``mixed`` job: ``{"image": source}``, its size bounded (a data URI's base64 payload
    within ``IMAGE_MAX_BYTES``; a URL within 2,048 characters)."""
    if not isinstance(source, str) or not source:
        raise invalid("an image must be a data URI or a URL string")
    limit = (settings.image_max_bytes + 2) // 3 * 4 + _DATA_URI_FRAME if source.startswith("data:") else 2048
    if len(source) > limit:
        raise invalid(f"an image has {len(source)} characters; at most {limit} are allowed")
    return {IMAGE_KEY: source}


#: bounds a text input as a plain string input is bounded: the text, or a PydanticCustomError
TextCheck = Callable[[str, Settings], str]


def content_inputs(items: list[Any], check_text: TextCheck, settings: Settings) -> tuple[InputKind, list[Any]]:
    """``input`` items that hold content parts: ``("mixed", [text or {"image": ...}, ...])``, or ``("text", texts)``
    when no item is an image. ``check_text`` bounds each text as a plain string input is bounded."""
    inputs = [_content_part(item, check_text, settings) for item in items]
    if all(isinstance(item, str) for item in inputs):
        return "text", inputs
    return "mixed", inputs


def _content_part(item: Any, check_text: TextCheck, settings: Settings) -> str | dict[str, str]:
    if isinstance(item, str):
        return check_text(item, settings)
    if not isinstance(item, dict):
        raise invalid("input items must be strings or content parts ({'type': 'text' | 'image_url', ...})")
    kind = item.get("type")
    if kind == "text" and set(item) == {"type", "text"} and isinstance(item["text"], str):
        return check_text(item["text"], settings)
    if kind == "image_url" and set(item) == {"type", "image_url"} and _image_url(item["image_url"]):
        return image_input(item["image_url"]["url"], settings)
    raise invalid(
        "a content part must be {'type': 'text', 'text': '...'} or {'type': 'image_url', 'image_url': {'url': "
        "'data:image/png;base64,...'}}"
    )


def _image_url(value: Any) -> bool:
    """Whether ``value`` is an ``image_url`` object: a ``url``, and OpenAI's ``detail`` (ignored)."""
    if not isinstance(value, dict) or "url" not in value or not set(value) <= {"url", "detail"}:
        return False
    return value.get("detail") is None or isinstance(value["detail"], str)


def invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", message)
