"""Images: format and size read from real encoder output (Pillow), damage named, limits kept."""

from __future__ import annotations

import base64
import io
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vllama.config import DEFAULT_MAX_IMAGE_PIXELS
from vllama.translate import TranslationError
from vllama.translate.images import ImageError, check_media_parts, image_part, inspect

LIMIT = 1_000_000


def encoded(fmt: str, size: tuple[int, int] = (37, 21), **save: object) -> bytes:
    buf = io.BytesIO()
    mode = "P" if fmt == "GIF" else "RGB"
    Image.new(mode, size).save(buf, format=fmt, **save)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge size: a few hundred bytes on the wire."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


CASES = [
    ("PNG", "png", {}),
    ("JPEG", "jpeg", {}),
    ("JPEG", "jpeg", {"progressive": True}),  # SOF2
    ("JPEG", "jpeg", {"exif": b"Exif\x00\x00" + b"\x00" * 20000}),  # a large APP1 first
    ("WEBP", "webp", {}),  # lossy: VP8
    ("WEBP", "webp", {"lossless": True}),  # VP8L
    ("GIF", "gif", {}),
]


@pytest.mark.parametrize(("fmt", "kind", "save"), CASES)
def test_format_and_size_come_from_the_bytes(fmt: str, kind: str, save: dict[str, object]) -> None:
    info = inspect(encoded(fmt, (37, 21), **save))
    assert (info.format, info.width, info.height) == (kind, 37, 21)


def test_webp_with_an_extended_header_vp8x() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (300, 7), (1, 2, 3, 128)).save(buf, format="WEBP")  # alpha: VP8X
    data = buf.getvalue()
    assert data[12:16] == b"VP8X"
    assert (inspect(data).width, inspect(data).height) == (300, 7)


def test_the_part_carries_the_real_type_whatever_the_client_declared() -> None:
    jpeg = encoded("JPEG")
    part = image_part(f"data:image/png;base64,{b64(jpeg)}", "images[0]", LIMIT)
    assert part == {
        "type": "image_url",
        "image_url": {"url": f"data:image/jpeg;base64,{b64(jpeg)}"},
    }
    assert image_part(b64(jpeg), "images[0]", LIMIT) == part


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("!!!not base64!!!", "is not valid base64"),
        (b64(b"hello world, no picture here"), "is not a PNG, JPEG, WebP or GIF image"),
        (b64(encoded("PNG")[:20]), "is a truncated PNG"),
        (b64(encoded("JPEG")[:40]), "is a truncated JPEG"),
        (b64(encoded("WEBP")[:16]), "is a truncated or unknown WebP"),
        (b64(b"\xff\xd8\xff\xda\x00\x08garbage"), "no frame header"),
        (b64(bomb_png(0, 10)), "of 0x10 pixels"),
        ("data:image/png,rawtext", "must be a base64 data URL"),
        (42, "must be a base64-encoded image"),
        ("", "must be a base64-encoded image"),
    ],
)
def test_unusable_images_are_named(raw: object, problem: str) -> None:
    with pytest.raises(TranslationError) as err:
        image_part(raw, "messages[1].images[0]", LIMIT)
    assert err.value.field == "messages[1].images[0]"
    assert err.value.message.startswith('"messages[1].images[0]"')
    assert problem in err.value.message


def test_a_decompression_bomb_is_refused_before_the_engine_decodes_it() -> None:
    # vLLM 0.32 answered 500 to this 14000x14000 PNG header (Pillow's bomb check).
    with pytest.raises(TranslationError) as err:
        image_part(b64(bomb_png(14000, 14000)), "images[0]", DEFAULT_MAX_IMAGE_PIXELS)
    assert "14000x14000 image (196000000 pixels)" in err.value.message
    assert "max_image_pixels" in err.value.message


def test_the_pixel_limit_is_a_parameter() -> None:
    data = b64(encoded("PNG", (100, 100)))
    assert image_part(data, "images[0]", max_pixels=10_000)["type"] == "image_url"
    with pytest.raises(TranslationError, match="over the limit of 9999 pixels"):
        image_part(data, "images[0]", max_pixels=9_999)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_either_inspect_or_raise_image_error(data: bytes) -> None:
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a"):
        try:
            info = inspect(prefix + data)
        except ImageError:
            continue
        assert info.width > 0 and info.height > 0


@pytest.mark.parametrize(("fmt", "kind", "save"), CASES)
def test_every_truncation_is_refused_or_still_reads_the_right_size(
    fmt: str, kind: str, save: dict[str, object]
) -> None:
    data = encoded(fmt, (37, 21), **save)
    for cut in range(0, min(len(data), 400)):
        try:
            info = inspect(data[:cut])
        except ImageError:
            continue
        assert (info.width, info.height) == (37, 21)  # the header was complete


def _user(*parts: dict[str, object]) -> list[dict[str, object]]:
    return [{"role": "system", "content": "s"}, {"role": "user", "content": list(parts)}]


def test_openai_image_data_urls_are_checked_as_ollama_images() -> None:
    good = f"data:image/png;base64,{b64(encoded('PNG'))}"
    check_media_parts(
        _user({"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": good}}),
        LIMIT,
    )
    bomb = f"data:image/png;base64,{b64(bomb_png(14000, 14000))}"
    with pytest.raises(TranslationError) as err:
        check_media_parts(_user({"type": "image_url", "image_url": {"url": bomb}}), LIMIT)
    assert err.value.field == "messages[1].content[0].image_url"
    assert "14000x14000" in err.value.message


@pytest.mark.parametrize("kind", ["image_url", "audio_url", "video_url"])
@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "", None]
)
def test_openai_media_urls_the_engine_would_fetch_are_refused(kind: str, url: object) -> None:
    with pytest.raises(TranslationError, match="must be a base64 data URL") as err:
        check_media_parts(_user({"type": kind, kind: {"url": url}}), LIMIT)
    assert err.value.field == f"messages[1].content[0].{kind}"


def test_openai_messages_without_media_or_of_odd_shapes_pass() -> None:
    for messages in (None, "x", [1, {"content": "text"}, {"content": [None, {"type": "text"}]}]):
        check_media_parts(messages, LIMIT)
