"""Smaller copies of stored pictures, for pages that show them small: a photo's stored copy can be megabytes."""
from __future__ import annotations

import io
from typing import IO

from PIL import Image

# Each side a page asks for: twice the largest the page shows, for screens of two pixels to the point.
SIDES = (128, 512)


def picture_scaled_png(file: IO[bytes], *, side: int) -> bytes | None:
    """The stored picture in ``file`` as a PNG whose longest side is at most ``side``; None when it is that small
    already, and the stored file itself is the one to send."""
    with Image.open(file, formats=["PNG"]) as picture:
        if max(picture.size) <= side:
            return None
        # Pillow's reduce-then-resample: a whole-number box reduction first, the cheap part for a 2048-pixel photo.
        picture.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return out.getvalue()
