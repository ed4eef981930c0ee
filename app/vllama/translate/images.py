"""Ollama's base64 `images` → checked OpenAI image parts.

vLLM decodes images itself, and answers HTTP 500 for a picture whose header declares more
pixels than Pillow's decompression-bomb limit (seen with vLLM 0.32: a 190 kB PNG of
14000x14000). A small, highly compressed image of a few thousand pixels a side also costs
seconds of engine CPU to decode. So each image is decoded from base64 here, its format
recognised from its bytes and its size read from its header (no pixel is decoded), and an
image that is not base64, not a PNG/JPEG/WebP/GIF, truncated before its size, or over the
pixel limit is a 400 that names the field. Damage further into the picture is found by
vLLM's decoder, which answers 400 (`Failed to load image: ...`).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Any

from vllama.translate.errors import TranslationError

FORMATS = "PNG, JPEG, WebP or GIF"

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """Why the bytes are not a usable image (the message completes "... is ...")."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png", "jpeg", "webp", "gif" (the MIME subtype)
    width: int
    height: int


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("a truncated PNG (no IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _gif(data: bytes) -> tuple[int, int]:
    if len(data) < 10:
        raise ImageError("a truncated GIF (no screen descriptor)")
    width, height = struct.unpack("<HH", data[6:10])
    return width, height


def _webp(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageError("a damaged WebP (bad VP8 frame header)")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        if data[20] != 0x2F:
            raise ImageError("a damaged WebP (bad VP8L signature)")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise ImageError("a truncated or unknown WebP (no VP8, VP8L or VP8X header)")


def _jpeg(data: bytes) -> tuple[int, int]:
    """Walk the segments up to the first start-of-frame, which holds the size."""
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageError("a damaged JPEG (segment marker expected)")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            raise ImageError("a damaged JPEG (no frame header before the image data)")
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise ImageError("a damaged JPEG (bad segment length)")
        if marker in _JPEG_SOF:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        pos += length
    raise ImageError("a truncated JPEG (it ends before its frame header)")


def inspect(data: bytes) -> ImageInfo:
    """Format and size from the bytes; raises ImageError when they are not a usable image."""
    if data.startswith(_PNG):
        kind, (width, height) = "png", _png(data)
    elif data.startswith(b"\xff\xd8"):
        kind, (width, height) = "jpeg", _jpeg(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind, (width, height) = "webp", _webp(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        kind, (width, height) = "gif", _gif(data)
    elif not data:
        raise ImageError("empty")
    else:
        raise ImageError(f"not a {FORMATS} image")
    if width == 0 or height == 0:
        raise ImageError(f"a {kind.upper()} of {width}x{height} pixels")
    return ImageInfo(kind, width, height)


def _decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"not valid base64 ({exc})") from None


def image_part(raw: Any, field: str, max_pixels: int | None) -> dict[str, Any]:
    """One Ollama image (base64, or a base64 data URL) → an OpenAI image_url part."""
    if not isinstance(raw, str) or not raw:
        raise TranslationError(f'"{field}" must be a base64-encoded image', field)
    payload = raw
    if raw.startswith("data:"):
        header, sep, payload = raw.partition(",")
        if not sep or not header.endswith(";base64"):
            raise TranslationError(f'"{field}" must be a base64 data URL or base64 data', field)
    try:
        info = inspect(_decode(payload))
    except ImageError as exc:
        raise TranslationError(f'"{field}" is {exc}', field) from None
    pixels = info.width * info.height
    if max_pixels is not None and pixels > max_pixels:
        raise TranslationError(
            f'"{field}" is a {info.width}x{info.height} image ({pixels} pixels), over the '
            f"limit of {max_pixels} pixels: scale it down, or raise max_image_pixels",
            field,
        )
    return {"type": "image_url", "image_url": {"url": f"data:image/{info.format};base64,{payload}"}}


# OpenAI content parts whose URL vLLM would fetch itself (images, audio, video).
_MEDIA_PARTS = ("image_url", "audio_url", "video_url")


def _media_url(part: dict[str, Any], kind: str) -> Any:
    value = part.get(kind)
    return value.get("url") if isinstance(value, dict) else value


def check_media_parts(messages: Any, max_pixels: int | None) -> None:
    """OpenAI `messages` with media parts checked before vLLM sees them (TranslationError).

    A URL that is not a data URL would be fetched by the engine from wherever the client
    points it (its network, not the client's): refused, as Ollama refuses image URLs; the
    client sends the bytes instead. An image data URL is checked as Ollama's `images` are
    (format, size from its header, the pixel limit), so a decompression bomb is a 400
    rather than the engine's 500."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _MEDIA_PARTS:
                continue
            assert isinstance(part, dict)
            field = f"messages[{i}].content[{j}].{kind}"
            url = _media_url(part, kind)
            if not isinstance(url, str) or not url.startswith("data:"):
                raise TranslationError(
                    f'"{field}" must be a base64 data URL (data:<type>;base64,...): media '
                    "URLs are not fetched; download the file and send its bytes",
                    field,
                )
            if kind == "image_url":
                image_part(url, field, max_pixels)
