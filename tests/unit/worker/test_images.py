"""``worker.images``: images from data URIs and URLs, each attack refused with a clean 400, with no real network
(``httpx.MockTransport`` and a fake resolver)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import struct
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image, ImageFile

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from worker import images
from worker.images import ImagePolicy, UrlFetch, is_public_address, load_image

HOST = "images.example.com"
OTHER_ALLOWED_HOST = "cdn.example.com"
PUBLIC_IP = "93.184.215.14"
POLICY = ImagePolicy(
    url_hosts=frozenset({HOST, OTHER_ALLOWED_HOST}),
    max_bytes=64 * 1024,
    max_pixels=4096 * 4096,
    formats=("PNG", "JPEG", "WEBP"),
    fetch_timeout_s=5,
)

Handler = Callable[[httpx.Request], httpx.Response]


def picture(size: tuple[int, int] = (32, 24), mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, size)
    image.putdata(
        [(x * 7 % 256, y * 11 % 256, (x + y) % 256)[: len(mode)] for y in range(size[1]) for x in range(size[0])]
    )
    return image


def encoded(image: Image.Image, format_name: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format_name, **options)
    return out.getvalue()


def data_uri(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64,{base64.b64encode(data).decode()}"


def png_with_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR (correct CRC) claiming ``width`` x ``height``, with a tiny IDAT: what a
    decompression bomb's header looks like, without its megabytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def refused(source: str, match: str, policy: ImagePolicy = POLICY, fetch: UrlFetch = images.DEFAULT_FETCH) -> str:
    """The message of the 400 ``source`` gets."""
    with pytest.raises(ServiceError, match=match) as caught:
        load_image(source, policy, param="input", fetch=fetch)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST and caught.value.param == "input"
    return caught.value.message


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


class Network:
    """A fake resolver and an ``httpx.MockTransport``; ``routes`` answer by "scheme://host/path" of the name asked
    for (the Host header), and every lookup and request is recorded."""

    def __init__(self, dns: dict[str, list[str]], routes: dict[str, Handler]) -> None:
        self.dns = dns
        self.routes = routes
        self.lookups: list[tuple[str, int]] = []
        self.requests: list[httpx.Request] = []
        self.now = 0.0

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return self.dns[host]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.routes[f"{request.url.scheme}://{request.headers['host']}{request.url.raw_path.decode()}"](request)

    def fetch(self) -> UrlFetch:
        return UrlFetch(resolve=self.resolve, transport=httpx.MockTransport(self.handle), clock=lambda: self.now)


def image_response(body: bytes | Iterator[bytes], content_type: str = "image/png", **headers: str) -> Handler:
    return lambda request: httpx.Response(200, headers={"Content-Type": content_type, **headers}, content=body)


def redirect(location: str, status: int = 302) -> Handler:
    return lambda request: httpx.Response(status, headers={"Location": location})


PNG = encoded(picture(), "PNG")


# Successes


def test_png_and_jpeg_data_uris_decode_to_the_pixels_of_the_original() -> None:
    original = picture()
    png = load_image(data_uri(encoded(original, "PNG")), POLICY)
    assert (png.format, png.mode, png.size) == ("PNG", "RGB", original.size)
    assert png.tobytes() == original.tobytes()
    jpeg_bytes = encoded(original, "JPEG", quality=90)
    for subtype in ("jpeg", "jpg", "JPEG"):
        jpeg = load_image(data_uri(jpeg_bytes, subtype), POLICY)
        assert jpeg.format == "JPEG"
        assert jpeg.tobytes() == Image.open(io.BytesIO(jpeg_bytes)).tobytes()


def test_the_mode_is_left_as_decoded() -> None:
    grey = Image.new("L", (5, 4), 77)
    assert load_image(data_uri(encoded(grey, "PNG")), POLICY).mode == "L"


def test_an_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    webp = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    image = load_image(data_uri(webp, "webp"), POLICY)
    assert getattr(image, "n_frames", 1) == 2
    assert image.convert("RGB").getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_url_is_fetched_from_the_checked_address_under_its_own_name(scheme: str) -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"{scheme}://{HOST}/cat.png?size=2": image_response(PNG)})
    image = load_image(f"{scheme}://{HOST.upper()}/cat.png?size=2#top", POLICY, fetch=network.fetch())
    assert image.tobytes() == picture().tobytes()
    assert network.lookups == [(HOST, 443 if scheme == "https" else 80)]
    [request] = network.requests
    assert str(request.url) == f"{scheme}://{PUBLIC_IP}/cat.png?size=2"
    assert request.headers["host"] == HOST
    assert request.extensions.get("sni_hostname") == (HOST if scheme == "https" else None)
    assert request.headers["accept-encoding"] == "identity"


def test_a_port_and_an_ipv6_address_are_kept() -> None:
    network = Network(
        {HOST: ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]},
        {f"https://{HOST}:8443/a.png": image_response(PNG)},
    )
    load_image(f"https://{HOST}:8443/a.png", POLICY, fetch=network.fetch())
    [request] = network.requests
    assert str(request.url) == "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/a.png"
    assert request.headers["host"] == f"{HOST}:8443"
    assert network.lookups == [(HOST, 8443)]


def test_a_redirect_on_an_allowed_host_is_followed_and_checked_again() -> None:
    network = Network(
        {HOST: [PUBLIC_IP], OTHER_ALLOWED_HOST: ["93.184.215.15"]},
        {
            f"https://{HOST}/old.png": redirect("/new.png", 301),
            f"https://{HOST}/new.png": redirect(f"https://{OTHER_ALLOWED_HOST}/img.png", 307),
            f"https://{OTHER_ALLOWED_HOST}/img.png": image_response(PNG),
        },
    )
    load_image(f"https://{HOST}/old.png", POLICY, fetch=network.fetch())
    assert [str(request.url) for request in network.requests] == [
        f"https://{PUBLIC_IP}/old.png",
        f"https://{PUBLIC_IP}/new.png",
        "https://93.184.215.15/img.png",
    ]
    assert network.requests[-1].extensions["sni_hostname"] == OTHER_ALLOWED_HOST
    assert [host for host, _ in network.lookups] == [HOST, HOST, OTHER_ALLOWED_HOST]


def test_the_policy_comes_from_the_settings() -> None:
    settings = Settings(
        _env_file=None, image_url_hosts="Images.Example.COM, cdn.example.com.", image_formats="png,jpeg"
    )
    policy = ImagePolicy.from_settings(settings)
    assert policy.url_hosts == {HOST, OTHER_ALLOWED_HOST}
    assert policy.formats == ("PNG", "JPEG")
    assert (policy.max_bytes, policy.max_pixels, policy.fetch_timeout_s) == (8 * 1024 * 1024, 4096 * 4096, 5.0)
    assert ImagePolicy.from_settings(Settings(_env_file=None)).url_hosts == frozenset()
    with pytest.raises(ValueError, match="unknown"):
        dataclasses.replace(POLICY, formats=("PNG", "NOPE"))


# Attacks on decoding


def test_a_truncated_png_is_refused() -> None:
    big = encoded(picture((100, 100)), "PNG", compress_level=0)
    refused(data_uri(big[: len(big) // 2]), "could not be decoded: it is truncated or corrupt")


def test_garbage_with_a_png_signature_is_refused() -> None:
    refused(data_uri(b"\x89PNG\r\n\x1a\n" + b"\xff" * 100), "is not in a format this deployment accepts")


@pytest.mark.usefixtures("no_decoding")
def test_a_header_over_the_pixel_limit_is_refused_before_decoding() -> None:
    assert refused(data_uri(png_with_header_only(5000, 5000)), "5000x5000") == (
        "an image is 5000x5000 pixels; at most 16777216 pixels are allowed"
    )
    # over Pillow's own limit (Image.MAX_IMAGE_PIXELS), Image.open itself refuses it
    assert refused(data_uri(png_with_header_only(50_000, 50_000)), "pixels") == (
        f"an image has more than {Image.MAX_IMAGE_PIXELS} pixels; at most 16777216 pixels are allowed"
    )


def test_pillows_bomb_warning_is_a_400_not_a_warning() -> None:
    over_pillow = Image.MAX_IMAGE_PIXELS
    assert over_pillow is not None
    lenient = dataclasses.replace(POLICY, max_pixels=4 * over_pillow)
    refused(data_uri(png_with_header_only(over_pillow // 10_000 + 1, 10_000)), "more than", policy=lenient)


def test_an_svg_data_uri_is_refused() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    assert refused(data_uri(svg, "svg+xml"), "svg") == (
        "an image is declared as image/svg+xml; the formats accepted are PNG, JPEG or WEBP"
    )


def test_a_format_not_listed_is_never_parsed() -> None:
    gif = encoded(picture(), "GIF")
    assert Image.open(io.BytesIO(gif)).format == "GIF"  # Pillow reads it when not told which formats to try
    refused(data_uri(gif, "gif"), "declared as image/gif")
    assert refused(data_uri(gif, "png"), "not in a format") == (
        "an image is not in a format this deployment accepts (PNG, JPEG or WEBP)"
    )
    load_image(data_uri(gif, "gif"), dataclasses.replace(POLICY, formats=("GIF",)))


def test_the_declared_type_must_be_the_real_one() -> None:
    jpeg = encoded(picture(), "JPEG")
    assert refused(data_uri(jpeg, "png"), "declared") == "an image is declared as image/png but is JPEG"
    refused(data_uri(PNG, "webp"), "declared as image/webp but is PNG")


def test_a_payload_over_the_byte_limit_is_refused_before_base64_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def b64decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded")

    monkeypatch.setattr(base64, "b64decode", b64decode)
    payload = "A" * (POLICY.max_bytes * 4 // 3 + 8)
    message = refused(f"data:image/png;base64,{payload}", "bytes")
    assert message == f"an image is {len(payload) * 3 // 4} bytes; at most {POLICY.max_bytes} bytes are allowed"


@pytest.mark.parametrize(
    "payload",
    ["not base64!", "iVBORw0KGgo", "iVBO Rw0K", "iVBO\nRw0K", "-_-_"],
    ids=["symbols", "no-padding", "space", "newline", "urlsafe"],
)
def test_invalid_base64_is_refused(payload: str) -> None:
    refused(f"data:image/png;base64,{payload}", "not valid base64")


@pytest.mark.parametrize(
    "source",
    [
        "data:image/png,rawbytes",
        "data:image/png;charset=utf-8;base64,AAAA",
        "data:text/plain;base64,AAAA",
        "data:;base64,AAAA",
        "data:image/png;base64",
    ],
)
def test_malformed_data_uris_are_refused(source: str) -> None:
    refused(source, "must look like data:image/png;base64,")


@pytest.mark.parametrize(
    "source",
    ["/etc/passwd", "cat.png", "file:///etc/passwd", "ftp://images.example.com/a.png", base64.b64encode(PNG).decode()],
)
def test_anything_but_a_data_uri_or_a_url_is_refused(source: str) -> None:
    assert refused(source, "must be") == (
        "an image must be a data URI (data:image/png;base64,<data>) or an http(s) URL on a host this deployment allows"
    )


# Attacks through URLs


def test_urls_are_refused_where_no_host_is_allowed() -> None:
    network = Network({}, {})
    data_only = dataclasses.replace(POLICY, url_hosts=frozenset())
    refused(f"https://{HOST}/a.png", "accepts no image URLs: an image must be a data URI", data_only, network.fetch())
    assert not network.lookups and not network.requests


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.net/a.png",
        f"https://{HOST}.evil.example.net/a.png",
        f"https://evil.example.net/{HOST}/a.png",
        f"https://{PUBLIC_IP}/a.png",
    ],
)
def test_a_host_not_allowed_is_refused_before_any_network(url: str) -> None:
    network = Network({}, {})
    refused(
        url, "fetched only from the hosts this deployment allows; host '.*' is not one of them", fetch=network.fetch()
    )
    assert not network.lookups and not network.requests


@pytest.mark.parametrize("url", [f"https://user:pw@{HOST}/a.png", f"https://{HOST}@evil.example.net/a.png"])
def test_credentials_in_a_url_are_refused(url: str) -> None:
    network = Network({}, {})
    refused(url, "user name or password", fetch=network.fetch())
    assert not network.lookups and not network.requests


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.1"],
        ["169.254.169.254"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["100.64.0.1"],
        ["0.0.0.0"],
        ["224.0.0.1"],
        ["fe80::1%eth0"],
        ["fd00::1"],
        ["64:ff9b::a00:1"],
        ["2002:a00:1::1"],
        ["::7f00:1"],
        [PUBLIC_IP, "192.168.1.1"],
    ],
    ids=lambda addresses: ",".join(addresses),
)
def test_a_host_resolving_to_a_non_public_address_is_refused_before_connecting(addresses: list[str]) -> None:
    network = Network({HOST: addresses}, {})
    refused(f"https://{HOST}/a.png", "resolves to an address that is not publicly routable", fetch=network.fetch())
    assert network.requests == []


def test_what_counts_as_public() -> None:
    assert is_public_address(PUBLIC_IP) and is_public_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert is_public_address("::ffff:93.184.215.14") and is_public_address("64:ff9b::5db8:d70e")
    assert not is_public_address("not an address") and not is_public_address("240.0.0.1")


def test_a_host_that_does_not_resolve_is_refused() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    refused(f"https://{HOST}/a.png", f"'{HOST}', could not be resolved", fetch=UrlFetch(resolve=fails))


def test_a_redirect_to_another_host_is_refused() -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": redirect("http://169.254.169.254/latest/")})
    refused(f"https://{HOST}/a.png", "redirected to a host this deployment does not allow", fetch=network.fetch())
    assert network.lookups == [(HOST, 443)]


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://images.example.com/"])
def test_a_redirect_to_another_scheme_is_refused(location: str) -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": redirect(location)})
    refused(f"https://{HOST}/a.png", "redirected to a host this deployment does not allow", fetch=network.fetch())


def test_a_redirect_from_https_to_http_is_refused() -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": redirect(f"http://{HOST}/a.png")})
    refused(f"https://{HOST}/a.png", "from https to plain http", fetch=network.fetch())


def test_a_redirect_to_an_allowed_host_that_resolves_privately_is_refused() -> None:
    network = Network(
        {HOST: [PUBLIC_IP], OTHER_ALLOWED_HOST: ["10.0.0.7"]},
        {f"https://{HOST}/a.png": redirect(f"https://{OTHER_ALLOWED_HOST}/a.png")},
    )
    refused(
        f"https://{HOST}/a.png",
        f"'{OTHER_ALLOWED_HOST}', resolves to an address that is not publicly",
        fetch=network.fetch(),
    )
    assert len(network.requests) == 1


def test_redirects_stop_after_three_hops() -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/loop": redirect("/loop")})
    refused(f"https://{HOST}/loop", "redirected more than 3 times", fetch=network.fetch())
    assert len(network.requests) == 4


def test_a_body_over_the_byte_limit_is_cut_off_while_streaming() -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(1000):
            sent.append(index)
            yield b"\0" * 4096

    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/big.png": image_response(chunks())})
    refused(f"https://{HOST}/big.png", f"body is over {POLICY.max_bytes} bytes", fetch=network.fetch())
    assert len(sent) == POLICY.max_bytes // 4096 + 1


def test_a_content_length_over_the_byte_limit_is_refused_before_reading() -> None:
    sent: list[bytes] = []

    def body() -> Iterator[bytes]:
        sent.append(b"x")
        yield b"x"

    too_long = str(POLICY.max_bytes + 1)
    network = Network(
        {HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": image_response(body(), **{"Content-Length": too_long})}
    )
    message = refused(f"https://{HOST}/a.png", "bytes are allowed", fetch=network.fetch())
    assert message == f"an image is {too_long} bytes; at most {POLICY.max_bytes} bytes are allowed"
    assert sent == []


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream", ""])
def test_a_body_that_is_not_an_image_type_is_refused(content_type: str) -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": image_response(PNG, content_type)})
    refused(f"https://{HOST}/a.png", "not an image/\\* type", fetch=network.fetch())


def test_a_compressed_body_is_refused() -> None:
    network = Network(
        {HOST: [PUBLIC_IP]},
        {f"https://{HOST}/a.png": image_response(iter([gzip.compress(PNG)]), **{"Content-Encoding": "gzip"})},
    )
    refused(f"https://{HOST}/a.png", "Content-Encoding", fetch=network.fetch())


def test_an_http_error_is_refused_with_its_status() -> None:
    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": lambda request: httpx.Response(404)})
    assert refused(f"https://{HOST}/a.png", "404", fetch=network.fetch()) == "fetching an image URL answered HTTP 404"


def test_a_timeout_is_a_generic_400() -> None:
    def times_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out reading from 93.184.215.14", request=request)

    network = Network({HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.png": times_out})
    assert refused(f"https://{HOST}/a.png", "within", fetch=network.fetch()) == (
        "an image URL could not be fetched within 5 s"
    )


def test_the_deadline_covers_the_whole_stream() -> None:
    network = Network({HOST: [PUBLIC_IP]}, {})

    def slow_chunks() -> Iterator[bytes]:
        for _ in range(10):
            network.now += 1.0
            yield b"\0" * 10

    network.routes[f"https://{HOST}/a.png"] = image_response(slow_chunks())
    refused(f"https://{HOST}/a.png", "could not be fetched within 5 s", fetch=network.fetch())
    assert network.now == 5.0


def test_connection_errors_try_the_next_address_then_give_a_generic_400() -> None:
    def refuses(request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC_IP:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, headers={"Content-Type": "image/png"}, content=PNG)

    network = Network({HOST: [PUBLIC_IP, "93.184.215.15"]}, {f"https://{HOST}/a.png": refuses})
    load_image(f"https://{HOST}/a.png", POLICY, fetch=network.fetch())
    assert [request.url.host for request in network.requests] == [PUBLIC_IP, "93.184.215.15"]
    network.dns[HOST] = [PUBLIC_IP]
    assert refused(f"https://{HOST}/a.png", "could not", fetch=network.fetch()) == "an image URL could not be fetched"


def test_a_fetched_body_is_held_to_the_same_image_checks() -> None:
    network = Network(
        {HOST: [PUBLIC_IP]}, {f"https://{HOST}/a.gif": image_response(encoded(picture(), "GIF"), "image/gif")}
    )
    refused(f"https://{HOST}/a.gif", "not in a format this deployment accepts", fetch=network.fetch())
