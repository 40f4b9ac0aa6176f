"""``render_mode="rgb_array"`` frames: the last query's images in a grid under a caption.

A frame is what a person watching an episode wants to see: which concept was queried, the query
reward it earned, its ground-truth relevance ``g`` and how much of the budget is spent, above the
images the query returned (up to :data:`MAX_IMAGES`, each scaled up to at least :data:`MIN_CELL`
pixels). Its size depends only on the world's image size, so the frames of an episode stack.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CAPTION_HEIGHT", "COLUMNS", "MAX_IMAGES", "MIN_CELL", "query_frame"]

MAX_IMAGES = 16  # images shown per frame
COLUMNS = 8
MIN_CELL = 64  # pixels per image cell at least (nearest-neighbour upscaling)
CAPTION_HEIGHT = 28  # two lines of the default bitmap font


def query_frame(images: np.ndarray | None, caption: list[str], image_size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``caption`` (up to two lines) above a ``2 x COLUMNS`` grid of ``images``
    (uint8 ``(n, S, S, 3)``, the first :data:`MAX_IMAGES` shown; ``None`` or empty: a blank grid)."""
    from PIL import Image, ImageDraw

    scale = max(1, -(-MIN_CELL // int(image_size)))
    cell = int(image_size) * scale
    rows = MAX_IMAGES // COLUMNS
    frame = np.full((CAPTION_HEIGHT + rows * cell, COLUMNS * cell, 3), 255, dtype=np.uint8)
    if images is not None and len(images):
        shown = np.asarray(images[:MAX_IMAGES], dtype=np.uint8)
        big = shown.repeat(scale, axis=1).repeat(scale, axis=2)
        for i, img in enumerate(big):
            r, c = divmod(i, COLUMNS)
            frame[CAPTION_HEIGHT + r * cell: CAPTION_HEIGHT + (r + 1) * cell, c * cell: (c + 1) * cell] = img
    pil = Image.fromarray(frame)
    draw = ImageDraw.Draw(pil)
    for j, line in enumerate(caption[:2]):
        draw.text((4, 2 + 13 * j), line, fill=(0, 0, 0))
    return np.asarray(pil, dtype=np.uint8).copy()
