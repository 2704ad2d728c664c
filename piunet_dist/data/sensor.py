"""How PROBA-V forms an LR frame from the ground (docs/method.md section 7), as a generator
draws it and as a fit measures it: one forward model for both.

    LR = gain · (3×3 mean of (PSF ∗ shifted ground)) + offset + noise, in steps of 16 DN

x is the column index and y the row index, both in HR pixels. The PSF is a Gaussian with
its own widths along its two axes and the angle of its first axis from x. A frame's shift
changes smoothly from place to place too (`Physics.warp`), as real frames' do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

QUANTUM = 16  # every real LR and HR value is a multiple of 16 DN


def span(low: float, high: float, meaning: str, bounds: tuple = (0.0, math.inf)):
    """A setting drawn per scene uniformly from [low, high], both within `bounds`."""
    return field(default=(low, high), metadata={"help": meaning, "span": True, "bounds": bounds})


def value(default: float, meaning: str, bounds: tuple = (0.0, math.inf)):
    return field(default=default, metadata={"help": meaning, "span": False, "bounds": bounds})


SHARE = (0.0, 1.0)


@dataclass
class Physics:
    """The ranges a synthetic scene's physics is drawn from. The defaults cover what real
    PROBA-V scenes show (docs/method.md section 7); `simple` is the easier world of earlier
    versions: large uniform shifts, an isotropic blur, heavy noise, large clouds."""

    hr_blur: tuple = span(0.6, 1.0, "the HR image's own PSF: the ground as the 100 m camera saw it (HR px)")
    shift_offset: float = value(1.0, "the scene's grid offset from the HR: each axis uniform in +-this (HR px)")
    shift_scatter: tuple = span(0.3, 0.6, "standard deviation of each frame's shift about the offset (HR px)")
    jump_chance: float = value(
        0.3, "share of scenes in which some frames sit one LR pixel (3 HR px) off the others", SHARE
    )
    jump_share: tuple = span(0.15, 0.35, "share of such a scene's frames that sit off", SHARE)
    blur_x: tuple = span(0.7, 1.3, "PSF width along its first axis, near x (HR px, beyond the 3x3 mean)")
    blur_y: tuple = span(0.6, 0.8, "PSF width along its second axis, near y (HR px)")
    blur_angle: float = value(10.0, "angle of the PSF's first axis from x: uniform in +-this (degrees)")
    blur_jitter: float = value(0.06, "standard deviation of each frame's PSF widths about the scene's (HR px)")
    warp: tuple = span(
        0.1,
        0.2,
        "rms of each frame's own smooth displacement about its shift: misregistered by place (HR px)",
        (0.0, 1.0),  # drawn to first order: beyond an HR pixel that no longer holds
    )
    warp_scale: float = value(
        48.0, "size of that displacement's undulations: a Gaussian of this width (HR px)", (1.0, math.inf)
    )
    gain_spread: tuple = span(0.03, 0.07, "standard deviation of a frame's gain about 1")
    brightness_change: tuple = span(0.015, 0.03, "standard deviation of a frame's mean change between dates (share)")
    seasonal: tuple = span(0.01, 0.02, "amplitude of a smooth brightness field that changes between dates (share)")
    seasonal_slope: float = value(
        2.0, "that field's power falls with frequency as f^-this: the smaller, the finer its changes", (0.5, 6.0)
    )
    local_change: tuple = span(0.0, 0.04, "share of the land whose brightness changes between dates", SHARE)
    local_strength: float = value(0.08, "how much such land changes (share of its brightness)")
    outliers: tuple = span(0.01, 0.02, "share of each frame's pixels that are outliers no mask marks", SHARE)
    noise: tuple = span(10.0, 14.0, "sensor noise in dark flat areas (DN)")
    noise_rise: float = value(0.004, "noise variance added per DN of brightness (DN)")
    noise_correlation: tuple = span(0.25, 0.33, "correlation of the noise of neighbours along x (none along y)", SHARE)
    quantum: int = value(QUANTUM, "every LR and HR value a multiple of this (DN; 1: none)", (1, math.inf))
    frames: tuple = span(9, 30, "frames per scene (whole numbers)", (1, math.inf))
    clear_frames: float = value(0.1, "share of frames without a cloud", SHARE)
    cloud_skew: float = value(
        3.0, "a cloudy frame's cover is 0.4 u^skew, u uniform in 0..1: the larger, the more frames with little cloud"
    )
    cloud_scale: float = value(6.0, "size of the cloud blobs (LR px): the largest are a few % of a frame")
    hr_cover: tuple = span(0.0, 0.07, "share of the HR's status map that is not clear", SHARE)
    bright_clouds: float = value(0.1, "share of cloudy frames whose clouds are bright, above 16,383 DN", SHARE)
    bright_cloud_top: tuple = span(17000.0, 26000.0, "a bright cloud's top (DN; its texture adds up to 15%)")
    unmarked_bright: float = value(
        0.05, "share of the pixels above 16,383 DN that the quality map leaves marked clear", SHARE
    )
    no_data_scenes: float = value(
        0.4, "share of scenes with frames that hold 65,520 (no data) beyond a swath edge, masked", SHARE
    )
    no_data_frames: tuple = span(
        0.05, 0.2, "share of such a scene's frames with no data (at least one, still among the clearest)", SHARE
    )
    no_data_extent: tuple = span(0.005, 0.25, "share of such a frame beyond the swath edge", SHARE)
    uniform_shifts: bool = value(False, "shifts drawn uniformly over +-shift_scatter*sqrt(3), not normally")

    @classmethod
    def preset(cls, name: str) -> Physics:
        if name == "simple":
            return cls(
                hr_blur=(0.0, 0.0),
                shift_offset=0.0,
                shift_scatter=(2.6, 2.6),
                jump_chance=0.0,
                blur_x=(0.9, 1.4),
                blur_y=(0.9, 1.4),
                blur_angle=0.0,
                blur_jitter=0.0,
                warp=(0.0, 0.0),
                gain_spread=(0.023, 0.023),
                brightness_change=(0.004, 0.004),
                seasonal=(0.0, 0.0),
                local_change=(0.0, 0.0),
                outliers=(0.0, 0.0),
                noise=(15.0, 15.0),
                noise_rise=0.5,
                noise_correlation=(0.0, 0.0),
                quantum=1,
                clear_frames=0.45,
                cloud_skew=1.5,
                cloud_scale=40.0,
                hr_cover=(0.0, 0.1),
                uniform_shifts=True,
            )
        return cls()

    def draw(self, rng: np.random.Generator, name: str) -> float:
        low, high = getattr(self, name)
        return float(rng.uniform(low, high)) if high > low else float(low)


PRESETS = ("proba-v", "simple")


@dataclass
class FrameGeometry:
    """One frame's view of the ground: shift (HR px) and PSF covariance (HR px^2)."""

    dy: float
    dx: float
    sigma_x: float
    sigma_y: float
    angle: float  # radians, of the PSF's first axis (sigma_x) from x

    def covariance(self) -> tuple[float, float, float]:
        """(var_y, var_x, cov_xy) of the PSF along the image axes."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        a, b = self.sigma_x**2, self.sigma_y**2
        return a * s * s + b * c * c, a * c * c + b * s * s, (a - b) * c * s


def transfer(shape: tuple[int, int], dy: float, dx: float, var_y: float, var_x: float, cov: float) -> np.ndarray:
    """The Fourier transfer of a shift by (dy, dx) and a Gaussian PSF of that covariance,
    for np.fft.rfft2 of an image of `shape`."""
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    quadratic = var_y * fy**2 + var_x * fx**2 + 2 * cov * fx * fy
    return np.exp(-2 * math.pi**2 * quadratic - 2j * math.pi * (fy * dy + fx * dx))


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """An image seen through an isotropic Gaussian PSF of that width (px)."""
    if sigma <= 0:
        return image
    return np.fft.irfft2(np.fft.rfft2(image) * transfer(image.shape, 0.0, 0.0, sigma**2, sigma**2, 0.0), s=image.shape)


def box3(image: np.ndarray) -> np.ndarray:
    """The 3x3 mean that makes one LR pixel of nine HR pixels."""
    h, w = image.shape
    return image.reshape(h // 3, 3, w // 3, 3).mean(axis=(1, 3))


def view(ground: np.ndarray, geometry: FrameGeometry, pad: int, displacement=None) -> np.ndarray:
    """The noiseless LR view (before gain and offset) of a padded ground image; with a
    `displacement` (dy, dx fields of the ground's shape, HR px) each place shifted that much
    more, to first order: what it adds to the seen ground is its gradient times the field."""
    spectrum = np.fft.rfft2(ground) * transfer(ground.shape, geometry.dy, geometry.dx, *geometry.covariance())
    seen = np.fft.irfft2(spectrum, s=ground.shape)
    if displacement is not None:
        fy, fx = np.fft.fftfreq(ground.shape[0])[:, None], np.fft.rfftfreq(ground.shape[1])[None, :]
        for field, f in zip(displacement, (fy, fx)):
            seen -= field * np.fft.irfft2(spectrum * (2j * math.pi * f), s=ground.shape)
    return box3(seen[pad : ground.shape[0] - pad, pad : ground.shape[1] - pad])


def displacement_field(rng: np.random.Generator, size: int, pad: int, rms: float, scale: float) -> tuple:
    """(dy, dx): two independent smooth fields of that rms (HR px) over the viewed part (within
    `pad`), white noise seen through a Gaussian of width `scale`. Each has no mean there: a
    frame's shift as a whole stays the one drawn for it."""
    inner = (slice(pad, size - pad),) * 2
    fields = [blurred(rng.standard_normal((size, size)), scale) for _ in range(2)]
    return tuple(rms * (f - f[inner].mean()) / f[inner].std() for f in fields)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int], correlation: float) -> np.ndarray:
    """Unit-variance noise whose neighbours along x correlate by `correlation` (a [a, 1, a]
    filter along x: 2a / (1 + 2a^2) = correlation), independent along y."""
    white = rng.standard_normal((shape[0], shape[1] + 2))
    if correlation <= 0:
        return white[:, 1:-1]
    a = (1 - math.sqrt(1 - 2 * correlation**2)) / (2 * correlation) if correlation < 0.7 else 1.0
    return (a * white[:, :-2] + white[:, 1:-1] + a * white[:, 2:]) / math.sqrt(1 + 2 * a * a)


def quantise(image: np.ndarray, quantum: int, top: int) -> np.ndarray:
    """DN as the sensor stores them: whole multiples of `quantum` in [0, top]."""
    return np.clip(np.rint(image / quantum) * quantum, 0, top - top % quantum).astype(np.uint16)
