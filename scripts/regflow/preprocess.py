"""Make two modalities comparable: one registration channel, normalised, at working resolution.

Every modality is mapped to the same convention, *signal bright on a dark background*:

- brightfield (absorption): optical density ``-log10(I / I_white)`` with the white point
  estimated from the slide's own background, optionally separated into hematoxylin / eosin /
  DAB by colour deconvolution (Ruifrok & Johnston), so that hematoxylin matches a DAPI channel;
- fluorescence (emission): the selected channel minus its background, scaled by a robust
  high percentile, optionally log-compressed.

Coordinates: every preprocessed image carries ``full_to_working``, the 3×3 homogeneous matrix
that maps full-resolution pixel coordinates ``(x, y)`` (x = column) to working-resolution ones,
with pixel centres at integer positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters

from .channels import MODALITIES, ChannelError, resolve_channel
from .imageops import resize_linear
from .io import ImageInfo, choose_level, read_image


@dataclass
class Preprocessed:
    """One image ready for registration.

    Attributes
    ----------
    image : ndarray, shape (h, w), float32
        Registration channel at working resolution, in [0, 1], signal bright.
    tissue_mask : ndarray, shape (h, w), bool
    full_to_working : ndarray, shape (3, 3)
        Maps full-resolution ``(x, y, 1)`` to working-resolution ``(x, y, 1)``.
    full_shape : tuple of int
        ``(Y, X)`` of the full-resolution image.
    blank : bool
        The registration channel was constant (kept, when allowed, as a blank image without
        tissue).
    """

    image: np.ndarray
    tissue_mask: np.ndarray
    full_to_working: np.ndarray
    full_shape: tuple[int, int]
    blank: bool = False


def _as_float(image: np.ndarray) -> np.ndarray:
    """Pixels as float32, NaN/Inf replaced by 0 (never let them reach an optimiser)."""
    out = image.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density of an absorption image, per channel.

    The white point of each channel is the slide's own background (99th percentile), so
    that scans with different light levels or bit depths give comparable densities.

    Parameters
    ----------
    rgb : ndarray, shape (C, Y, X)

    Returns
    -------
    ndarray, shape (C, Y, X), float32, ≥ 0
    """
    img = _as_float(rgb)
    out = np.empty_like(img)
    for index, channel in enumerate(img):
        white = float(np.percentile(channel, 99.0))
        if white <= 0:
            white = float(channel.max()) or 1.0
        # One grey level of headroom keeps log finite on black pixels.
        eps = white / 255.0
        out[index] = np.clip(-np.log10((channel + eps) / (white + eps)), 0.0, None)
    return out


def _stain_density(rgb: np.ndarray, stain: str) -> np.ndarray:
    """Density of one stain by colour deconvolution (H, E or DAB) of a ``(3, Y, X)`` image."""
    img = _as_float(rgb[:3])
    white = np.array([max(float(np.percentile(c, 99.0)), 1e-6) for c in img], np.float32)
    normalised = np.clip(np.moveaxis(img / white[:, None, None], 0, -1), 1e-6, 1.0)
    hed = color.rgb2hed(normalised)
    index = {"hematoxylin": 0, "eosin": 1, "dab": 2}[stain]
    return np.clip(hed[..., index], 0.0, None).astype(np.float32)


def registration_channel(
    image: np.ndarray,
    modality: str,
    channel: str | int,
    rgb: bool,
    fluorescence_log: bool = False,
) -> np.ndarray:
    """Extract and normalise the channel used for registration.

    Parameters
    ----------
    image : ndarray, shape (C, Y, X)
        Any dtype (uint8/uint16/float).
    modality : {'brightfield', 'fluorescence'}
    channel : str or int
        Output of :func:`resolve_channel`.
    rgb : bool
        Whether ``image`` is an RGB(A) colour image.
    fluorescence_log : bool
        Log-compress fluorescence intensities (for channels with a very wide dynamic range).

    Returns
    -------
    ndarray, shape (Y, X), float32 in [0, 1]
        Signal bright on dark background.
    """
    if modality == "brightfield":
        if rgb:
            colour = image[:3]  # an alpha channel carries no absorption
            if channel == "luminance":
                weights = np.array([0.2125, 0.7154, 0.0721], np.float32)
                luminance = np.tensordot(weights, _as_float(colour), axes=1)
                signal = optical_density(luminance[np.newaxis])[0]
            elif isinstance(channel, str):
                signal = _stain_density(colour, channel)
            else:
                signal = optical_density(image[channel : channel + 1])[0]
        else:
            signal = optical_density(image[int(channel) : int(channel) + 1])[0]
    elif modality == "fluorescence":
        if isinstance(channel, str):
            raise ChannelError(f"channel keyword {channel!r} is for brightfield images")
        signal = _as_float(image[channel])
        signal = signal - float(np.percentile(signal, 1.0))
        signal = np.clip(signal, 0.0, None)
        if fluorescence_log:
            signal = np.log1p(signal / (float(np.percentile(signal, 50.0)) + 1e-6))
    else:
        raise ChannelError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    return normalise_percentile(signal)


def normalise_percentile(signal: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale to [0, 1] between two percentiles, clipping outliers (robust to hot pixels)."""
    lo, hi = np.percentile(signal, [low, high])
    if hi <= lo:
        hi = float(signal.max())
        lo = float(signal.min())
    if hi <= lo:
        return np.zeros(signal.shape, np.float32)
    return np.clip((signal - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def working_scale(
    full_shape: tuple[int, int],
    max_size: int,
    pixel_size_um: float | None = None,
    target_pixel_size_um: float | None = None,
) -> float:
    """Factor from full to working resolution (≤ 1).

    The working pixel size is ``target_pixel_size_um`` when both it and the image's pixel
    size are known, else the longest side is brought down to ``max_size``.
    """
    if pixel_size_um and target_pixel_size_um:
        return min(1.0, pixel_size_um / target_pixel_size_um)
    return min(1.0, max_size / max(full_shape))


def scale_matrix(full_shape: tuple[int, int], working_shape: tuple[int, int]) -> np.ndarray:
    """``full_to_working`` for a resize of ``full_shape`` to ``working_shape`` (pixel centres)."""
    sy = working_shape[0] / full_shape[0]
    sx = working_shape[1] / full_shape[1]
    # Pixel-area convention: full pixel centre x maps to (x + 0.5) * s - 0.5.
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def tissue_mask(image: np.ndarray, min_fraction: float = 0.01, mask_size: int = 256) -> np.ndarray:
    """Foreground (tissue) mask of a normalised, signal-bright image.

    Otsu threshold on a smoothed copy (smoothing ~1 % of the image size, so that sparse
    nuclei merge into tissue regions), cleaned by morphology; falls back to the whole image
    when the result is implausibly small or large. The mask is a coarse object, so it is
    computed at most ``mask_size`` px on the longest side and resized back.

    Parameters
    ----------
    image : ndarray, shape (h, w), float in [0, 1]
    min_fraction : float
        Smallest plausible tissue fraction.

    Returns
    -------
    ndarray, shape (h, w), bool
    """
    factor = min(1.0, mask_size / max(image.shape))
    small = downsample(image, tuple(max(8, int(round(n * factor))) for n in image.shape))
    sigma = max(1.0, 0.01 * max(small.shape))
    smooth = filters.gaussian(small, sigma=sigma)
    if float(smooth.max() - smooth.min()) < 1e-6:
        return np.ones(image.shape, bool)
    mask = smooth > filters.threshold_otsu(smooth)
    radius = max(1, int(round(sigma)))
    mask = ndi.binary_closing(mask, _disk(radius), border_value=0)
    mask = ndi.binary_fill_holes(mask)
    mask = _without_small_objects(mask, max_size=int(0.001 * mask.size))
    mask = ndi.binary_dilation(mask, _disk(radius))
    fraction = mask.mean()
    if fraction < min_fraction or fraction > 0.995:
        return np.ones(image.shape, bool)
    if mask.shape != image.shape:
        mask = resize_linear(mask, image.shape) > 0.5
    return mask


def _disk(radius: int) -> np.ndarray:
    """Disk footprint: the offsets within ``radius`` (scikit-image's ``morphology.disk``)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2


def _without_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its 4-connected components of at most ``max_size`` pixels
    (scikit-image's ``morphology.remove_small_objects``, whose module imports
    ``scipy.spatial``: 0.2 s of every preprocess job)."""
    labels, _ = ndi.label(mask)
    small = np.bincount(labels.ravel()) <= max_size
    small[0] = False
    return mask & ~small[labels]


def downsample(image: np.ndarray, working_shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize of a 2-D float image."""
    if tuple(working_shape) == image.shape:
        return image.astype(np.float32, copy=False)
    return resize_linear(image, working_shape, anti_aliasing=True)


def preprocess(
    image: np.ndarray,
    modality: str,
    channel: str | int,
    rgb: bool,
    scale: float,
    full_shape: tuple[int, int] | None = None,
    fluorescence_log: bool = False,
    allow_blank: bool = False,
) -> Preprocessed:
    """Registration channel, tissue mask and coordinate frame at working resolution.

    Parameters
    ----------
    image : ndarray, shape (C, Y', X')
        The image, possibly already a pyramid level coarser than full resolution.
    modality, channel, rgb, fluorescence_log
        See :func:`registration_channel`.
    scale : float
        Working size / full-resolution size.
    full_shape : tuple of int, optional
        ``(Y, X)`` at full resolution; defaults to ``image.shape[1:]``.
    allow_blank : bool
        A blank (constant) channel is a :class:`BlankImageError` unless this is set; then it
        is kept as a blank working image without tissue (a serial section that failed: the
        stack leaves it out rather than fail the whole case).
    """
    full_shape = tuple(full_shape or image.shape[1:])
    working_shape = (
        max(8, int(round(full_shape[0] * scale))),
        max(8, int(round(full_shape[1] * scale))),
    )
    signal = registration_channel(image, modality, channel, rgb, fluorescence_log)
    if float(signal.max()) <= float(signal.min()):
        if allow_blank:
            return Preprocessed(
                image=np.zeros(working_shape, np.float32),
                tissue_mask=np.zeros(working_shape, bool),
                full_to_working=scale_matrix(full_shape, working_shape),
                full_shape=full_shape,
                blank=True,
            )
        raise BlankImageError(
            f"the registration channel {channel!r} is blank (constant); check the scan or "
            "choose another channel"
        )
    signal = normalise_percentile(downsample(signal, working_shape), 0.0, 99.9)
    return Preprocessed(
        image=signal,
        tissue_mask=tissue_mask(signal),
        full_to_working=scale_matrix(full_shape, working_shape),
        full_shape=full_shape,
    )


class BlankImageError(ValueError):
    """The registration channel carries no signal (blank or constant image)."""


def pair_scales(
    fixed_info: ImageInfo,
    moving_info: ImageInfo,
    max_size: int,
    pixel_size_um: float | None = None,
) -> tuple[float, float]:
    """Working scales of the fixed and moving images, giving both the same pixel size.

    When both files state a physical pixel size, the moving scale compensates for the
    difference (e.g. a 0.25 µm brightfield scan against a 0.65 µm fluorescence one);
    otherwise both images are assumed to share one pixel size and get the same scale.
    """
    fixed_px, moving_px = fixed_info.pixel_size_um, moving_info.pixel_size_um
    both_known = bool(fixed_px and moving_px)
    target = pixel_size_um if both_known else None
    fixed_scale = working_scale(fixed_info.shape, max_size, fixed_px, target)
    if both_known:
        # Same physical working pixel size: moving_px / moving_scale == fixed_px / fixed_scale.
        moving_scale = fixed_scale * moving_px / fixed_px
    else:
        moving_scale = fixed_scale
    # Never upsample the moving image more than needed: cap both at full resolution together.
    if moving_scale > 1.0:
        fixed_scale, moving_scale = fixed_scale / moving_scale, 1.0
    return fixed_scale, moving_scale


def preprocess_file(
    info: ImageInfo,
    modality: str,
    channel_spec: str | None,
    scale: float,
    fluorescence_log: bool = False,
    partner_modality: str | None = None,
    allow_blank: bool = False,
) -> tuple[Preprocessed, str | int, int]:
    """Read the pyramid level nearest the working resolution and preprocess it.

    Returns
    -------
    preprocessed : Preprocessed
    channel : str or int
        The resolved registration channel.
    level : int
        The pyramid level that was read.
    """
    channel = resolve_channel(
        channel_spec, modality, info.channel_names, info.rgb, partner_modality
    )
    level = choose_level(info, 1.0 / scale)
    image = read_image(info.path, level)
    result = preprocess(image, modality, channel, info.rgb, scale, info.shape, fluorescence_log,
                        allow_blank)  # fmt: skip
    return result, channel, level
