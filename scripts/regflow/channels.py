"""Registration channels: which channel of an image a sample sheet's value names.

Kept apart from :mod:`regflow.preprocess` (the image processing) so that validating a sheet
needs no imaging library.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MODALITIES = ("brightfield", "fluorescence")
BRIGHTFIELD_CHANNELS = ("luminance", "hematoxylin", "eosin", "dab")


class ChannelError(ValueError):
    """A registration channel specification does not fit the image."""


def resolve_channel(
    spec: str | int | None,
    modality: str,
    channel_names: Sequence[str],
    rgb: bool,
    partner_modality: str | None = None,
) -> str | int:
    """Turn a sample-sheet channel value into a keyword or a 0-based channel index.

    Parameters
    ----------
    spec : str, int or None
        Empty/None means the default: for RGB brightfield ``hematoxylin`` when the other image
        of the pair is fluorescence (the nuclear stain that matches a DAPI/Hoechst channel,
        which is channel 0 of most fluorescence panels) and ``luminance`` otherwise; else
        channel 0.
    modality : {'brightfield', 'fluorescence'}
    channel_names : sequence of str
        Names of the image's channels (OME names when the file has them).
    rgb : bool
        The image is an RGB(A) colour image.
    partner_modality : str, optional
        Modality of the other image of the pair (for the default).

    Raises
    ------
    ChannelError
        With the available names, if the value matches nothing.
    """
    if modality not in MODALITIES:
        raise ChannelError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    if spec is None or (isinstance(spec, float) and np.isnan(spec)) or str(spec).strip() == "":
        if modality == "brightfield" and rgb:
            return "hematoxylin" if partner_modality == "fluorescence" else "luminance"
        return 0
    text = str(spec).strip()
    if text.lower() in BRIGHTFIELD_CHANNELS:
        if modality != "brightfield" or not rgb:
            raise ChannelError(
                f"channel {text!r} needs an RGB brightfield image; this image is "
                f"{modality} with channels {list(channel_names)}"
            )
        return text.lower()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(channel_names):
            raise ChannelError(
                f"channel index {index} is out of range: the image has {len(channel_names)} "
                f"channels {list(channel_names)} (indices are 0-based)"
            )
        return index
    if text in channel_names:
        return list(channel_names).index(text)
    lowered = [name.lower() for name in channel_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    keywords = ", ".join(BRIGHTFIELD_CHANNELS) if modality == "brightfield" and rgb else ""
    raise ChannelError(
        f"channel {text!r} not found; available channel names: {list(channel_names)}"
        + (f"; or one of the keywords {keywords}" if keywords else "")
        + "; or a 0-based index"
    )
