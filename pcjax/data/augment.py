"""Per-example preprocessing in NumPy: augmentation, ImageNet eval crop, normalization.

Randomness comes from an explicit `np.random.Generator` so that an example's augmentation is a pure
function of (seed, the example's position in the training stream); see `example_rng`.

CIFAR training augmentation follows RepDistiller (Tian et al., "Contrastive Representation
Distillation", ICLR 2020): `RandomCrop(32, padding=4)` with zero padding, then
`RandomHorizontalFlip()`. ImageNet follows the torchvision/ResNet recipe: training takes a random
resized crop (area fraction U(0.08, 1), log-uniform aspect ratio in [3/4, 4/3], 10 tries, else a
center crop) resized bilinearly to 224x224, then a random flip; evaluation resizes the shorter side
to 256 and takes the central 224x224.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pcjax.data.specs import DatasetSpec

CIFAR_PADDING = 4
IMAGENET_SIZE = 224
IMAGENET_RESIZE = 256
_CROP_SCALE = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10


def example_rng(seed: int, position: int) -> np.random.Generator:
    """The generator that augments the example at `position` of the training stream of `seed`.

    Philox is a counter-based generator keyed here by the 128-bit pair (seed, position): distinct
    pairs give independent streams, so an example's augmentation depends on nothing else (not on
    the thread or process that reads it, nor on what was read before).
    """
    return np.random.Generator(np.random.Philox(key=np.array([seed, position], np.uint64)))


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` (H, W, C) mirrored left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def cifar_crop_flip(image: np.ndarray, rng: np.random.Generator, *,
                    padding: int = CIFAR_PADDING) -> np.ndarray:
    """Zero-pad `padding` pixels on each side, crop back to (H, W) at a random offset, maybe flip.

    Args:
      image: (H, W, C).
      rng: source of the crop offsets (uniform in [0, 2 * padding] per axis) and the flip.
      padding: pixels of zeros added on each side.

    Returns:
      (H, W, C), same dtype.
    """
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return random_flip(padded[top : top + h, left : left + w], rng)


def _resize(image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Bilinear resize of `image`'s region `box` = (left, top, right, bottom) to `size` (H, W)."""
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR, box=box))
    return out.reshape(size + image.shape[2:])


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, *,
                        size: int = IMAGENET_SIZE) -> np.ndarray:
    """Random crop of random area and aspect ratio, resized to (size, size), then maybe flipped.

    Args:
      image: (H, W, C) uint8, any H and W.
      rng: source of the crop and the flip.
      size: output height and width.

    Returns:
      (size, size, C) uint8.
    """
    h, w = image.shape[:2]
    area = h * w
    log_ratio = (math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1]))
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(*_CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= w and 0 < crop_h <= h:
            top = int(rng.integers(0, h - crop_h + 1))
            left = int(rng.integers(0, w - crop_w + 1))
            break
    else:
        # No sampled crop fits: the largest central crop with the aspect ratio clamped into range.
        if w / h < _CROP_RATIO[0]:
            crop_w, crop_h = w, round(w / _CROP_RATIO[0])
        elif w / h > _CROP_RATIO[1]:
            crop_w, crop_h = round(h * _CROP_RATIO[1]), h
        else:
            crop_w, crop_h = w, h
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    box = (left, top, left + crop_w, top + crop_h)
    return random_flip(_resize(image, (size, size), box), rng)


def center_crop(image: np.ndarray, *, resize: int = IMAGENET_RESIZE,
                size: int = IMAGENET_SIZE) -> np.ndarray:
    """Resize so the shorter side is `resize` (aspect kept), then take the central (size, size).

    Args:
      image: (H, W, C) uint8.

    Returns:
      (size, size, C) uint8.
    """
    h, w = image.shape[:2]
    scale = resize / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = _resize(image, (new_h, new_w), (0, 0, w, h))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def preprocess(image: np.ndarray, spec: DatasetSpec, *,
               rng: np.random.Generator | None) -> np.ndarray:
    """One stored example image -> the normalized float32 model input of shape `spec.image_shape`.

    Args:
      image: the image as stored (uint8 pixels, or float32 signals for mnist1d).
      spec: the dataset's spec (augmentation kind, normalization).
      rng: augmentation randomness, or None for evaluation / no augmentation. ImageNet images are
        always brought to 224x224: a random resized crop with an rng, a center crop without.

    Returns:
      float32 `(image / spec.pixel_scale - spec.mean) / spec.std`, shape `spec.image_shape`.
    """
    if spec.augmentation == "cifar" and rng is not None:
        image = cifar_crop_flip(image, rng)
    elif spec.augmentation == "imagenet":
        image = random_resized_crop(image, rng) if rng is not None else center_crop(image)
    return normalize(image, spec)


def normalize(image: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """float32 `(image / spec.pixel_scale - spec.mean) / spec.std`, per channel (last axis)."""
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    return (np.asarray(image, np.float32) / np.float32(spec.pixel_scale) - mean) / std
