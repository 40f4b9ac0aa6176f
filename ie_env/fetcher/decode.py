"""Turn downloaded bytes into a clean RGB image of the configured size, or a reason why not.

Only allow-listed formats are parsed (Pillow is asked to try those plugins alone); other image
formats are recognised by their magic bytes and refused as ``format_not_allowed``. The pixel count
is checked against ``max_pixels`` from the header, before anything is decoded (the decompression-bomb
guard; Pillow's own ``DecompressionBombError`` maps to the same reason). JPEGs are decoded at a
reduced DCT scale when the target size allows (``draft``). The stored image is re-encoded from the
pixels, so bytes appended to or hidden in a polyglot file never reach the store.

Decoding and resizing run under the fetcher's decoded-byte budget (``budget.ByteBudget``), charged
``decode_cost`` bytes, so that the pixels of all images being decoded at once stay bounded.
"""

from __future__ import annotations

import io
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ie_env.fetcher.budget import ByteBudget
from ie_env.fetcher.config import FetchConfig, FetchError, Reason

_OTHER_IMAGE_MAGIC = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"),
    (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"BM", "BMP"), (b"GIF8", "GIF"),
    (b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"qoif", "QOI"), (b"\x00\x00\x00\x0cjP", "JPEG2000"),
)


#: Pillow allocates an image in blocks of up to this many bytes. Blocks larger than glibc's largest
#: dynamic mmap threshold (32 MiB on 64-bit) are mapped and unmapped with each image, so a decoded
#: image's memory goes back to the system when it is freed. With Pillow's default 16 MiB blocks the
#: freed blocks stay in per-thread malloc arenas: 32 fetch threads that decoded 64 MP images one or
#: two at a time kept 7 GB resident.
PILLOW_BLOCK_SIZE = 64 << 20


def configure_pillow_memory() -> None:
    """Raise Pillow's (process-wide) block size to ``PILLOW_BLOCK_SIZE`` if it is smaller."""
    if Image.core.get_block_size() < PILLOW_BLOCK_SIZE:
        Image.core.set_block_size(PILLOW_BLOCK_SIZE)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


@dataclass
class Decoded:
    image: Image.Image  # RGB, resized
    format: str
    orig_width: int
    orig_height: int


def sniff_other_format(data: bytes) -> str | None:
    head = data[:32]
    for magic, name in _OTHER_IMAGE_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    low = data[:256].lstrip().lower()
    if low.startswith(b"<svg") or (low.startswith(b"<?xml") and b"<svg" in data[:2048].lower()):
        return "SVG"
    return None


def _target_size(w: int, h: int, cfg: FetchConfig) -> tuple[int, int]:
    s = cfg.image_size
    if cfg.resize == "none":
        return w, h
    if cfg.resize == "longer":
        scale = s / max(w, h)
    else:  # shorter, center_crop
        scale = s / min(w, h)
    if scale >= 1.0:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of Pillow's in-memory layout (multi-band modes are stored 4 bytes wide)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_cost(img: Image.Image) -> int:
    """Bytes that decoding ``img`` (at its current, possibly drafted, size) allocates at once, at
    most: the decoded pixels, a second copy (turning it to its EXIF orientation; its orientation is
    not known before decoding), and the conversion to RGB (through RGBA plus a mask when it has
    transparency)."""
    w, h = img.size
    px = w * h
    cost = 2 * px * _bytes_per_pixel(img.mode)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        cost += px * (4 + 4 + 1)
    elif img.mode != "RGB":
        cost += px * 4
    return cost


def decode_image(data: bytes, cfg: FetchConfig, budget: ByteBudget | None = None) -> Decoded:
    """Decode, check and resize; raises ``FetchError`` with a reason code. With ``budget``, the decode
    waits until its ``decode_cost`` fits in the budget and holds it until the image is resized."""
    try:
        img = Image.open(io.BytesIO(data), formats=cfg.formats)
    except Image.DecompressionBombError as exc:
        raise FetchError(Reason.DECOMPRESSION_BOMB, str(exc)) from None
    except UnidentifiedImageError:
        other = sniff_other_format(data)
        if other is not None and other not in cfg.formats:
            raise FetchError(Reason.FORMAT_NOT_ALLOWED, other) from None
        if other is not None:
            raise FetchError(Reason.TRUNCATED if len(data) < 64 else Reason.NOT_IMAGE,
                             f"unreadable {other} data") from None
        raise FetchError(Reason.NOT_IMAGE, "not a recognised image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _decode_reason(exc) from None
    with img:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise FetchError(Reason.NOT_IMAGE, f"bad size {w}x{h}")
        if w * h > cfg.max_pixels:
            raise FetchError(Reason.DECOMPRESSION_BOMB, f"{w}x{h} > {cfg.max_pixels} pixels")
        if min(w, h) < cfg.min_side:
            raise FetchError(Reason.TOO_SMALL, f"{w}x{h}")
        fmt = img.format or "?"
        tw, th = _target_size(w, h, cfg)
        if fmt == "JPEG" and (tw, th) != (w, h):
            try:
                img.draft("RGB", (tw, th))
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise _decode_reason(exc) from None
        with budget.hold(decode_cost(img)) if budget is not None else nullcontext():
            try:
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy unless it has to turn
                out = _to_rgb(img)
            except Image.DecompressionBombError as exc:
                raise FetchError(Reason.DECOMPRESSION_BOMB, str(exc)) from None
            except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
                raise _decode_reason(exc) from None
            if out is not img:
                img.close()  # the decoded original: only its RGB conversion is needed from here
            out = _fit(out, cfg)
            if out is img:
                out = img.copy()  # already at its stored size: outlive the file it was read from
    return Decoded(image=out, format=fmt, orig_width=w, orig_height=h)


def _fit(out: Image.Image, cfg: FetchConfig) -> Image.Image:
    """Resize (and centre-crop) to the stored size."""
    ow, oh = out.size
    tw, th = _target_size(ow, oh, cfg)
    if (tw, th) != (ow, oh):
        out = out.resize((tw, th), _RESAMPLE[cfg.resample], reducing_gap=3.0)
    if cfg.resize == "center_crop":
        s = min(out.size[0], out.size[1], cfg.image_size)
        left, top = (out.size[0] - s) // 2, (out.size[1] - s) // 2
        out = out.crop((left, top, left + s, top + s))
    return out


def _decode_reason(exc: BaseException) -> FetchError:
    msg = str(exc)
    low = msg.lower()
    if "decompressed" in low or "decompression bomb" in low:
        return FetchError(Reason.DECOMPRESSION_BOMB, msg)
    if "truncated" in low or isinstance(exc, EOFError) or "premature end" in low:
        return FetchError(Reason.TRUNCATED, msg)
    return FetchError(Reason.NOT_IMAGE, f"{type(exc).__name__}: {msg}")


def encode_image(img: Image.Image, fmt: str, quality: int) -> tuple[bytes, str]:
    """(bytes, file extension) of the stored image."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, optimize=False)
        return buf.getvalue(), "jpg"
    if fmt == "webp":
        img.save(buf, "WEBP", quality=quality)
        return buf.getvalue(), "webp"
    img.save(buf, "PNG")
    return buf.getvalue(), "png"


# ------------------------------------------------------------------------------------- dHash


def dhash(img: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: grey, (size+1) x size, one bit per horizontal gradient sign."""
    g = img.convert("L").resize((size + 1, size), Image.LANCZOS, reducing_gap=2.0)
    a = np.asarray(g, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def dhash_hex(value: int) -> str:
    return f"{value:016x}"


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
