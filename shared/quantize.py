"""Embeddings as packed sign bits (``output_dtype``: ``binary``, ``ubinary``), as sentence-transformers'
``quantize_embeddings`` computes them: one bit per dimension (set where the value is above 0), eight to a byte,
each row padded with zero bits to a whole byte; ``binary`` is those bytes less 128, as int8.

``int8`` and ``uint8`` are not offered: their ranges come from calibration embeddings (or, without them, from the
batch being quantized), so a vector's values would depend on which other texts it was sent with.
"""

from __future__ import annotations

import numpy as np

from shared.protocol import OutputDtype

#: dtypes clients name that are refused, for the reason above
UNOFFERED = ("int8", "uint8")


def unoffered(name: str) -> str:
    """Why ``name`` (one of ``UNOFFERED``) is refused, for the client's error message."""
    return f"{name} is not offered: its ranges would depend on the other texts quantized with it"


def quantize(vectors: np.ndarray, output_dtype: OutputDtype) -> np.ndarray:
    """``vectors`` (float32 rows) as ``output_dtype``: unchanged for ``float``."""
    if output_dtype == "float":
        return vectors
    bits = np.packbits(vectors > 0, axis=-1)
    return bits if output_dtype == "ubinary" else (bits - 128).astype(np.int8)
