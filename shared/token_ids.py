"""The token ids the API admits before any worker reads them.

With ``TOKEN_IDS=openai``, ids of OpenAI's cl100k_base vocabulary, checked without loading it: its largest id, and
the ids inside its range that name no token (the worker decodes ids with tiktoken, whose vocabulary these must
match: ``tests/unit/shared/test_token_ids.py``). With ``TOKEN_IDS=model``, ids of the model's own vocabulary, which the
API does not know: it admits any id a tokenizer can hold, and the worker refuses one outside the vocabulary.
"""

from __future__ import annotations

from typing import Literal

#: tokenizers keep ids as 32-bit integers
MAX_TOKEN_ID = 2**31 - 1

CL100K_MAX_TOKEN_ID = 100_276
#: between the last ordinary token (100255) and the special tokens, ids no token has
CL100K_UNUSED_IDS = frozenset({100_256, *range(100_261, 100_276)})


def admitted(token: int, token_ids: Literal["openai", "model"]) -> bool:
    """Whether the API takes ``token`` as an id, as ``TOKEN_IDS`` reads them."""
    if token_ids == "openai":
        return 0 <= token <= CL100K_MAX_TOKEN_ID and token not in CL100K_UNUSED_IDS
    return 0 <= token <= MAX_TOKEN_ID
