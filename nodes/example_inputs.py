"""The example photo, reference image and clip the shipped workflows load, put into ComfyUI's input folder so
templates run on open."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import folder_paths

EXAMPLES = Path(__file__).resolve().parents[1] / "workflows" / "input"
EXAMPLE_PHOTO = "spdinv_example_cat.png"
"""File name the workflows' Photo nodes use (see ``workflows/input/README.md`` for its source and licence)."""
EXAMPLE_REFERENCE = "spdinv_example_cup.png"
"""File name the ELITE workflow's Reference image node uses: an object to put into the photo."""
EXAMPLE_CLIP = "spdinv_example_clip.mp4"
"""File name the video workflow's Clip node uses (made from the photo by ``tools/example_clip.py``)."""
EXAMPLE_INPUTS = (EXAMPLE_PHOTO, EXAMPLE_REFERENCE, EXAMPLE_CLIP)


def install_example_inputs(input_dir: str | Path | None = None) -> list[Path]:
    """Copy each example (photo, reference image, clip) into ``input_dir`` (ComfyUI's input folder by default)
    unless a file of that name is there; returns the copies' paths. A read-only or missing input folder is logged,
    never raised: the pack's nodes do not need the examples."""
    folder = Path(input_dir if input_dir is not None else folder_paths.get_input_directory())
    copied = []
    for name in EXAMPLE_INPUTS:
        target = folder / name
        if target.exists():
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(EXAMPLES / name, target)
        except OSError as e:
            logging.warning("SPDInv: could not copy the example %s into %s (%s); the example workflows' node that "
                            "loads it will ask for a file", name, target.parent, e)
            continue
        copied.append(target)
    return copied
