"""Image corruptions a production camera produces, applied to the image as the camera sees it.

``Corruption(name, severity, seed)`` maps a decoded uint8 image (H, W, C) to its corrupted copy,
before any resizing or normalisation (the data module's cache calls it between decoding and
resizing). Severities run 1 (mild) to 5 (severe); ``SEVERITIES`` holds the physical parameter of
each. Random corruptions (noise) draw from (seed, image key), so an image is corrupted the same way
in every run, whatever the order or subset of images.

Signal-to-noise ratio: ``SNR_dB = 10 log10(P_signal / P_noise)`` with the signal power the **mean of
the squared pixel values** of the clean image (MATLAB's ``awgn(x, snr, 'measured')`` convention,
the usual one of the noise-robust texture papers NEU comes from) and the noise power its variance.
The Gaussian noise of an image is drawn with ``std = sqrt(mean(x^2) / 10^(SNR/10))``, then the image
is rounded and clipped to uint8 as a camera would; ``measured_snr_db`` measures the result. (With
the image variance as signal power instead, the same dB figure would mean far weaker noise:
NEU images have a mean gray level of about 120 but a standard deviation of about 25.)

Gray images that were decoded as RGB (three equal channels) are corrupted once and repeated, so a
3-channel model sees the same camera noise as a gray one.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from neu_defects.core.errors import UserError

# Parameter of each corruption at severities 1..5.
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (40.0, 30.0, 25.0, 20.0, 15.0),  # SNR in dB (NEU paper: 30 and 20 dB)
    "gaussian_blur": (0.5, 1.0, 1.5, 2.0, 3.0),         # sigma in pixels of the 200 x 200 image
    "brightness": (15.0, 30.0, 45.0, 60.0, 80.0),       # gray levels added (over-exposure), clipped at 255
    "contrast": (0.8, 0.6, 0.45, 0.3, 0.2),             # factor on the deviation from the image mean
    "jpeg": (50.0, 30.0, 20.0, 10.0, 5.0),              # JPEG quality
}
UNITS = {"gaussian_noise": "SNR dB", "gaussian_blur": "sigma px", "brightness": "+gray levels",
         "contrast": "x contrast", "jpeg": "quality"}
CLEAN = ("none", "clean")


def noise_std(image: np.ndarray, snr_db: float) -> float:
    """The Gaussian noise std that puts ``image`` at ``snr_db`` (signal power: mean of squares)."""
    power = float(np.mean(np.square(image.astype(np.float64))))
    return float(np.sqrt(power / 10 ** (snr_db / 10)))


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against ``clean``: mean of squared clean pixels over the noise power."""
    clean = clean.astype(np.float64)
    noise = noisy.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(np.square(clean)) / np.mean(np.square(noise))))


def add_noise_at_snr(gray: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noisy = gray.astype(np.float64) + rng.normal(0.0, noise_std(gray, snr_db), gray.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _gaussian_blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(gray, mode="L").filter(ImageFilter.GaussianBlur(sigma)), dtype=np.uint8)


def _brightness(gray: np.ndarray, shift: float) -> np.ndarray:
    return np.clip(gray.astype(np.float64) + shift, 0, 255).astype(np.uint8)


def _contrast(gray: np.ndarray, factor: float) -> np.ndarray:
    mean = gray.mean()
    return np.clip(np.rint(mean + factor * (gray.astype(np.float64) - mean)), 0, 255).astype(np.uint8)


def _jpeg(gray: np.ndarray, quality: float) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


class Corruption:
    """One corruption at one severity: ``corruption(image, key)`` -> corrupted uint8 image."""

    def __init__(self, name: str, severity: int = 3, seed: int = 0):
        if name not in SEVERITIES:
            raise UserError(f"corruption={name} is not a corruption: use one of {', '.join(SEVERITIES)} "
                            "(or leave corruption unset for clean images)")
        levels = SEVERITIES[name]
        if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= len(levels):
            raise UserError(f"severity={severity!r} is out of range: use an integer from 1 (mild) to {len(levels)} "
                            f"(severe); {name} takes {UNITS[name]} {', '.join(f'{v:g}' for v in levels)}")
        self.name, self.severity, self.seed = name, severity, seed
        self.parameter = levels[severity - 1]

    def __repr__(self) -> str:
        return f"Corruption({self.name}, severity {self.severity}: {UNITS[self.name]} {self.parameter:g})"

    def corrupt_gray(self, gray: np.ndarray, key: str = "") -> np.ndarray:
        """Corrupt one (H, W) uint8 image; ``key`` (e.g. its path) seeds the random ones."""
        if self.name == "gaussian_noise":
            rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
            return add_noise_at_snr(gray, self.parameter, rng)
        functions: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
            "gaussian_blur": _gaussian_blur, "brightness": _brightness, "contrast": _contrast, "jpeg": _jpeg}
        return functions[self.name](gray, self.parameter)

    def __call__(self, image: np.ndarray, key: str = "") -> np.ndarray:
        """Corrupt an (H, W, C) uint8 image; a gray image held as three equal channels is corrupted once."""
        if image.shape[2] == 1 or (image.shape[2] == 3 and (image == image[..., :1]).all()):
            gray = self.corrupt_gray(np.ascontiguousarray(image[..., 0]), key)
            return np.repeat(gray[..., None], image.shape[2], axis=2)
        return np.stack([self.corrupt_gray(np.ascontiguousarray(image[..., c]), f"{key}#{c}")
                         for c in range(image.shape[2])], axis=2)


def build_corruption(name: str | None, severity: int | None = None, seed: int = 0) -> Corruption | None:
    """The corruption of an eval config (``corruption=…`` ``severity=…``); None or ``none``: clean images."""
    if name is None or str(name).lower() in CLEAN:
        return None
    return Corruption(str(name), 3 if severity is None else severity, seed)
