import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="session")
def ihc_rgb():
    """scikit-image's real IHC slide as (3, Y, X) uint8."""
    from skimage import data

    return np.moveaxis(data.immunohistochemistry(), -1, 0)


@pytest.fixture(scope="session")
def ihc_small(ihc_rgb):
    """The IHC slide at 256 px (keeps unit tests fast)."""
    from skimage import transform

    resized = transform.resize(np.moveaxis(ihc_rgb, 0, -1), (256, 256), anti_aliasing=True)
    return np.moveaxis(np.round(resized * 255), -1, 0).astype(np.uint8)
