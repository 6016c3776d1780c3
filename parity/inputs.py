"""Inputs fed identically to both frameworks."""
from __future__ import annotations

import numpy as np


def canonical_inputs(resolution: int, context_length: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """The reference table's pair: image = ones/2 of shape (1, 3, R, R) float32, text = ones (1, 77) int64."""
    image = np.full((1, 3, resolution, resolution), 0.5, dtype=np.float32)
    text = np.ones((1, context_length), dtype=np.int64)
    return image, text
