"""How a batch is cut into chunks, and the manifest entry that names each chunk's requests.

A chunk holds whole requests with the same options (``EmbedOptions``), so the worker treats it as one job; each
chunk's manifest entry (``keys.batch_manifest``) says which requests it holds, for the output files.
"""

from __future__ import annotations

import dataclasses

import msgpack

from api.embeddings.options import EmbedOptions
from shared.protocol import EncodingFormat, OutputDtype

#: each request's output format in a manifest, one letter: (encoding_format, output_dtype)
_FORMAT_CODES: dict[tuple[EncodingFormat, OutputDtype], str] = {
    ("float", "float"): "f",
    ("base64", "float"): "b",
    ("float", "binary"): "s",
    ("base64", "binary"): "S",
    ("float", "ubinary"): "u",
    ("base64", "ubinary"): "U",
}
_FORMATS = {code: output for output, code in _FORMAT_CODES.items()}


def format_code(encoding_format: EncodingFormat, output_dtype: OutputDtype) -> str:
    return _FORMAT_CODES[encoding_format, output_dtype]


@dataclasses.dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One chunk of a batch: its requests (from ``first``, in input order), their inputs and output formats."""

    first: int
    custom_ids: list[str]
    counts: list[int]
    formats: str  # a ``format_code`` per request

    def output_format(self, request: int) -> tuple[EncodingFormat, OutputDtype]:
        """The ``encoding_format`` and ``output_dtype`` of the chunk's ``request``-th request."""
        return _FORMATS[self.formats[request]]

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb([self.first, self.custom_ids, self.counts, self.formats], use_bin_type=True)
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> ManifestEntry:
        first, custom_ids, counts, formats = msgpack.unpackb(data, raw=False)
        return cls(first, custom_ids, counts, formats)


def chunk_starts(shapes: list[tuple[EmbedOptions | None, int]], chunk_size: int) -> list[int]:
    """Where each chunk begins (request indices). A chunk holds whole requests with the same options, up to
    ``chunk_size`` inputs (a larger request gets a chunk of its own); requests that already failed make chunks of
    their own, whose results the API writes."""
    starts: list[int] = []
    current: EmbedOptions | None = None
    filled = 0
    for index, (options, count) in enumerate(shapes):
        if not starts or options != current or (filled + count > chunk_size and filled > 0):
            starts.append(index)
            current, filled = options, 0
        filled += count
    return starts
