"""One image from a client's reference (a data URI or an http(s) URL) to a decoded ``PIL.Image.Image``, safely.

Only workers run this, in a worker thread; a bad image raises a ``ServiceError`` (400 ``invalid_request``) with a
message written here, never an exception's text, and fails only its own request.

Threat model, and the check that answers each threat:

- **SSRF** (a URL that makes the worker reach something only it can reach: a metadata service, Redis, an admin
  page). URLs are fetched only from the exact host names the deployment lists (``IMAGE_URL_HOSTS``; none: data URIs
  only), checked before any network. Every address the name resolves to must be publicly routable (no loopback,
  private, link-local, CGNAT, multicast, reserved or unspecified address, nor an IPv6 form that embeds one). No
  proxy from the environment is used, and redirects are not followed blindly: a Location on an allowed host is
  checked like the first URL (at most ``MAX_REDIRECTS`` hops, never from https to http); any other is refused.
- **DNS rebinding** (a name that resolves to a public address when checked and a private one when connected). The
  worker connects to the address it checked, not to the name: the request goes to ``scheme://<ip>:<port>/path``
  with the ``Host`` header set to the name and, for https, httpcore's ``sni_hostname`` request extension, which
  httpcore passes to ``ssl.SSLContext.wrap_socket`` as ``server_hostname``: TLS SNI and certificate verification use
  the real name. Each hop gets a fresh connection pool, so no connection is reused under another name.
- **Resource exhaustion by the fetch.** The body is streamed and cut past ``max_bytes`` (a Content-Length over it is
  refused up front), a compressed body (Content-Encoding) is refused, and the whole fetch, redirects included, has one
  deadline (httpx's timeouts, set to the time left, plus a clock check between chunks, so a server that drips its
  body is cut off at most one read's timeout late).
- **Decompression bombs** (a small file that decodes to billions of pixels). A data URI's size is checked before its
  base64 is decoded; the width and height are read from the image's header and checked against ``max_pixels``
  before any pixel is decoded. Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) also applies: its
  ``DecompressionBombWarning`` is turned into an error here, so it is a 400 rather than a warning.
- **Parser attack surface** (a bug in one of Pillow's many decoders). ``Image.open(..., formats=...)`` tries only the
  decoders of the formats the deployment accepts (``IMAGE_FORMATS``); any other file is "not an image" to it. A data
  URI's declared type must also be accepted, and must be what the bytes really are.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import io
import ipaddress
import re
import socket
import struct
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httpx
from PIL import Image, UnidentifiedImageError

from shared.errors import ErrorKind, ServiceError

if TYPE_CHECKING:
    from shared.settings import Settings

#: redirects followed for one image URL, each to an allowed host
MAX_REDIRECTS = 3

#: what a data URI holding an image looks like before its comma
_DATA_URI_HEADER = re.compile(r"data:image/(?P<subtype>[a-z0-9][a-z0-9.+-]*);base64", re.IGNORECASE)
#: MIME subtypes clients use for a format other than the one Pillow names
_SUBTYPE_ALIASES = {"jpg": "jpeg"}
#: formats Pillow names for a file of another format: a JPEG with more than one picture in it opens as MPO
_FORMAT_ALIASES = {"MPO": "JPEG"}
#: what Pillow raises on a file it recognized but cannot read (besides its decompression bomb checks); Warning: one
#: of its warnings on a malformed file, where warnings are errors (``-W error``)
_CORRUPT_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Warning)

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: IPv6 ranges that carry an IPv4 address in their last 32 bits: NAT64's well-known prefix and the deprecated
#: "IPv4-compatible" addresses (which Python counts as global)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

#: host name and port to the addresses (as text) they resolve to
Resolver = Callable[[str, int], Sequence[str]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """What images a deployment accepts.

    ``url_hosts``: lowercased host names URLs may be fetched from (none: data URIs only). ``formats``: Pillow
    format names (``"PNG"``). ``max_pixels`` above Pillow's ``Image.MAX_IMAGE_PIXELS`` has no effect: Pillow's
    limit is refused too.
    """

    url_hosts: frozenset[str]
    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]
    fetch_timeout_s: float

    def __post_init__(self) -> None:
        Image.init()
        unknown = [name for name in self.formats if name not in Image.OPEN]
        if not self.formats or unknown:
            raise ValueError(f"image formats must be non-empty names of formats Pillow opens; unknown: {unknown}")
        if self.max_bytes < 1 or self.max_pixels < 1 or self.fetch_timeout_s <= 0:
            raise ValueError("image max_bytes, max_pixels and fetch_timeout_s must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        return cls(
            url_hosts=frozenset(_normal_host(host) for host in settings.image_url_hosts if host.strip()),
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
            formats=tuple(name.strip().upper() for name in settings.image_formats),
            fetch_timeout_s=settings.image_fetch_timeout_s,
        )


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for a TCP connection, in the resolver's order, without repeats. It waits
    on the system resolver, which has no deadline of its own: the fetch's deadline is checked once it answers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclasses.dataclass(frozen=True)
class UrlFetch:
    """How image URLs are fetched: the resolver, the httpx transport (None: a fresh ``httpx.HTTPTransport`` for
    each request, so no connection outlives the name it was opened for) and the clock of the deadline. Tests
    inject ``httpx.MockTransport`` and a fake resolver."""

    resolve: Resolver = resolve_host
    transport: httpx.BaseTransport | None = None
    clock: Callable[[], float] = time.monotonic


DEFAULT_FETCH = UrlFetch()


def load_image(
    source: str, policy: ImagePolicy, *, param: str = "input", fetch: UrlFetch = DEFAULT_FETCH
) -> Image.Image:
    """The image ``source`` refers to, decoded, as Pillow decoded it (its mode is not converted: the model's image
    processor does that). ``source`` is ``data:image/<type>;base64,<data>`` or an http(s) URL on an allowed host.
    Of an image with several frames (an animated WebP) only the first is decoded and used.

    Raises ``ServiceError`` (``INVALID_REQUEST``, ``param``) for any image that is not accepted.
    """
    scheme = source[: source.find(":") + 1].lower()
    if scheme == "data:":
        declared, data = _data_uri_bytes(source, policy, param)
        return _decode(data, policy, param, declared=declared)
    if scheme in ("http:", "https:"):
        return _decode(_fetch_url(source, policy, param, fetch), policy, param, declared=None)
    raise _invalid(f"an image must be {_accepted_sources(policy)}", param)


# Data URIs


def _data_uri_bytes(source: str, policy: ImagePolicy, param: str) -> tuple[str, bytes]:
    """The MIME type a data URI declares and its decoded bytes."""
    header, comma, payload = source.partition(",")
    match = _DATA_URI_HEADER.fullmatch(header)
    if not comma or match is None:
        raise _invalid(
            "an image data URI must look like data:image/png;base64,<standard base64 data>, with no other parameters",
            param,
        )
    subtype = match["subtype"].lower()
    declared = f"image/{_SUBTYPE_ALIASES.get(subtype, subtype)}"
    if declared not in _accepted_mime_types(policy.formats):
        raise _invalid(f"an image is declared as {declared}; the formats accepted are {_format_list(policy)}", param)
    if len(payload) * 3 // 4 > policy.max_bytes:  # before decoding: never hold more than the limit's worth
        raise _too_large(len(payload) * 3 // 4, policy, param)
    try:
        return declared, base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise _invalid(
            "an image's data is not valid base64 (the standard alphabet, with padding and no whitespace; not the "
            "URL-safe one)",
            param,
        ) from None


@functools.cache
def _accepted_mime_types(formats: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_mime_type(name) for name in formats)


def _mime_type(format_name: str) -> str:
    Image.init()
    return Image.MIME.get(format_name, f"image/{format_name.lower()}")


# URLs


def _fetch_url(source: str, policy: ImagePolicy, param: str, fetch: UrlFetch) -> bytes:
    """The body of an image URL, through at most ``MAX_REDIRECTS`` redirects to allowed hosts, within the policy's
    deadline and byte limit."""
    if not policy.url_hosts:
        raise _invalid(f"this deployment accepts no image URLs: an image must be {_accepted_sources(policy)}", param)
    deadline = fetch.clock() + policy.fetch_timeout_s
    url = _parse_url(source, param)
    _check_host_allowed(url, policy, param)
    for _ in range(MAX_REDIRECTS + 1):
        outcome = _fetch_from_checked_address(url, policy, param, fetch, deadline)
        if isinstance(outcome, bytes):
            return outcome
        url = outcome
    raise _invalid(f"an image URL redirected more than {MAX_REDIRECTS} times", param)


def _parse_url(source: str, param: str) -> httpx.URL:
    try:
        url = httpx.URL(source)
    except (httpx.InvalidURL, UnicodeError):
        raise _invalid("an image URL is not a valid URL", param) from None
    if not url.host:
        raise _invalid("an image URL has no host", param)
    if url.userinfo:
        raise _invalid("an image URL may not carry a user name or password", param)
    return url


def _check_host_allowed(url: httpx.URL, policy: ImagePolicy, param: str) -> None:
    host = _normal_host(url.host)
    if host not in policy.url_hosts:
        raise _invalid(
            f"image URLs are fetched only from the hosts this deployment allows; host {host!r} is not one of them",
            param,
        )


def _fetch_from_checked_address(
    url: httpx.URL, policy: ImagePolicy, param: str, fetch: UrlFetch, deadline: float
) -> bytes | httpx.URL:
    """The body at ``url``, or where it redirects to (an allowed URL). The host's addresses are checked, then tried
    in order while connecting to one fails."""
    addresses = _public_addresses(url, fetch.resolve, param)
    for index, address in enumerate(addresses):
        try:
            return _get(url, address, policy, param, fetch, deadline)
        except httpx.ConnectError as error:
            if index == len(addresses) - 1:
                raise _unreachable(param) from error
        except httpx.TimeoutException as error:
            raise _timed_out(policy, param) from error
        except httpx.HTTPError as error:  # a broken response: protocol errors, a dropped connection
            raise _unreachable(param) from error
    raise AssertionError("unreachable: _public_addresses returns at least one address")


def _public_addresses(url: httpx.URL, resolve: Resolver, param: str) -> list[str]:
    """What ``url``'s host resolves to; a 400 unless it resolves, and to public addresses only."""
    host = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS knows it
    try:
        addresses = list(resolve(host, _port(url)))
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise _invalid(f"the host of an image URL, {host!r}, could not be resolved", param)
    if not all(is_public_address(address) for address in addresses):
        raise _invalid(
            f"the host of an image URL, {host!r}, resolves to an address that is not publicly routable; image URLs "
            "are fetched only from public addresses",
            param,
        )
    return addresses


def is_public_address(text: str) -> bool:
    """Whether connecting to ``text`` (an IP address, as a resolver gives it) reaches the public internet only."""
    try:
        address: Address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in _IPV4_COMPATIBLE:
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public(embedded)
    return _is_public(address)


def _is_public(address: Address) -> bool:
    # is_global alone lets multicast through (and, depending on the Python release, other special ranges)
    return (
        address.is_global
        and not address.is_private
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and address not in _CGNAT
    )


def _get(
    url: httpx.URL, address: str, policy: ImagePolicy, param: str, fetch: UrlFetch, deadline: float
) -> bytes | httpx.URL:
    """GET ``url`` from ``address``: the body, or the allowed URL a redirect points to."""
    remaining = _remaining(deadline, policy, param, fetch)
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity"}
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    with httpx.Client(
        transport=fetch.transport, trust_env=False, follow_redirects=False, timeout=httpx.Timeout(remaining)
    ) as client:
        request = client.build_request(
            "GET", url.copy_with(host=address, fragment=None), headers=headers, extensions=extensions
        )
        response = client.send(request, stream=True)
        try:
            if response.is_redirect:
                return _redirect_target(url, response.headers["Location"], policy, param)
            _check_response(response, policy, param)
            return _read_body(response, policy, param, fetch, deadline)
        finally:
            response.close()


def _redirect_target(url: httpx.URL, location: str, policy: ImagePolicy, param: str) -> httpx.URL:
    try:
        target = url.join(location)
    except (httpx.InvalidURL, UnicodeError):
        raise _invalid("an image URL redirected to an invalid URL", param) from None
    if target.scheme not in ("http", "https") or _normal_host(target.host) not in policy.url_hosts:
        raise _invalid("an image URL redirected to a host this deployment does not allow", param)
    if url.scheme == "https" and target.scheme == "http":
        raise _invalid("an image URL redirected from https to plain http", param)
    if target.userinfo:
        raise _invalid("an image URL redirected to a URL with a user name or password", param)
    return target


def _check_response(response: httpx.Response, policy: ImagePolicy, param: str) -> None:
    if not response.is_success:
        raise _invalid(f"fetching an image URL answered HTTP {response.status_code}", param)
    content_type = response.headers.get("Content-Type", "")
    if not content_type.strip().lower().startswith("image/"):
        shown = content_type.split(";")[0].strip()[:100] or "none"
        raise _invalid(f"an image URL answered Content-Type {shown!r}, not an image/* type", param)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _invalid("an image URL answered a compressed body (Content-Encoding); only plain bodies are read", param)
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise _too_large(int(length), policy, param)


def _read_body(response: httpx.Response, policy: ImagePolicy, param: str, fetch: UrlFetch, deadline: float) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():  # as sent: a Content-Encoding was refused
        body += chunk
        if len(body) > policy.max_bytes:
            raise _invalid(f"an image URL's body is over {policy.max_bytes} bytes, the most allowed", param)
        _remaining(deadline, policy, param, fetch)
    return bytes(body)


def _remaining(deadline: float, policy: ImagePolicy, param: str, fetch: UrlFetch) -> float:
    """Seconds left to fetch; a 400 when there are none."""
    remaining = deadline - fetch.clock()
    if remaining <= 0:
        raise _timed_out(policy, param)
    return remaining


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


# Decoding


def _decode(data: bytes, policy: ImagePolicy, param: str, *, declared: str | None) -> Image.Image:
    """``data`` decoded, once its format, its size in pixels and (for a data URI) its declared type are accepted."""
    # Pillow warns (DecompressionBombWarning) on an image over Image.MAX_IMAGE_PIXELS: an error here, so a 400, never
    # a warning. The filter is process-wide (Python 3.11): a decode in another thread meanwhile may run with or
    # without it, which changes no outcome while max_pixels is within Pillow's limit (the pixel check refuses those).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, policy, param)
        try:
            _check_pixels(image, policy, param)
            if declared is not None:
                _check_declared_type(image, declared, param)
            _load_first_frame(image, policy, param)
        except BaseException:
            image.close()
            raise
    return image


def _open(data: bytes, policy: ImagePolicy, param: str) -> Image.Image:
    """The image's header read (no pixels decoded), by the decoders of the accepted formats only."""
    try:
        return Image.open(io.BytesIO(data), formats=policy.formats)
    except UnidentifiedImageError:
        raise _invalid(f"an image is not in a format this deployment accepts ({_format_list(policy)})", param) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _over_pillow_limit(policy, param) from None
    except _CORRUPT_IMAGE_ERRORS:
        raise _corrupt(param) from None


def _check_pixels(image: Image.Image, policy: ImagePolicy, param: str) -> None:
    width, height = image.size
    if width * height > policy.max_pixels:
        raise _invalid(f"an image is {width}x{height} pixels; at most {policy.max_pixels} pixels are allowed", param)


def _check_declared_type(image: Image.Image, declared: str, param: str) -> None:
    actual = _FORMAT_ALIASES.get(image.format or "", image.format or "")
    if _mime_type(actual) != declared:
        raise _invalid(f"an image is declared as {declared} but is {actual}", param)


def _load_first_frame(image: Image.Image, policy: ImagePolicy, param: str) -> None:
    try:
        image.seek(0)
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _over_pillow_limit(policy, param) from None
    except _CORRUPT_IMAGE_ERRORS:
        raise _corrupt(param) from None


# Messages


def _invalid(message: str, param: str) -> ServiceError:
    return ServiceError(ErrorKind.INVALID_REQUEST, message, param)


def _too_large(size: int, policy: ImagePolicy, param: str) -> ServiceError:
    return _invalid(f"an image is {size} bytes; at most {policy.max_bytes} bytes are allowed", param)


def _over_pillow_limit(policy: ImagePolicy, param: str) -> ServiceError:
    return _invalid(
        f"an image has more than {Image.MAX_IMAGE_PIXELS} pixels; at most {policy.max_pixels} pixels are allowed",
        param,
    )


def _corrupt(param: str) -> ServiceError:
    return _invalid("an image could not be decoded: it is truncated or corrupt", param)


def _unreachable(param: str) -> ServiceError:
    return _invalid("an image URL could not be fetched", param)


def _timed_out(policy: ImagePolicy, param: str) -> ServiceError:
    return _invalid(f"an image URL could not be fetched within {policy.fetch_timeout_s:g} s", param)


def _format_list(policy: ImagePolicy) -> str:
    """``"PNG, JPEG or WEBP"``."""
    *rest, last = policy.formats
    return f"{', '.join(rest)} or {last}" if rest else last


def _accepted_sources(policy: ImagePolicy) -> str:
    data_uri = "a data URI (data:image/png;base64,<data>)"
    if not policy.url_hosts:
        return data_uri
    return f"{data_uri} or an http(s) URL on a host this deployment allows"
