"""Uploaded images in (validated before decoding), model-sized arrays, PNGs out.

Uploads are refused early and cheaply: byte size first, then the format from the magic bytes,
then the pixel count from the header (before any pixel is decoded, so a small file that
declares a huge image — a decompression bomb — never allocates it).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from flows.service.errors import APIError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
SIZES = {"256x256": 256, "512x512": 512, "1024x1024": 1024}


def _format_of(data: bytes) -> str | None:
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    return None


def read_image(data: bytes, *, param: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an uploaded PNG or JPEG; every refusal is an APIError naming ``param``."""
    if len(data) > max_bytes:
        raise APIError(
            413,
            f"'{param}' is {len(data) / 2**20:.1f} MiB; uploads are limited to "
            f"{max_bytes / 2**20:.1f} MiB. Send a smaller PNG or JPEG.",
            param=param,
            code="file_too_large",
        )
    if not data:
        raise APIError(400, f"'{param}' is empty; send a PNG or JPEG file.", param=param, code="invalid_image")
    fmt = _format_of(data)
    if fmt is None:
        raise APIError(
            400,
            f"'{param}' is not a PNG or JPEG image; only PNG and JPEG uploads are supported.",
            param=param,
            code="invalid_image_format",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = img.size
            if width * height > max_pixels:
                raise APIError(
                    400,
                    f"'{param}' declares {width}x{height} pixels, more than the {max_pixels} allowed; "
                    "resize it before uploading.",
                    param=param,
                    code="image_too_large",
                )
            img.load()
    except APIError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(400, f"'{param}' is too large to decode safely.", param=param, code="image_too_large") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise APIError(
            400, f"'{param}' could not be decoded as {fmt} ({err}); send a valid PNG or JPEG file.",
            param=param, code="invalid_image",
        ) from None
    return img


def square_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) used for images and their masks alike."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def to_rgb_square(img: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: centre-cropped to a square, resized with Lanczos."""
    rgb = img.convert("RGB").crop(square_crop_box(*img.size))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def transparent_pixels(img: Image.Image) -> np.ndarray:
    """bool [side, side] over the centred square: True where the pixel is fully transparent."""
    alpha = np.asarray(img.convert("RGBA").crop(square_crop_box(*img.size)))[..., 3]
    return alpha == 0


def edit_cells(transparent: np.ndarray, grid: int) -> np.ndarray:
    """bool [grid, grid]: a token cell is edited when any pixel inside it is transparent."""
    side = transparent.shape[0]
    edges = [(i * side) // grid for i in range(grid + 1)]
    cells = np.zeros((grid, grid), dtype=bool)
    for i in range(grid):
        for j in range(grid):
            block = transparent[edges[i] : edges[i + 1], edges[j] : edges[j + 1]]
            cells[i, j] = bool(block.any())
    return cells


def resize(image: np.ndarray, size: int) -> Image.Image:
    """uint8 [H, W, 3] → PIL image of size×size (Lanczos; identity when already that size)."""
    img = Image.fromarray(image)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def composite_edit(generated: Image.Image, original: np.ndarray, cells: np.ndarray) -> Image.Image:
    """Keep the original's pixels in unedited cells (sharper than their VQGAN reconstruction).

    generated: the sampled image at the output size; original: uint8 [S, S, 3] centred square of
    the upload; cells: bool [g, g] edited cells.
    """
    size = generated.size[0]
    orig = resize(original, size)
    edited = Image.fromarray((cells * 255).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    return Image.composite(generated, orig, edited)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
