"""Image files: finding them under a folder, decoding them with Pillow, encoding PNG."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

from pcjax.data.prepare.errors import PrepareError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def png(image: np.ndarray | Image.Image) -> bytes:
    """PNG bytes of an image (uint8 (H, W, 3) pixels or a Pillow image)."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG")
    return buffer.getvalue()


def images_in(folder: str) -> list[str]:
    """Image files directly or deeper under `folder`, sorted, hidden files left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def load_image(path: str, image_size: int | None) -> tuple[bytes, np.ndarray]:
    """One image file -> (the bytes to store, its RGB pixels uint8 (H, W, 3) as stored).

    With `image_size` S, the image is center-cropped to a square and resized to S x S (bicubic);
    without, JPEG and PNG files already in RGB are stored as they are, others as PNG.

    Raises:
      PrepareError: Pillow cannot decode the file.
    """
    try:
        with Image.open(path) as image:
            file_format = image.format
            rgb = image.convert("RGB")
            unchanged = image.mode == "RGB" and file_format in ("JPEG", "PNG")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PrepareError(f"{path}: not a readable image ({e})") from None
    if image_size:
        rgb = ImageOps.fit(rgb, (image_size, image_size), Image.BICUBIC)
    elif unchanged:
        with open(path, "rb") as f:
            return f.read(), np.asarray(rgb)
    return png(rgb), np.asarray(rgb)
