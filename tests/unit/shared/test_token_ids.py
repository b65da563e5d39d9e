"""The API's copy of cl100k_base's bounds is the vocabulary tiktoken decodes."""

from shared.token_ids import CL100K_MAX_TOKEN_ID, CL100K_UNUSED_IDS, admitted
from worker.openai_tokens import cl100k


def test_the_bounds_are_tiktokens():
    encoding = cl100k()
    assert encoding.max_token_value == CL100K_MAX_TOKEN_ID
    unused = set()
    for token in range(100_000, CL100K_MAX_TOKEN_ID + 1):
        try:
            encoding.decode_single_token_bytes(token)
        except KeyError:
            unused.add(token)
    assert unused == CL100K_UNUSED_IDS
    assert all(admitted(token, "openai") for token in (0, 100_255, 100_257, CL100K_MAX_TOKEN_ID))
    assert not any(admitted(token, "openai") for token in (-1, *CL100K_UNUSED_IDS, CL100K_MAX_TOKEN_ID + 1))
