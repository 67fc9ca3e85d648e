"""The one preprocessing contract shared by training, quantization and every edge backend.

decode (any size; grey or RGB; 8- or 16-bit PNG/JPEG/BMP/TIFF) -> RGB uint8 -> resize -> float32 1x3xHxW in [0, 1].
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge.errors import FrameError

__all__ = ["decode_image", "decode_frame", "load_image", "load_input", "to_input", "resize_rgb", "MAX_PIXELS_DEFAULT"]

# A 16k x 16k frame is far beyond any line camera; bigger usually means a corrupt header.
MAX_PIXELS_DEFAULT = 16384 * 16384

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image to HxWx3 uint8 by its declared mode (never by its pixel values)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        # 16-bit images store 0..65535; 'I' (int32) from a 16-bit PNG holds the same range.
        arr8 = (np.clip(arr, 0, 65535).astype(np.uint32) // 257).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if img.mode == "F":
        raise FrameError("image mode 'F' (float TIFF) is not supported: save frames as 8- or 16-bit integers")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS_DEFAULT,
                 size_hint: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 HxWx3 array (see decode_frame)."""
    return decode_frame(data, source, max_pixels, size_hint)[0]


def decode_frame(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS_DEFAULT,
                 size_hint: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode encoded image bytes to an RGB uint8 HxWx3 array and the image's own (width, height).

    With size_hint (the model's input size), JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    still leaves at least twice that size, which is what makes 1080p frames cheap; training and the daemon
    both decode this way, so the pixels the model sees are the same.

    Raises:
        FrameError: empty, truncated, unknown-format or oversized data, with the frame reference.
    """
    if not data:
        raise FrameError(f"{source}: empty file (0 bytes): the camera or copy step wrote nothing")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below decides; Pillow's bomb warning would only flood the journal
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise FrameError(
                    f"{source}: {w}x{h} pixels exceeds the limit of {max_pixels} pixels: "
                    "check the camera resolution or raise max_pixels in the config"
                )
            if size_hint is not None and img.format == "JPEG":
                img.draft("RGB", (2 * size_hint, 2 * size_hint))
            img.load()
            return _to_rgb_uint8(img), (w, h)
    except FrameError:
        raise
    except UnidentifiedImageError as err:
        raise FrameError(f"{source}: not a readable image (expected PNG/JPEG/BMP/TIFF)") from err
    except Image.DecompressionBombError as err:
        raise FrameError(f"{source}: image header declares more pixels than any camera frame "
                         f"(decompression bomb): {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise FrameError(f"{source}: corrupt or truncated image: {err}") from err
    except Exception as err:  # noqa: BLE001 - frames are hostile input: any decoder fault is this frame's error
        raise FrameError(f"{source}: the image decoder failed: {type(err).__name__}: {err}") from err


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS_DEFAULT, size_hint: int | None = None) -> np.ndarray:
    """Read and decode an image file to RGB uint8 (see decode_image for size_hint)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise FrameError(f"{p}: cannot read file: {err.strerror}") from err
    return decode_image(data, str(p), max_pixels, size_hint)


def resize_rgb(rgb: np.ndarray, size_px: int) -> np.ndarray:
    """Resize an RGB uint8 image to size_px x size_px with bilinear filtering (PIL, antialiased)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FrameError(f"frame must be uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] == size_px and rgb.shape[1] == size_px:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size_px, size_px), Image.BILINEAR), dtype=np.uint8)


def to_input(rgb: np.ndarray, size_px: int) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 1x3xSxS in [0, 1], the ONNX contract input `image`."""
    x = resize_rgb(rgb, size_px).astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def load_input(path: str | Path, size_px: int) -> np.ndarray:
    """An image file as the contract's input: decode (with the size hint), resize, scale to [0, 1]."""
    return to_input(load_image(path, size_hint=size_px), size_px)
