"""The example photo the shipped workflows load, put into ComfyUI's input folder so templates run on open."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import folder_paths

EXAMPLES = Path(__file__).resolve().parents[1] / "workflows" / "input"
EXAMPLE_PHOTO = "spdinv_example_cat.png"
"""File name the workflows' Photo nodes use (see ``workflows/input/README.md`` for its source and licence)."""


def install_example_inputs(input_dir: str | Path | None = None) -> Path | None:
    """Copy the example photo into ``input_dir`` (ComfyUI's input folder by default) unless a file of that
    name is there; returns the copy's path, or ``None`` when nothing was copied. A read-only or missing
    input folder is logged, never raised: the pack's nodes do not need the photo."""
    target = Path(input_dir if input_dir is not None else folder_paths.get_input_directory()) / EXAMPLE_PHOTO
    if target.exists():
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(EXAMPLES / EXAMPLE_PHOTO, target)
    except OSError as e:
        logging.warning("SPDInv: could not copy the example photo into %s (%s); the example workflows' Photo "
                        "node will ask for an image", target.parent, e)
        return None
    return target
