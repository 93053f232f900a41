"""Make ``workflows/input/spdinv_example_clip.mp4``, the example clip of the video workflow, from the example photo.

17 frames (Wan takes 1 + 4k) at 16 fps, 416×240: a slow pan with a slight zoom across the photo, so the clip moves
as a real one does. Run from the repository root with a Python that has PyAV and Pillow (ComfyUI's environment):
``python -m tools.example_clip``.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "workflows" / "input" / "spdinv_example_cat.png"
CLIP = ROOT / "workflows" / "input" / "spdinv_example_clip.mp4"
FRAMES, FPS, SIZE = 17, 16, (416, 240)


def frames(photo: Image.Image, count: int = FRAMES, size: tuple[int, int] = SIZE) -> list[Image.Image]:
    """``count`` crops of ``photo`` at the clip's aspect, panning left to right and zooming in by 10 %."""
    w, h = photo.size
    out = []
    for i in range(count):
        t = i / max(1, count - 1)
        crop_w = 0.85 * w * (1.0 - 0.1 * t)
        crop_h = crop_w * size[1] / size[0]
        left = (w - crop_w) * t
        top = (h - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        out.append(photo.resize(size, Image.Resampling.LANCZOS, box=box))
    return out


def write(images: list[Image.Image], path: Path, fps: int = FPS) -> None:
    """``images`` as an H.264 MP4 (yuv420p) at ``fps``."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")))
        container.mux(stream.encode())


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with Image.open(PHOTO) as photo:
        write(frames(photo.convert("RGB")), CLIP)
    print(f"wrote {CLIP} ({CLIP.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
