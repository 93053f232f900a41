"""A synthetic PIE-Bench folder for tests and for the harness's demonstration table.

Three items in PIE-Bench's format (``mapping_file.json`` + ``annotation_images/<type folder>/<id>.jpg``, 512×512
photos, run-length masks over the flattened 512×512 grid, edited words in brackets): a word swap with a
blended word pair, a refine (words added) without one, and an item whose mask covers the whole image (no
background: the NaN case). The photos are the pack's example photo, flipped or tinted per item.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "workflows" / "input" / "spdinv_example_cat.png"


def encode_mask(mask: np.ndarray) -> list[int]:
    """PIE-Bench's run-length code of a 0/1 mask: (start, length) pairs over the row-major flattened grid."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts, strict=True) for v in pair]


def box_mask(top: int, left: int, bottom: int, right: int, size: int = 512) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


ENTRIES = {
    "000000000000": dict(folder="1_change_object_80", kind="1", source="a photo of a [cat] next to a mirror",
                         target="a photo of a [dog] next to a mirror", blended="cat dog",
                         mask=box_mask(96, 128, 448, 400)),
    "000000000001": dict(folder="2_add_object_80", kind="2", source="a cat sitting",
                         target="a cat sitting on a [red rug]", blended="",
                         mask=box_mask(380, 0, 512, 512)),
    "000000000002": dict(folder="9_change_style_80", kind="9", source="a photo of a cat",
                         target="a [watercolor] painting of a cat", blended="",
                         mask=np.ones((512, 512), dtype=np.uint8)),
}


def make_pie_folder(root: Path) -> Path:
    """Write the synthetic set under ``root``; return ``root``."""
    base = Image.open(EXAMPLE).convert("RGB").resize((512, 512), Image.LANCZOS)
    mapping = {}
    for n, (image_id, e) in enumerate(ENTRIES.items()):
        photo = base.transpose(Image.FLIP_LEFT_RIGHT) if n % 2 else base
        if n == 2:
            photo = Image.fromarray((np.asarray(photo) * np.array([1.0, 0.85, 0.7])).astype(np.uint8))
        rel = f"{e['folder']}/{image_id}.jpg"
        (root / "annotation_images" / e["folder"]).mkdir(parents=True, exist_ok=True)
        photo.save(root / "annotation_images" / rel, quality=95)
        mapping[image_id] = {
            "image_path": rel, "original_prompt": e["source"], "editing_prompt": e["target"],
            "editing_instruction": "", "editing_type_id": e["kind"], "blended_word": e["blended"],
            "mask": encode_mask(e["mask"]),
        }
    (root / "mapping_file.json").write_text(json.dumps(mapping, indent=1), encoding="utf-8")
    return root
