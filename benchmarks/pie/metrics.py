"""PIE-Bench's seven metrics, computed as PnPInversion's ``evaluation/`` computes them, and corrected variants.

Reference behaviour kept (``../shared/notes/pie-bench.md``): an edit that is not square is cropped to its
bottom-right 512×512 panel; background metrics multiply **both** images by ``1 − mask`` and take the metric
over the whole tensor (zeroed pixels count as perfect matches), and are NaN when the background is empty;
PSNR and SSIM with data range 1, MSE on [0, 1] images, LPIPS (SqueezeNet) on [−1, 1] images, each through
the same torchmetrics calls; structure distance is the MSE between the cosine self-similarity matrices of
DINO ViT-B/8's last-block keys, the images left in 0–255 before ``Resize(224, max_size=480)`` and ImageNet
normalisation; CLIP score is ``max(100·cos, 0)`` of CLIP ViT-L/14's image and text embeddings (CLIPScore's
processing: shortest side to 224 bicubic, centre crop, OpenAI normalisation; prompts cut at 77 tokens), on the
edit ("whole") and on ``uint8(edit · mask)`` ("edited").

Corrected variants (``*_corrected``): PSNR, MSE, SSIM and LPIPS over the background pixels only, from the
unmasked images (MSE: mean squared error over background pixels; PSNR from that MSE; SSIM: the SSIM map
averaged over background pixels; LPIPS: the spatial LPIPS map, each layer upsampled to the image, averaged
over background pixels; windowed measures still see the edit from background pixels next to it).
NaN policy, both variants: an image with no background pixels gets NaN; summaries
average the finite values and report how many images each average covers.

Model weights come from files the user names; nothing is downloaded. DINO ViT-B/8 (the
``dino_vitbase8_pretrain.pth`` state dict) is built with ``timm``, CLIP ViT-L/14 with ``transformers`` (a full
CLIP file, or a vision file such as ComfyUI's ``clip_vision`` one plus a text file with ``text_projection``
such as ComfyUI's ``text_encoders/clip_l.safetensors``; the tokenizer files from ComfyUI's
``comfy/sd1_tokenizer``), the LPIPS backbone from torchvision's SqueezeNet 1.1 file
(``squeezenet1_1-b8a52dc0.pth``) under torchmetrics' own linear heads. Needs torch, torchvision, numpy,
Pillow and torchmetrics, plus timm for DINO and transformers for CLIP (ComfyUI's environment has all but
torchmetrics and timm: ``pip install torchmetrics timm``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS = ("structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited")
"""The seven PIE-Bench metrics, in the paper's column order."""
BACKGROUND = ("psnr", "lpips", "mse", "ssim")
"""The metrics taken on the background (outside the edit mask); each also has a ``_corrected`` column."""
COLUMNS = ("image_id", "method", *METRICS, *(f"{m}_corrected" for m in BACKGROUND))
"""``metrics.csv``'s header."""
PAPER_SCALE = {"structure_distance": 1e3, "psnr": 1.0, "lpips": 1e3, "mse": 1e4, "ssim": 1e2,
               "clip_whole": 1.0, "clip_edited": 1.0}
"""The factor from a per-image value to the paper's unit (structure ×10³, LPIPS ×10³, MSE ×10⁴, SSIM ×10²)."""
NEEDS_WEIGHTS = {"structure_distance": "dino", "lpips": "lpips", "lpips_corrected": "lpips",
                 "clip_whole": "clip", "clip_edited": "clip"}
"""Which weight file (``--dino``, ``--lpips``, ``--clip``) a column needs; the others need none."""
EDIT_SIZE = 512
DINO_SIZE = 224
DINO_MAX_SIZE = 480
DINO_ANTIALIAS = False
"""``Resize(224, max_size=480)`` on a tensor did not antialias in the torchvision of PIE-Bench's release
(before 0.17, whose default changed to antialiasing); the published numbers were computed that way."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MAX_TOKENS = 77
SQUEEZE_SLICES = (range(0, 2), range(2, 5), range(5, 8), range(8, 10), range(10, 11), range(11, 12),
                  range(12, 13))
"""How LPIPS splits SqueezeNet 1.1's ``features`` into its seven tapped slices."""


class MetricWeightsError(ValueError):
    """A weight file is missing or does not hold the expected model."""


# ---------------------------------------------------------------------------------------------- images


def load_edit(path: str | Path) -> Any:
    """An edit as an RGB PIL image; a non-square one is cropped to its bottom-right 512×512 panel."""
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    if w != h:
        img = img.crop((w - EDIT_SIZE, h - EDIT_SIZE, w, h))
    return img


def load_source(path: str | Path) -> Any:
    """A PIE-Bench photo as an RGB PIL image."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _unit(img: Any) -> Any:
    """HWC float32 array in [0, 1] from a PIL image, as the reference's ``np.array(img) / 255``."""
    import numpy as np

    return np.asarray(img).astype(np.float32) / 255


def _chw(array: Any) -> Any:
    """1×C×H×W tensor from an HWC array."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)


# ---------------------------------------------------------------------------------------------- models


def _state_dict(path: str | Path) -> dict[str, Any]:
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise MetricWeightsError(f"weight file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p)))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return dict(sd)


@dataclass
class Dino:
    """DINO ViT (PIE: ViT-B/8) and the index of the block whose keys structure distance compares."""

    model: Any
    block: int


def load_dino(path: str | Path) -> Dino:
    """DINO ViT from its state dict (``dino_vitbase8_pretrain.pth``); size, depth and patch read off the file."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in _state_dict(path).items()}
    try:
        patch = sd["patch_embed.proj.weight"]
        dim, size = patch.shape[0], patch.shape[-1]
        grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    except KeyError as e:
        raise MetricWeightsError(f"--dino {path}: not a DINO ViT state dict (no {e.args[0]})") from e
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    model = VisionTransformer(img_size=grid * size, patch_size=size, embed_dim=dim, depth=depth,
                              num_heads=max(1, dim // 64), mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                              qkv_bias=True, num_classes=0, dynamic_img_size=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise MetricWeightsError(f"--dino {path}: keys do not match a DINO ViT (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
    return Dino(model.eval().to(torch.float32), depth - 1)


@dataclass
class Clip:
    """CLIP with both towers and the processing CLIPScore applies."""

    model: Any
    image_processor: Any
    tokenizer: Any


CLIP_PARTS = {
    "the vision tower": ("vision_model.embeddings.patch_embedding.weight",
                         "vision_model.embeddings.position_embedding.weight", "vision_model.encoder.layers.0.",
                         "vision_model.post_layernorm.weight"),
    "the text tower": ("text_model.embeddings.token_embedding.weight",
                       "text_model.embeddings.position_embedding.weight", "text_model.encoder.layers.0.",
                       "text_model.final_layer_norm.weight"),
    "the image projection": ("visual_projection.weight",),
    "the text projection": ("text_projection.weight",),
}
"""What OpenAI's CLIP ViT-L/14 has and a CLIP score needs, by the key (or key prefix) that shows each part."""


def check_clip_parts(sd: Mapping[str, Any], paths: Sequence[str | Path]) -> None:
    """Refuse CLIP weights without both towers, both projections and 77 text positions, naming the files and the
    parts (and keys) that are missing."""
    files = " ".join(str(p) for p in paths)
    missing = [f"{part} ({key})" for part, keys in CLIP_PARTS.items() for key in keys
               if not any(k == key or (key.endswith(".") and k.startswith(key)) for k in sd)]
    if missing:
        raise MetricWeightsError(
            f"--clip {files}: not a whole CLIP ViT-L/14: no {'; no '.join(missing)}. Give a full CLIP file "
            "(openai/clip-vit-large-patch14), or the vision file (ComfyUI models/clip_vision) and a text file with "
            "text_projection (ComfyUI models/text_encoders/clip_l.safetensors)")
    positions = sd["text_model.embeddings.position_embedding.weight"].shape[0]
    if positions != CLIP_MAX_TOKENS:
        raise MetricWeightsError(f"--clip {files}: the text tower has {positions} positions; CLIP ViT-L/14 has "
                                 f"{CLIP_MAX_TOKENS}")


def weight_record(path: str | Path) -> dict[str, Any]:
    """A weight file's name, size in bytes and SHA-256 (what ``summary.md`` records for each metric's file)."""
    import hashlib

    p = Path(path).expanduser()
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": p.name, "bytes": p.stat().st_size, "sha256": digest.hexdigest()}


def load_clip(paths: Sequence[str | Path], tokenizer_dir: str | Path) -> Clip:
    """CLIP from one full file or several partial ones (vision + text), configuration read off the weights.

    Keys are Hugging Face's (``vision_model.*``, ``visual_projection.weight``, ``text_model.*``,
    ``text_projection.weight``), the layout of ComfyUI's ``clip_vision`` and ``clip_l`` files.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    sd: dict[str, Any] = {}
    for p in paths:
        sd.update(_state_dict(p))
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    check_clip_parts(sd, paths)

    def tower(prefix: str) -> dict[str, Any]:
        layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"{prefix}.encoder.layers."))
        fc1 = sd[f"{prefix}.encoder.layers.0.mlp.fc1.weight"]
        hidden = fc1.shape[1]
        return dict(hidden_size=hidden, intermediate_size=fc1.shape[0], num_hidden_layers=layers,
                    num_attention_heads=max(1, hidden // 64), hidden_act="quick_gelu")

    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    image_size = patch.shape[-1] * math.isqrt(positions - 1)
    projection = sd["visual_projection.weight"].shape[0]
    config = CLIPConfig(
        text_config=dict(tower("text_model"), vocab_size=sd["text_model.embeddings.token_embedding.weight"].shape[0],
                         max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
                         projection_dim=projection),
        vision_config=dict(tower("vision_model"), image_size=image_size, patch_size=patch.shape[-1],
                           projection_dim=projection),
        projection_dim=projection)
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "logit_scale"]
    if missing or unexpected:
        raise MetricWeightsError(f"--clip: keys do not match a CLIP model (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]})")
    tok = Path(tokenizer_dir).expanduser()
    if not (tok / "vocab.json").is_file() or not (tok / "merges.txt").is_file():
        raise MetricWeightsError(f"--clip-tokenizer {tok}: no vocab.json and merges.txt there (ComfyUI has them in "
                                 "comfy/sd1_tokenizer)")
    tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=CLIP_MAX_TOKENS,
                              pad_token="<|endoftext|>")
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return Clip(model.eval(), processor, tokenizer)


@dataclass
class Lpips:
    """LPIPS (SqueezeNet) as torchmetrics builds it: one network averaging spatially, one keeping the map."""

    pooled: Any
    spatial: Any


def load_lpips(path: str | Path) -> Lpips:
    """LPIPS with torchmetrics' SqueezeNet linear heads and the backbone from torchvision's SqueezeNet 1.1 file."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    sd = _state_dict(path)
    backbone = {}
    for k, v in sd.items():
        if not k.startswith("features."):
            continue
        index, rest = k.split(".", 2)[1:]
        slice_ = next(n for n, r in enumerate(SQUEEZE_SLICES) if int(index) in r)
        backbone[f"slices.{slice_}.{index}.{rest}"] = v
    nets = []
    for spatial in (False, True):
        net = _NoTrainLpips(net="squeeze", spatial=spatial, pnet_rand=True)
        missing, unexpected = net.net.load_state_dict(backbone, strict=False)
        if missing or unexpected or not backbone:
            raise MetricWeightsError(f"--lpips {path}: not torchvision's SqueezeNet 1.1 (features.*) state dict "
                                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        nets.append(net.eval())
    return Lpips(*nets)


@dataclass
class MetricModels:
    """The weight-backed metrics available for a run; None where the user gave no file."""

    dino: Dino | None = None
    clip: Clip | None = None
    lpips: Lpips | None = None

    def missing(self) -> list[str]:
        """Columns left empty for lack of weights."""
        have = {"dino": self.dino, "clip": self.clip, "lpips": self.lpips}
        return [col for col, kind in NEEDS_WEIGHTS.items() if have[kind] is None]


# ---------------------------------------------------------------------------------------------- metrics


def structure_distance(dino: Dino, source: Any, edit: Any) -> float:
    """MSE between the cosine self-similarity matrices of the last block's keys (images in 0–255)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import Normalize, Resize

    resize = Resize(DINO_SIZE, max_size=DINO_MAX_SIZE, antialias=DINO_ANTIALIAS)
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def self_similarity(img: Any) -> Any:
        x = torch.from_numpy(np.asarray(img).astype(np.float32).transpose(2, 0, 1).copy())
        x = norm(resize(x)).unsqueeze(0)
        out: list[Any] = []
        handle = dino.model.blocks[dino.block].attn.qkv.register_forward_hook(lambda m, i, o: out.append(o))
        try:
            with torch.no_grad():
                dino.model.forward_features(x)
        finally:
            handle.remove()
        dim = out[0].shape[-1] // 3
        keys = out[0][0, :, dim:2 * dim]
        norms = keys.norm(dim=1, keepdim=True)
        return (keys @ keys.T) / torch.clamp(norms @ norms.T, min=1e-8)

    return float(F.mse_loss(self_similarity(source), self_similarity(edit)))


def clip_score(clip: Clip, image: Any, prompt: str) -> float:
    """``max(100·cos(image, prompt), 0)`` with CLIPScore's processing of a uint8 HWC image."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))
    values = clip.image_processor(images=[pixels], return_tensors="pt")["pixel_values"]
    tokens = clip.tokenizer([prompt], return_tensors="pt", padding=True)
    ids = tokens["input_ids"][..., :CLIP_MAX_TOKENS]
    attention = tokens["attention_mask"][..., :CLIP_MAX_TOKENS]
    with torch.no_grad():
        img = clip.model.visual_projection(clip.model.vision_model(pixel_values=values).pooler_output)
        txt = clip.model.text_projection(clip.model.text_model(input_ids=ids, attention_mask=attention).pooler_output)
    img = img / img.norm(p=2, dim=-1, keepdim=True)
    txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
    return max(float(100 * (img * txt).sum()), 0.0)


def _background_mean(values: Any, background: Any) -> float:
    """Mean of ``values`` (1×C×H×W or 1×1×H×W) over the background pixels (``background`` H×W, 0/1)."""
    import torch

    weight = torch.as_tensor(background, dtype=values.dtype).expand_as(values[0]).unsqueeze(0)
    return float((values * weight).sum() / weight.sum())


SSIM_CONVENTIONS = ("published", "current")
"""``published``: the SSIM torchmetrics computed before 1.4.2 (the PIE-Bench tables), the map's mean without
its border of ``(kernel − 1) / 2`` pixels on each side (5 for the default Gaussian, σ 1.5, 11 taps); ``current``:
torchmetrics ≥ 1.4.2 (PR #2721), the mean over the whole map (the reflect-padded border included)."""
SSIM_SIGMA = 1.5


def ssim_border() -> int:
    """The border torchmetrics < 1.4.2 left out of the SSIM mean: half its Gaussian kernel (σ 1.5: 5 pixels)."""
    size = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1
    return (size - 1) // 2


def ssim(preds: Any, target: Any, convention: str = "published") -> float:
    """SSIM (data range 1, torchmetrics' Gaussian window) of two 1×C×H×W tensors under ``convention``.

    Both conventions take today's torchmetrics SSIM map; ``published`` averages it without the border, as
    torchmetrics did before 1.4.2. (The variance clamp of torchmetrics 1.4 only changes windows whose variance
    rounds below zero.)
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    if convention not in SSIM_CONVENTIONS:
        raise ValueError(f"--ssim-convention must be one of {SSIM_CONVENTIONS}, got {convention!r}")
    whole, full = structural_similarity_index_measure(preds, target, data_range=1.0, sigma=SSIM_SIGMA,
                                                      return_full_image=True)
    if convention == "current":
        return float(whole)
    b = ssim_border()
    return float(full[..., b:-b, b:-b].mean())


class Scorer:
    """Per-image PIE metrics for one (photo, edit) pair; torchmetrics objects used as the reference uses them."""

    def __init__(self, models: MetricModels, ssim_convention: str = "published") -> None:
        from torchmetrics.image import PeakSignalNoiseRatio
        from torchmetrics.regression import MeanSquaredError

        if ssim_convention not in SSIM_CONVENTIONS:
            raise ValueError(f"--ssim-convention must be one of {SSIM_CONVENTIONS}, got {ssim_convention!r}")
        self.models = models
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim_convention = ssim_convention
        self.mse = MeanSquaredError()

    def score(self, source: Any, edit: Any, mask: Any, target_prompt: str) -> dict[str, float | None]:
        """All columns for one image: float, NaN (empty background) or None (no weights for it)."""
        import numpy as np
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure

        if np.asarray(source).shape != np.asarray(edit).shape:
            raise ValueError(f"the edit is {edit.size[0]}×{edit.size[1]}, the photo {source.size[0]}×{source.size[1]}: "
                             "save the edit at the photo's size (PIE-Bench: 512×512)")
        mask3 = np.repeat(mask[:, :, None], 3, axis=2)
        background = 1.0 - mask
        out: dict[str, float | None] = {k: None for k in COLUMNS[2:]}
        m = self.models
        if m.dino is not None:
            out["structure_distance"] = structure_distance(m.dino, source, edit)
        if m.clip is not None:
            out["clip_whole"] = clip_score(m.clip, edit, target_prompt)
            out["clip_edited"] = clip_score(m.clip, np.uint8(np.asarray(edit) * mask3), target_prompt)
        if background.sum() == 0:
            unscored = m.missing()
            for name in BACKGROUND:
                for col in (name, f"{name}_corrected"):
                    out[col] = None if col in unscored else math.nan
            return out
        src, tgt = _unit(source), _unit(edit)
        keep = (1.0 - mask3).astype(np.float32)
        src_bg, tgt_bg = _chw(src * keep), _chw(tgt * keep)
        with torch.no_grad():
            out["psnr"] = float(self.psnr(src_bg, tgt_bg))
            out["mse"] = float(self.mse(src_bg[0].contiguous(), tgt_bg[0].contiguous()))
            out["ssim"] = ssim(src_bg, tgt_bg, self.ssim_convention)
            a, b = _chw(src), _chw(tgt)
            mse_bg = _background_mean((a - b) ** 2, background)
            out["mse_corrected"] = mse_bg
            out["psnr_corrected"] = math.inf if mse_bg == 0 else -10.0 * math.log10(mse_bg)
            _, ssim_map = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True)
            out["ssim_corrected"] = _background_mean(ssim_map, background)
            if m.lpips is not None:
                out["lpips"] = float(m.lpips.pooled(src_bg * 2 - 1, tgt_bg * 2 - 1).squeeze())
                out["lpips_corrected"] = _background_mean(m.lpips.spatial(a * 2 - 1, b * 2 - 1), background)
        return out


# ---------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Average:
    """One summary cell: the mean of the finite per-image values (paper units) and how many there were."""

    value: float
    count: int


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Average | None]]:
    """Per method, each column's mean over images with a finite value, in the paper's units.

    None where no image has a value (no weights, or every value NaN).
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        per = sums.setdefault(str(row["method"]), {})
        for col in COLUMNS[2:]:
            v = row.get(col)
            if v is None or v == "":
                continue
            v = float(v)
            if math.isfinite(v):
                per.setdefault(col, []).append(v * PAPER_SCALE[col.removesuffix("_corrected")])
    return {method: {col: Average(sum(v) / len(v), len(v)) if (v := per.get(col)) else None
                     for col in COLUMNS[2:]}
            for method, per in sums.items()}


HEADERS = {"structure_distance": "Structure ×10³ ↓", "psnr": "PSNR ↑", "lpips": "LPIPS ×10³ ↓",
           "mse": "MSE ×10⁴ ↓", "ssim": "SSIM ×10² ↑", "clip_whole": "CLIP whole ↑", "clip_edited": "CLIP edited ↑"}


def summary_markdown(summary: Mapping[str, Mapping[str, Average | None]], images: int,
                     notes: Sequence[str] = ()) -> str:
    """The paper's table (reference metrics) and the corrected background metrics, as Markdown; ``notes`` (how
    it was scored: SSIM convention, weight files) end it."""

    def cell(a: Average | None) -> str:
        if a is None:
            return "–"
        text = f"{a.value:.2f}"
        return text if a.count == images else f"{text} (n={a.count})"

    lines = ["| method | " + " | ".join(HEADERS[c] for c in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    lines += [f"| {m} | " + " | ".join(cell(s[c]) for c in METRICS) + " |" for m, s in summary.items()]
    lines += ["", "Background metrics over background pixels only (corrected):", "",
              "| method | " + " | ".join(HEADERS[c] for c in BACKGROUND) + " |",
              "|---|" + "---:|" * len(BACKGROUND)]
    lines += [f"| {m} | " + " | ".join(cell(s[f'{c}_corrected']) for c in BACKGROUND) + " |"
              for m, s in summary.items()]
    lines += ["", f"Means over the {images} images of the set with a finite value; (n=…) where fewer images "
              "count (NaN: no background pixels; or the edit is missing). – : not computed (no weight file)."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
