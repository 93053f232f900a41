"""PIE-Bench data: the items of ``mapping_file.json``, their masks and prompts, as PnPInversion reads them.

A PIE-Bench folder holds ``mapping_file.json`` and ``annotation_images/``. Each entry names an image under
``annotation_images/``, the source prompt (``original_prompt``) and the edit (``editing_prompt``), both with
the edited words in ``[brackets]`` (stripped before use), ``blended_word`` ("cat dog": the source word and
the target word for local blend, or empty) and ``mask``, a run-length encoding of the edited region over a
flattened 512×512 image. The decoding follows PnPInversion's ``evaluation/evaluate.py``, quirk included: the
outermost rows and columns are always marked as edited ("to avoid annotation errors in boundary"), so they
never count as background.

Standard library and numpy only (numpy is imported by :func:`decode_mask`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MASK_SHAPE = (512, 512)
"""The grid PIE-Bench's run-length masks index (row-major)."""


class PieDataError(ValueError):
    """The PIE-Bench folder or one of its entries cannot be used."""


@dataclass(frozen=True)
class PieItem:
    """One PIE-Bench entry, prompts already stripped of their brackets."""

    image_id: str
    image_path: Path
    """The source photo (absolute)."""
    relative_path: str
    """The photo's path under ``annotation_images/`` (what ComfyUI's LoadImage gets when that is its input dir)."""
    source_prompt: str
    target_prompt: str
    blended_words: tuple[str, str] | None
    """(source word, target word) for local blend, or None when the entry has none."""
    mask_rle: tuple[int, ...]
    editing_type: str
    blend_error: str | None = None
    """Why ``blended_word`` cannot be used (it is not two words), or None; a run skips such an item where the
    field is needed (the P2P rows) and says so, as the reference's runner would fail on it."""

    def mask(self) -> Any:
        """The edited region as a float 0/1 array of :data:`MASK_SHAPE` (border forced to 1)."""
        return decode_mask(self.mask_rle)


def clean_prompt(text: str) -> str:
    """A PIE prompt without its ``[`` ``]`` markers, as the reference strips them."""
    return text.replace("[", "").replace("]", "")


def decode_mask(rle: Sequence[int], shape: tuple[int, int] = MASK_SHAPE) -> Any:
    """Decode PIE-Bench's run-length mask: ``(start, length)`` pairs over the row-major flattened grid.

    Runs are clipped at the end of the grid, as the reference clips them. The first and last rows and
    columns are then set to 1, as the reference does, so the border is always "edited".
    """
    import numpy as np

    if len(rle) % 2:
        raise PieDataError(f"mask: run-length code has an odd number of values ({len(rle)}); it must be "
                           "(start, length) pairs")
    length = shape[0] * shape[1]
    flat = np.zeros(length, dtype=np.float64)
    for start, run in zip(rle[0::2], rle[1::2], strict=True):
        start, run = int(start), int(run)
        if start < 0 or run < 0:
            raise PieDataError(f"mask: negative start or length ({start}, {run})")
        flat[start:start + max(0, min(run, length - start))] = 1.0
    mask = flat.reshape(shape)
    mask[0, :] = 1.0
    mask[-1, :] = 1.0
    mask[:, 0] = 1.0
    mask[:, -1] = 1.0
    return mask


def _blended_words(raw: Any, image_id: str) -> tuple[tuple[str, str] | None, str | None]:
    """(source word, target word) or None, and the reason the field is unusable (not two words) or None."""
    words = str(raw or "").split()
    if not words:
        return None, None
    if len(words) != 2:
        return None, f"{image_id}: blended_word {raw!r} is not two words (source word, target word)"
    return (words[0], words[1]), None


def load_items(pie_dir: str | Path, ids: Iterable[str] | None = None,
               categories: Iterable[str] | None = None) -> list[PieItem]:
    """The entries of ``<pie_dir>/mapping_file.json``, in the file's order.

    ``ids`` keeps only those image ids (an unknown id is an error); ``categories`` keeps only those
    ``editing_type_id`` values ("0" … "9").
    """
    root = Path(pie_dir).expanduser()
    mapping_path = root / "mapping_file.json"
    images = root / "annotation_images"
    if not mapping_path.is_file():
        raise PieDataError(f"--pie-dir {root}: no mapping_file.json there (expected PIE-Bench's folder with "
                           "mapping_file.json and annotation_images/)")
    try:
        mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PieDataError(f"{mapping_path} is not valid JSON: {e}") from e
    if not isinstance(mapping, dict):
        raise PieDataError(f"{mapping_path}: expected an object of image id -> entry")
    wanted = list(ids) if ids is not None else None
    if wanted is not None:
        unknown = [i for i in wanted if i not in mapping]
        if unknown:
            raise PieDataError(f"--ids: not in {mapping_path}: {', '.join(unknown[:5])}")
    kinds = {str(c) for c in categories} if categories is not None else None
    items = []
    for image_id, entry in mapping.items():
        if wanted is not None and image_id not in wanted:
            continue
        try:
            kind = str(entry["editing_type_id"])
            if kinds is not None and kind not in kinds:
                continue
            rel = str(entry["image_path"])
            blend, blend_error = _blended_words(entry.get("blended_word"), image_id)
            items.append(PieItem(
                image_id=image_id,
                image_path=images / rel,
                relative_path=rel,
                source_prompt=clean_prompt(entry["original_prompt"]),
                target_prompt=clean_prompt(entry["editing_prompt"]),
                blended_words=blend,
                mask_rle=tuple(int(v) for v in entry["mask"]),
                editing_type=kind,
                blend_error=blend_error,
            ))
        except KeyError as e:
            raise PieDataError(f"{mapping_path}: entry {image_id} has no {e.args[0]!r}") from e
    return items
