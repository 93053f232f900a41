"""PIE-Bench harness: data reading, the metrics against hand computations, summaries, the method graphs.

Metric models are random (no weights can be downloaded); the checks are that each metric is PnPInversion's
computation on PnPInversion's inputs. LPIPS, DINO and CLIP need torchvision, timm and transformers (present
in ComfyUI's environment) and skip without them.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from spdinv_pack.benchmarks.pie import cli
from spdinv_pack.benchmarks.pie.data import PieDataError, clean_prompt, decode_mask, load_items
from spdinv_pack.benchmarks.pie.run import INVERSIONS, RunSettings, blend_settings, edit_prompt, plan_methods
from spdinv_pack.tests.pie_fixture import ENTRIES, box_mask, encode_mask, make_pie_folder

torchmetrics = pytest.importorskip("torchmetrics", reason="pip install torchmetrics (the PIE metrics use it)")

from spdinv_pack.benchmarks.pie.metrics import (  # noqa: E402
    COLUMNS,
    MetricModels,
    Scorer,
    load_clip,
    load_dino,
    load_edit,
    load_lpips,
    summarise,
    summary_markdown,
)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def pie(tmp_path_factory):
    return make_pie_folder(tmp_path_factory.mktemp("pie"))


def photo_pair(seed: int = 0):
    """A 512² photo and an 'edit' of it: different inside a box, slightly noisy outside."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    tgt = src.astype(np.int16) + rng.integers(-6, 7, src.shape)
    tgt[100:300, 150:350] = rng.integers(0, 256, (200, 200, 3))
    return Image.fromarray(src), Image.fromarray(np.clip(tgt, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- data


def test_mask_decoding_matches_runs_and_forces_the_border():
    mask = box_mask(10, 20, 30, 50)
    decoded = decode_mask(encode_mask(mask))
    inner = (slice(1, -1), slice(1, -1))
    assert np.array_equal(decoded[inner], mask[inner])
    assert decoded[0].all() and decoded[-1].all() and decoded[:, 0].all() and decoded[:, -1].all()
    tail = decode_mask([512 * 512 - 3, 100])  # a run past the end is clipped, as the reference clips it
    assert tail.reshape(-1)[-3:].all() and tail.sum() == 4 * 511
    with pytest.raises(PieDataError, match="odd number"):
        decode_mask([1, 2, 3])


def test_items_have_prompts_without_brackets_and_blend_pairs(pie):
    items = load_items(pie)
    assert [i.image_id for i in items] == list(ENTRIES)
    first = items[0]
    assert first.source_prompt == "a photo of a cat next to a mirror"
    assert first.target_prompt == "a photo of a dog next to a mirror"
    assert first.blended_words == ("cat", "dog") and items[1].blended_words is None
    assert first.image_path.is_file() and first.relative_path == "1_change_object_80/000000000000.jpg"
    assert clean_prompt("a [red] [rug]") == "a red rug"
    assert [i.image_id for i in load_items(pie, categories=["9"])] == ["000000000002"]
    with pytest.raises(PieDataError, match="--ids"):
        load_items(pie, ids=["nope"])
    with pytest.raises(PieDataError, match="mapping_file.json"):
        load_items(pie / "annotation_images")


# ---------------------------------------------------------------------------------------------- metrics


def test_background_psnr_mse_are_whole_tensor_and_corrected_ones_background_only():
    src, tgt = photo_pair()
    mask = decode_mask(encode_mask(box_mask(90, 140, 310, 360)))
    values = Scorer(MetricModels()).score(src, tgt, mask, "a photo")
    a, b = np.asarray(src) / 255.0, np.asarray(tgt) / 255.0
    keep = (1 - mask)[:, :, None]
    whole = np.mean((a * keep - b * keep) ** 2)  # the reference: zeroed edit pixels count as matches
    background = np.sum(((a - b) ** 2) * keep) / (3 * keep.sum())
    assert values["mse"] == pytest.approx(whole, rel=1e-4)
    assert values["psnr"] == pytest.approx(10 * math.log10(1 / whole), rel=1e-4)
    assert values["mse_corrected"] == pytest.approx(background, rel=1e-4)
    assert values["psnr_corrected"] == pytest.approx(10 * math.log10(1 / background), rel=1e-4)
    assert values["mse_corrected"] > values["mse"]
    assert 0 < values["ssim_corrected"] < values["ssim"] < 1  # the zeroed box inflates the reference's SSIM
    for col in ("structure_distance", "lpips", "lpips_corrected", "clip_whole", "clip_edited"):
        assert values[col] is None  # no weights given


def test_identical_background_scores_perfectly():
    src, tgt = photo_pair()
    mask = decode_mask(encode_mask(box_mask(100, 150, 300, 350)))
    same = np.asarray(src).copy()
    same[100:300, 150:350] = np.asarray(tgt)[100:300, 150:350]
    values = Scorer(MetricModels()).score(src, Image.fromarray(same), mask, "a photo")
    assert values["mse"] == 0 and values["mse_corrected"] == 0
    assert values["ssim"] == pytest.approx(1.0)
    # windows of background pixels next to the edit see it: only those keep the corrected SSIM below 1
    assert 0.99 < values["ssim_corrected"] < 1


def ssim_before_1_4_2(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as torchmetrics < 1.4.2 computed it, written out in float64 (C×H×W images in [0, 1]): 11-tap Gaussian
    window (σ 1.5), images reflect-padded by 5, valid convolution, then the map **without its 5-pixel border**
    averaged (1.4.2, PR #2721, averages the whole map instead)."""
    taps = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-0.5 * (taps / 1.5) ** 2)
    g /= g.sum()
    window = np.outer(g, g)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, 5, mode="reflect")
        h, w = x.shape
        return np.array([[np.sum(padded[i:i + 11, j:j + 11] * window) for j in range(w)] for i in range(h)])

    maps = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64), strict=True):
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(np.stack(maps)[:, 5:-5, 5:-5]))


def test_ssim_published_convention_reproduces_torchmetrics_before_1_4_2():
    from spdinv_pack.benchmarks.pie.metrics import ssim

    rng = np.random.default_rng(7)
    a = rng.random((3, 14, 14))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    b[:, 0, :] = 0  # an edge that differs: the border the old mean left out
    expected = ssim_before_1_4_2(a, b)
    ta, tb = (torch.from_numpy(x).float()[None] for x in (a, b))
    assert ssim(ta, tb, "published") == pytest.approx(expected, abs=1e-5)
    current = ssim(ta, tb, "current")
    assert current == pytest.approx(float(torchmetrics.functional.image.structural_similarity_index_measure(
        ta, tb, data_range=1.0)), abs=1e-7)
    assert abs(current - expected) > 1e-2  # the two conventions differ on this image
    src, tgt = photo_pair()
    mask = decode_mask(encode_mask(box_mask(90, 140, 310, 360)))
    published = Scorer(MetricModels()).score(src, tgt, mask, "x")["ssim"]
    assert published != Scorer(MetricModels(), ssim_convention="current").score(src, tgt, mask, "x")["ssim"]
    with pytest.raises(ValueError, match="ssim-convention"):
        Scorer(MetricModels(), ssim_convention="newest")


def test_all_edit_mask_gives_nan_background_and_summary_counts_it():
    src, tgt = photo_pair()
    full = decode_mask(encode_mask(np.ones((512, 512), dtype=np.uint8)))
    nan_row = Scorer(MetricModels()).score(src, tgt, full, "x")
    assert all(math.isnan(nan_row[c]) for c in ("psnr", "mse", "ssim", "psnr_corrected", "ssim_corrected"))
    assert nan_row["lpips"] is None  # not NaN: no LPIPS weights were given
    ok = Scorer(MetricModels()).score(src, tgt, decode_mask(encode_mask(box_mask(0, 0, 256, 512))), "x")
    rows = [{"image_id": "a", "method": "m", **ok}, {"image_id": "b", "method": "m", **nan_row}]
    summary = summarise(rows)["m"]
    assert summary["mse"].count == 1 and summary["mse"].value == pytest.approx(ok["mse"] * 1e4)
    assert summary["ssim"].value == pytest.approx(ok["ssim"] * 100)
    assert summary["lpips"] is None
    table = summary_markdown(summarise(rows), images=2)
    assert "(n=1)" in table and "| m |" in table and "–" in table


def test_edit_that_is_not_square_is_cropped_to_its_last_panel(tmp_path):
    panels = np.zeros((512, 1024, 3), dtype=np.uint8)
    panels[:, 512:] = 200
    Image.fromarray(panels).save(tmp_path / "e.png")
    edit = load_edit(tmp_path / "e.png")
    assert edit.size == (512, 512) and np.asarray(edit).min() == 200


@pytest.mark.skipif(not has("torchvision"), reason="LPIPS's backbone is torchvision's SqueezeNet (not installed)")
def test_lpips_equals_torchmetrics_metric_with_the_same_backbone(tmp_path):
    import torchvision
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    torch.manual_seed(0)
    backbone = torchvision.models.squeezenet1_1(weights=None)
    file = tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    file.parent.mkdir(parents=True)
    torch.save(backbone.state_dict(), file)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))  # torchvision finds the file there: the reference class, no download
    try:
        reference = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
    finally:
        torch.hub.set_dir(previous)
    src, tgt = photo_pair(1)
    mask = decode_mask(encode_mask(box_mask(90, 140, 310, 360)))
    values = Scorer(MetricModels(lpips=load_lpips(file))).score(src, tgt, mask, "x")
    keep = (1 - mask)[:, :, None]

    def masked(img):
        return torch.from_numpy((np.asarray(img) / 255.0 * keep).astype(np.float32)).permute(2, 0, 1)[None]

    expected = float(reference(masked(src) * 2 - 1, masked(tgt) * 2 - 1))
    assert values["lpips"] == pytest.approx(expected, rel=1e-5)
    assert values["lpips_corrected"] > 0
    same = Scorer(MetricModels(lpips=load_lpips(file))).score(src, src, mask, "x")
    assert same["lpips"] == pytest.approx(0, abs=1e-7) and same["lpips_corrected"] == pytest.approx(0, abs=1e-7)


def vit_keys_by_hand(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """The last block's keys of a DINO ViT, written out from the architecture (pre-norm blocks, LN eps 1e-6)."""
    ln = torch.nn.functional.layer_norm
    dim = sd["cls_token"].shape[-1]
    tokens = torch.nn.functional.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                                        stride=sd["patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    h = torch.cat([sd["cls_token"], tokens], 1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        qkv = torch.nn.functional.linear(ln(h, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6),
                                         sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        if i == depth - 1:
            return qkv[0, :, dim:2 * dim]
        q, k, v = qkv.reshape(1, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), -1) @ v
        h = h + torch.nn.functional.linear(att.transpose(1, 2).reshape(1, -1, dim), sd[p + "attn.proj.weight"],
                                           sd[p + "attn.proj.bias"])
        m = ln(h, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        m = torch.nn.functional.gelu(torch.nn.functional.linear(m, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        h = h + torch.nn.functional.linear(m, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    raise AssertionError("no blocks")


@pytest.mark.skipif(not (has("timm") and has("torchvision")), reason="DINO is built with timm (not installed)")
def test_structure_distance_is_mse_of_key_self_similarities(tmp_path):
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.transforms.functional import normalize, resize

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=224, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0)
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    torch.save(sd, tmp_path / "dino.pth")
    src, tgt = photo_pair(2)
    value = Scorer(MetricModels(dino=load_dino(tmp_path / "dino.pth"))).score(
        src, tgt, decode_mask(encode_mask(box_mask(0, 0, 10, 10))), "x")["structure_distance"]

    def sim(img):  # 0-255 values, resized without antialiasing, ImageNet-normalised: PnPInversion's input
        x = torch.from_numpy(np.asarray(img).astype(np.float32)).permute(2, 0, 1)
        x = normalize(resize(x, [224, 224], antialias=False), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        k = vit_keys_by_hand(sd, x[None], heads=2)
        return torch.nn.functional.cosine_similarity(k[:, None], k[None], dim=-1, eps=1e-8)

    with torch.no_grad():
        expected = float(((sim(src) - sim(tgt)) ** 2).mean())
    assert expected > 0 and value == pytest.approx(expected, rel=1e-3)


def tiny_clip(tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tower = dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=2,
                 hidden_act="quick_gelu", projection_dim=32)
    model = CLIPModel(CLIPConfig(text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
                                 vision_config=dict(tower, image_size=56, patch_size=14), projection_dim=32)).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({k: v for k, v in sd.items() if k.startswith("vision") or k.startswith("visual")},
              str(tmp_path / "vision.safetensors"))
    save_file({k: v for k, v in sd.items() if k.startswith("text")}, str(tmp_path / "text.safetensors"))
    save_file(sd, str(tmp_path / "full.safetensors"))
    return model


@pytest.mark.skipif(not has("transformers"), reason="CLIP is built with transformers (not installed)")
def test_clip_scores_whole_and_edited_region_against_hand_computation(tmp_path):
    from transformers import CLIPTokenizer

    model = tiny_clip(tmp_path)
    vocab = tmp_path / "tok"
    vocab.mkdir()
    make_tokenizer_files(vocab)
    tokenizer_dir = vocab
    clip = load_clip([tmp_path / "vision.safetensors", tmp_path / "text.safetensors"], tokenizer_dir)
    full = load_clip([tmp_path / "full.safetensors"], tokenizer_dir)
    src, tgt = photo_pair(3)
    mask = decode_mask(encode_mask(box_mask(90, 140, 310, 360)))
    prompt = "photo of a dog in a park"
    values = Scorer(MetricModels(clip=clip)).score(src, tgt, mask, prompt)
    assert Scorer(MetricModels(clip=full)).score(src, tgt, mask, prompt)["clip_whole"] == values["clip_whole"]
    tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"))
    ids = torch.tensor([tok(prompt)["input_ids"]])

    def by_hand(img: np.ndarray) -> float:
        small = np.asarray(Image.fromarray(img).resize((56, 56), Image.BICUBIC), dtype=np.float32) / 255
        mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
        pixels = torch.from_numpy(((small - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            i = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            t = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        return max(100 * float(torch.nn.functional.cosine_similarity(i, t)), 0.0)

    edited = np.uint8(np.asarray(tgt) * np.repeat(mask[:, :, None], 3, 2))
    assert values["clip_whole"] == pytest.approx(by_hand(np.asarray(tgt)), abs=0.05)
    assert values["clip_edited"] == pytest.approx(by_hand(edited), abs=0.05)
    assert values["clip_whole"] > 0 and values["clip_edited"] > 0 and values["clip_whole"] != values["clip_edited"]
    assert Scorer(MetricModels(clip=clip)).score(src, tgt, mask, "dog")["clip_whole"] == 0  # max(100·cos, 0)


@pytest.mark.skipif(not has("transformers"), reason="CLIP is built with transformers (not installed)")
def test_clip_without_openai_parts_is_refused_naming_file_and_part(tmp_path):
    from safetensors.torch import load_file, save_file

    from spdinv_pack.benchmarks.pie.metrics import MetricWeightsError

    tiny_clip(tmp_path)
    make_tokenizer_files(tmp_path)
    with pytest.raises(MetricWeightsError, match=r"vision\.safetensors: not a whole CLIP ViT-L/14: no the text tower"):
        load_clip([tmp_path / "vision.safetensors"], tmp_path)
    sd = load_file(str(tmp_path / "full.safetensors"))
    save_file({k: v for k, v in sd.items() if k != "text_projection.weight"}, str(tmp_path / "noproj.safetensors"))
    with pytest.raises(MetricWeightsError, match=r"no the text projection \(text_projection.weight\)"):
        load_clip([tmp_path / "noproj.safetensors"], tmp_path)
    sd["text_model.embeddings.position_embedding.weight"] = sd["text_model.embeddings.position_embedding.weight"][:76]
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(MetricWeightsError, match="76 positions; CLIP ViT-L/14 has 77"):
        load_clip([tmp_path / "short.safetensors"], tmp_path)


@pytest.mark.skipif(not has("transformers"), reason="CLIP is built with transformers (not installed)")
def test_metrics_records_each_weight_files_name_size_and_sha256(pie, tmp_path):
    import hashlib
    import json

    tiny_clip(tmp_path)
    make_tokenizer_files(tmp_path)
    edits = tmp_path / "edits" / "a+p2p"
    edits.mkdir(parents=True)
    item = load_items(pie)[0]
    Image.open(item.image_path).save(edits / f"{item.image_id}.png")
    files = [tmp_path / "vision.safetensors", tmp_path / "text.safetensors"]
    code = cli.main(["metrics", "--pie-dir", str(pie), "--edits", str(tmp_path / "edits"), "--out", str(tmp_path),
                     "--ids", item.image_id, "--clip", *map(str, files), "--clip-tokenizer", str(tmp_path)])
    assert code == 0
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    settings = json.loads((tmp_path / "metrics_settings.json").read_text(encoding="utf-8"))
    assert "SSIM convention: published" in summary and settings["ssim_convention"] == "published"
    for f, record in zip(files, settings["weights"]["clip"], strict=True):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert record == {"file": f.name, "bytes": f.stat().st_size, "sha256": digest}
        assert f"- clip: {f.name}, {f.stat().st_size} bytes, SHA-256 {digest}" in summary


def make_tokenizer_files(folder):
    """A small byte-level BPE vocabulary in CLIP's format (all single characters, a few merges)."""
    import json

    chars = [chr(c) for c in range(33, 127)]
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["d o", "do g</w>", "p h", "o t", "ph ot", "phot o</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = 49406  # CLIP pools the text at the end token, found by this id
    vocab["<|endoftext|>"] = 49407
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


# ---------------------------------------------------------------------------------------------- the commands


def test_metrics_command_writes_rows_summary_and_says_what_is_missing(pie, tmp_path, capsys):
    edits = tmp_path / "edits"
    for method, shift in (("a+p2p", 4), ("b+p2p", 12)):
        (edits / method).mkdir(parents=True)
        for item in load_items(pie)[:2 if method == "b+p2p" else 3]:
            img = np.asarray(Image.open(item.image_path)).astype(np.int16) + shift
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(edits / method / f"{item.image_id}.png")
    code = cli.main(["metrics", "--pie-dir", str(pie), "--edits", str(edits), "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "structure_distance: left empty (no --dino" in printed and "b+p2p: 1 of 3 edits missing" in printed
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv", encoding="utf-8")))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 5
    by = {(r["method"], r["image_id"]): r for r in rows}
    assert by[("a+p2p", "000000000002")]["psnr"] == "nan"  # the all-edit mask
    assert by[("a+p2p", "000000000000")]["lpips"] == ""  # no --lpips
    assert float(by[("a+p2p", "000000000000")]["psnr"]) > float(by[("b+p2p", "000000000000")]["psnr"])
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| a+p2p |" in summary and "(n=2)" in summary


def node(prompt, cls, title=None):
    """The inputs of the (first) node of class ``cls`` (and title) in an API prompt."""
    return next(n["inputs"] for n in prompt.values()
                if n["class_type"] == cls and (title is None or n["_meta"]["title"] == title))


def text_of(prompt, link):
    """The text of the CLIPTextEncode node a link points at."""
    return prompt[link[0]]["inputs"]["text"]


def test_methods_and_their_graphs_follow_each_rows_protocol(pie):
    item, refine_item = load_items(pie)[:2]
    settings = RunSettings(checkpoint="sd.safetensors", steps=50, size=512)

    ddim = edit_prompt(item, "ddim", "p2p", settings, (512, 512), prefix="p")
    assert node(ddim, "SPDInvInvert")["method"] == "ddim"
    assert node(ddim, "SPDInvEditSampler")["source_guidance"] == "like target"
    assert "negative" in node(ddim, "SPDInvEditSampler")
    p2p = node(ddim, "P2PAttentionControl")
    # refine for every item by default, the same word count notwithstanding (PnPInversion's and SPDInv's runners)
    assert (p2p["mode"], p2p["cross_replace"], p2p["blend_source_words"], p2p["reweight"]) == (
        "refine", 0.4, "cat", "dog:2.0")
    assert p2p["proximal_guidance"] is False and p2p["blend_maps"] == "edited"
    swap = edit_prompt(item, "ddim", "p2p", RunSettings(checkpoint="x", word_swap=True), (512, 512), prefix="p")
    assert node(swap, "P2PAttentionControl")["mode"] == "word swap"
    assert not any(n["class_type"] == "ImageScale" for n in ddim.values())
    paper = edit_prompt(refine_item, "spdinv_paper", "p2p", settings, (512, 512), prefix="p")
    inv = node(paper, "SPDInvInvert")
    assert (inv["solver"], inv["rel_tol"], inv["grid"], inv["max_iters"]) == ("adamw", 0.0, "reference", 25)
    assert "negative" not in node(paper, "SPDInvEditSampler")  # the source prompt, as SPDInv's code
    assert node(paper, "P2PAttentionControl")["mode"] == "refine"
    assert node(paper, "P2PAttentionControl")["proximal_guidance"] is True
    dci = edit_prompt(item, "spdinv_dci", "p2p", settings, (512, 512), prefix="p")
    assert node(dci, "SPDInvInvert")["max_iters"] == 10 and node(dci, "SPDInvInvert")["dci_rate"] == 1.0
    assert (node(dci, "P2PAttentionControl")["cross_replace"], node(dci, "P2PAttentionControl")["reweight"]) == (
        0.8, "")  # DCI's batch script: cross-replace 0.8, no reweight, whatever --cross-replace says
    nti = edit_prompt(item, "null_text", "p2p", settings, (512, 512), prefix="p")
    assert "negative" in node(nti, "SPDInvInvert") and "negative" in node(nti, "SPDInvEditSampler")
    small = edit_prompt(item, "spdinv", "masactrl", RunSettings(checkpoint="x", size=128), (512, 512), prefix="p")
    assert [n["inputs"]["width"] for n in small.values() if n["class_type"] == "ImageScale"] == [128, 512]
    assert set(INVERSIONS) == {"ddim", "spdinv", "spdinv_paper", "spdinv_dci", "negative_prompt", "null_text",
                               "direct_inversion"}
    with pytest.raises(ValueError, match="null_text with --engines pnp"):
        plan_methods(["null_text"], ["pnp"])


def test_masactrl_rows_invert_and_run_the_source_as_their_reference(pie):
    """PnPInversion's MasaCtrl rows (ddim, direct_inversion) invert and run the source with "" (ddim: guided at
    the edit's CFG, as its pipeline guides both branches); SPDInv's rows with the source prompt at CFG 1."""
    item = load_items(pie)[0]
    settings = RunSettings(checkpoint="x")
    for inversion, guidance in (("ddim", "like target"), ("direct_inversion", "exact")):
        prompt = edit_prompt(item, inversion, "masactrl", settings, (512, 512), prefix="p")
        sampler = node(prompt, "SPDInvEditSampler")
        assert text_of(prompt, node(prompt, "SPDInvInvert")["source"]) == ""
        assert text_of(prompt, sampler["source"]) == "" and text_of(prompt, sampler["negative"]) == ""
        assert sampler["source_guidance"] == guidance
    spd = edit_prompt(item, "spdinv_paper", "masactrl", settings, (512, 512), prefix="p")
    assert text_of(spd, node(spd, "SPDInvEditSampler")["source"]) == item.source_prompt
    assert text_of(spd, node(spd, "SPDInvInvert")["source"]) == item.source_prompt
    assert node(spd, "SPDInvEditSampler")["source_guidance"] == "exact"


def test_pnp_ddim_row_replays_the_ddim_reconstruction_and_takes_features_from_the_empty_prompt(pie):
    item = load_items(pie)[0]
    settings = RunSettings(checkpoint="x")
    ddim = edit_prompt(item, "ddim", "pnp", settings, (512, 512), prefix="p")
    spd = edit_prompt(item, "spdinv_paper", "pnp", settings, (512, 512), prefix="p")
    assert node(ddim, "PNPInjection")["source_path"] == "reconstruction"
    assert node(spd, "PNPInjection")["source_path"] == "inversion"
    for prompt in (ddim, spd):
        sampler = node(prompt, "SPDInvEditSampler")
        assert sampler["source_guidance"] == "exact"  # both CFG halves take the source's "" features
        assert text_of(prompt, sampler["source"]) == ""
        assert text_of(prompt, sampler["negative"]) == "ugly, blurry, black, low res, unrealistic"
        assert text_of(prompt, node(prompt, "SPDInvInvert")["source"]) == item.source_prompt


def with_blend(item, words, source=None, target=None):
    return item.__class__(**{**item.__dict__, "blended_words": words,
                             "source_prompt": source or item.source_prompt,
                             "target_prompt": target or item.target_prompt})


def test_a_missing_blend_word_is_handled_as_the_reference_handles_it(pie):
    """The reference finds a blend word only as an exact space-separated word; a word it does not find has no
    map: the mask is the other word's alone, the reweight only on a found target word; neither found: the mask
    is empty (the target becomes the source from the blend's start)."""
    item = load_items(pie)[0]
    both = blend_settings(item)
    assert (both.source_words, both.target_words, both.reweight, both.threshold, both.note) == (
        "cat", "dog", "dog:2.0", 0.3, None)
    no_source = blend_settings(with_blend(item, ("horse", "dog")))
    assert (no_source.source_words, no_source.target_words, no_source.reweight) == ("", "dog", "dog:2.0")
    assert "'horse'" in no_source.note
    no_target = blend_settings(with_blend(item, ("cat", "dog"), target="a photo of a dog, next to a mirror"))
    assert (no_target.source_words, no_target.target_words, no_target.reweight) == ("cat", "", "")  # "dog," ≠ "dog"
    neither = blend_settings(with_blend(item, ("Cat", "Dog")))  # case counts, as in get_word_inds
    assert (neither.target_words, neither.reweight, neither.threshold) == ("", "", 1.0)
    assert neither.source_words == "a" and "empty blend mask" in neither.note
    assert blend_settings(item, reweight=False).reweight == ""


def test_an_item_whose_blended_word_is_not_two_words_is_left_out_of_the_p2p_rows_only(pie, tmp_path):
    import json
    import shutil

    from spdinv_pack.benchmarks.pie.run import skip_reason

    shutil.copytree(pie, tmp_path / "pie")
    mapping = json.loads((tmp_path / "pie" / "mapping_file.json").read_text())
    mapping["000000000000"]["blended_word"] = "cat dog puppy"
    (tmp_path / "pie" / "mapping_file.json").write_text(json.dumps(mapping))
    item = load_items(tmp_path / "pie")[0]  # loads: the whole set is not stopped
    assert item.blended_words is None and "not two words" in item.blend_error
    assert "skipped for P2P" in skip_reason(item, "spdinv_paper", "p2p")
    assert skip_reason(item, "spdinv_paper", "masactrl") is None and skip_reason(item, "ddim", "pnp") is None
    assert skip_reason(item, "spdinv_dci", "p2p") is None  # DCI's script edits it without local blend
    dci = edit_prompt(item, "spdinv_dci", "p2p", RunSettings(checkpoint="x"), (512, 512), prefix="p")
    assert node(dci, "P2PAttentionControl")["blend_source_words"] == ""
    with pytest.raises(ValueError, match="not two words"):
        edit_prompt(item, "ddim", "p2p", RunSettings(checkpoint="x"), (512, 512), prefix="p")


class FailingServer:
    """A server stand-in (the :class:`benchmarks.pie.servers.ComfyClient` calls the run makes) that takes every
    edit and fails it while staying up."""

    label = "failing"

    def __init__(self) -> None:
        self.prompts: list = []

    def check(self, nodes, checkpoint, precision):
        return None

    def image_name(self, photo, relative_path):
        return relative_path

    def edit(self, prompt, timeout):
        from spdinv_pack.tools.comfy_server import ComfyServerError

        self.prompts.append(prompt)
        raise ComfyServerError("the edit failed")


def test_a_failed_edit_is_logged_and_the_run_goes_on(pie, tmp_path):
    import json

    from spdinv_pack.benchmarks.pie.run import run_edits

    server = FailingServer()
    lines: list[str] = []
    items = load_items(pie)[:2]
    report = run_edits([server], items, plan_methods(["ddim"], ["p2p"]), RunSettings(checkpoint="x"), tmp_path,
                       log=lines.append, in_flight=1)
    assert len(server.prompts) == 2 and [f[1] for f in report.failed] == ["000000000000", "000000000001"]
    assert sum("FAILED on failing: the edit failed" in line for line in lines) == 2
    logged = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in logged] == ["000000000000", "000000000001"]


def test_plan_prints_each_rows_graph_without_a_server(pie, capsys):
    code = cli.main(["plan", "--pie-dir", str(pie), "--checkpoint", "sd15.safetensors", "--ids", "000000000000",
                     "--inversions", "ddim", "spdinv_paper", "--engines", "p2p", "masactrl", "pnp"])
    assert code == 0
    text = capsys.readouterr().out
    blocks = {b.split(":")[0].split()[-1]: b for b in text.split("# 000000000000 ")[1:]}
    assert set(blocks) == {f"{i}+{e}" for i in ("ddim", "spdinv_paper") for e in ("p2p", "masactrl", "pnp")}
    assert "mode='refine'" in blocks["ddim+p2p"] and "mode='refine'" in blocks["spdinv_paper+p2p"]
    assert 'inverted_prompt: "empty prompt"' in blocks["ddim+masactrl"]
    assert 'inverted_prompt: "source prompt"' in blocks["spdinv_paper+masactrl"]
    assert "source_path='reconstruction'" in blocks["ddim+pnp"]
    assert "source_path='inversion'" in blocks["spdinv_paper+pnp"]
    assert all("SPDInvEditSampler" in b and "SaveImage" in b for b in blocks.values())


def test_a_resumed_run_refuses_other_settings_in_the_same_folder(tmp_path):
    from spdinv_pack.benchmarks.pie.run import check_settings

    methods = plan_methods(["spdinv"], ["p2p"])
    check_settings(tmp_path, methods, RunSettings(checkpoint="sd.safetensors", steps=50))
    check_settings(tmp_path, methods, RunSettings(checkpoint="sd.safetensors", steps=50))  # same: resumes
    with pytest.raises(ValueError, match=r"spdinv\+p2p holds edits made with other settings \(steps 50 -> 10, "
                                         r"protocol.invert.steps 50 -> 10\)"):
        check_settings(tmp_path, methods, RunSettings(checkpoint="sd.safetensors", steps=10))


# ---------------------------------------------------------------------------------------------- shards and servers


def pie_of(root, count: int):
    """A synthetic PIE folder with ``count`` items: the three fixture entries repeated under new ids, in blocks by
    editing type as PIE-Bench's file is ordered."""
    import json

    make_pie_folder(root)
    mapping = json.loads((root / "mapping_file.json").read_text())
    entries = list(mapping.values())
    mapping = {f"{n:012d}": entries[n * len(entries) // count] for n in range(count)}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def run_parsed(*args: str):
    return cli.parser().parse_args(["run", "--pie-dir", "p", "--checkpoint", "c", "--out", "o", *args])


def test_shards_take_every_item_exactly_once_in_balanced_round_robin_shares(tmp_path):
    from spdinv_pack.benchmarks.pie.run import Shard

    items = load_items(pie_of(tmp_path / "pie", 23))
    for count in (1, 2, 3, 4, 7, 23, 30):
        shares = [Shard(i, count).take(items) for i in range(count)]
        taken = [item.image_id for share in shares for item in share]
        assert sorted(taken) == [item.image_id for item in items]  # every item, none twice
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    by_type = [sorted(item.editing_type for item in Shard(i, 3).take(items)) for i in range(3)]
    assert all(len(set(types)) == 3 for types in by_type)  # interleaved: every share has every editing type


def test_shard_is_parsed_and_a_bad_one_is_refused_naming_it_and_the_fix(capsys):
    from spdinv_pack.benchmarks.pie.run import Shard

    assert run_parsed("--shard", "3/4").shard == Shard(3, 4)
    assert run_parsed().shard is None
    for bad, says in (("4/4", "from 0 to 3"), ("1/1", "from 0 to 0"), ("2", "expected i/n"), ("-1/2", "expected i/n"),
                      ("/4", "unset variable"), ("0/0", "at least 1"), ("a/b", "SLURM_ARRAY_TASK_ID")):
        with pytest.raises(SystemExit):
            run_parsed(f"--shard={bad}")
        err = capsys.readouterr().err
        assert f"argument --shard: {bad!r}" in err and says in err, (bad, err)
    with pytest.raises(SystemExit):
        run_parsed("--shard", "8/8")
    assert "SLURM_ARRAY_TASK_MIN" in capsys.readouterr().err  # an array numbered from 1: how to shift it


def test_servers_are_parsed_as_urls_and_a_bad_one_is_refused(capsys):
    assert run_parsed("--servers", "http://a:8188/", "b:8189").servers == ["http://a:8188", "http://b:8189"]
    for bad in ("http://a", "ftp://a:1", "http://a:8188/api", "a:port"):
        with pytest.raises(SystemExit):
            run_parsed("--servers", bad)
        assert f"argument --servers: {bad!r}: expected a running ComfyUI's address" in capsys.readouterr().err


def test_write_once_keeps_the_first_file_and_leaves_no_partial_file(tmp_path):
    from spdinv_pack.benchmarks.pie.run import write_once

    target = tmp_path / "a.png"
    assert write_once(target, b"first") is True
    assert write_once(target, b"second") is False
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_workers_starting_at_once_agree_on_one_settings_record(tmp_path):
    import json
    import threading

    from spdinv_pack.benchmarks.pie.run import check_settings

    methods = plan_methods(["ddim"], ["p2p"])

    def worker(out, barrier, accepted: list[int], steps: int) -> None:
        barrier.wait()
        try:
            check_settings(out, methods, RunSettings(checkpoint="x", steps=steps))
            accepted.append(steps)
        except ValueError:
            pass

    for attempt in range(15):
        out, barrier, accepted = tmp_path / str(attempt), threading.Barrier(8), []
        threads = [threading.Thread(target=worker, args=(out, barrier, accepted, 10 + n % 2)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recorded = json.loads((out / "ddim+p2p" / "settings.json").read_text())["steps"]
        assert accepted == [recorded] * 4  # the four workers with the recorded settings go on, the others stop


def fake_run(pie_dir, out, servers, *, shard=None, in_flight=2, methods=(("ddim",), ("p2p",)), log=None, **kwargs):
    from spdinv_pack.benchmarks.pie.run import run_edits
    from spdinv_pack.benchmarks.pie.servers import ComfyClient

    clients = [ComfyClient(s.url, label=s.name, poll=0.02, **kwargs) for s in servers]
    return run_edits(clients, load_items(pie_dir), plan_methods(*methods), RunSettings(checkpoint="x.safetensors"),
                     out, log=log if log is not None else (lambda line: None), shard=shard, in_flight=in_flight)


def made(out):
    """{(method, image_id): the fake server named in the file}."""
    return {(p.parent.name, p.stem): p.read_bytes().decode().split(":")[0] for p in sorted(out.glob("*/*.png"))}


def test_a_server_that_dies_mid_run_has_its_edits_made_on_the_others_once_each(tmp_path):
    import json

    from spdinv_pack.benchmarks.pie.run import server_split
    from spdinv_pack.tests.fake_comfy import FakeComfy

    pie_dir = pie_of(tmp_path / "pie", 12)
    out = tmp_path / "out"
    lines: list[str] = []
    with FakeComfy("a", die_after=3) as a, FakeComfy("b") as b:
        report = fake_run(pie_dir, out, [a, b], methods=(("ddim",), ("masactrl", "pnp")), log=lines.append)
    expected = {(m, f"{n:012d}") for m in ("ddim+masactrl", "ddim+pnp") for n in range(12)}
    files = made(out)
    assert set(files) == expected and report.done == 24 and not report.failed
    assert len(a.finished) == 2 and report.retried >= 1  # a finished two, then died holding its next two
    assert sum(v == "a" for v in files.values()) == 2 and report.by_server == {"a": 2, "b": 22}
    assert any("server a is gone" in line and "servers left: b" in line for line in lines)
    records = [json.loads(line) for p in (out / "runs").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted((r["method"], r["image_id"]) for r in records) == sorted(expected)  # one record per edit
    assert {(r["method"], r["image_id"]): r["server"] for r in records} == files  # the maker is the one recorded
    assert server_split(out) == {"a": 2, "b": 22}
    assert not list(out.rglob("*.partial"))


def test_every_server_gone_stops_the_run_naming_them_and_keeps_finished_edits(tmp_path):
    from spdinv_pack.benchmarks.pie.servers import AllServersGone
    from spdinv_pack.tests.fake_comfy import FakeComfy

    pie_dir = pie_of(tmp_path / "pie", 6)
    out = tmp_path / "out"
    with FakeComfy("a", die_after=2) as a, FakeComfy("b", die_after=3) as b:
        with pytest.raises(AllServersGone, match=r"all 2 servers are gone with \d+ edits not made \(.*a: .*b: "):
            fake_run(pie_dir, out, [a, b], methods=(("ddim",), ("masactrl",)))
    assert len(made(out)) == len(a.finished) + len(b.finished) == 3


def test_each_server_keeps_in_flight_prompts_queued_and_gets_each_photo_once(tmp_path):
    from spdinv_pack.tests.fake_comfy import FakeComfy

    pie_dir = pie_of(tmp_path / "pie", 6)
    out = tmp_path / "out"
    with FakeComfy("a", seconds=0.2) as a, FakeComfy("b", seconds=0.2) as b:
        queued = {a.name: 0, b.name: 0}

        def watch(fake) -> None:
            while not fake.dead.is_set():
                with fake._lock:
                    queued[fake.name] = max(queued[fake.name], len(fake.pending) + (fake.running is not None))
                time.sleep(0.01)

        for fake in (a, b):
            threading.Thread(target=watch, args=(fake,), daemon=True).start()
        report = fake_run(pie_dir, out, [a, b], methods=(("ddim", "spdinv"), ("masactrl",)), in_flight=2)
    assert report.done == 12 and queued == {"a": 2, "b": 2}  # two in flight on each, never more
    for fake in (a, b):  # three photos in the set: each uploaded once to each server that used it
        photos = {p["prompt"][n]["inputs"]["image"] for p in fake.prompts for n in p["prompt"]
                  if p["prompt"][n]["class_type"] == "LoadImage"}
        assert set(fake.uploads) == photos and fake.upload_count == len(photos)
        assert all(name.startswith("pie-bench/") for name in photos)


def test_servers_lacking_nodes_or_the_checkpoint_or_fp32_are_refused_by_name(tmp_path):
    from spdinv_pack.tests.fake_comfy import NODES, FakeComfy
    from spdinv_pack.tools.comfy_server import ComfyServerError

    pie_dir = pie_of(tmp_path / "pie", 2)
    cases = (({"nodes": tuple(n for n in NODES if n != "SPDInvInvert")}, r"lacks the nodes SPDInvInvert"),
             ({"checkpoints": ("y.safetensors",)}, r"does not list the checkpoint 'x.safetensors'.*y.safetensors"),
             ({"argv": ("main.py",)}, r"started without --force-fp32"),
             ({"defaults": {"SPDInvInvert": {"delta": 1.0}}}, r"fill SPDInvInvert differently \(delta None vs 1.0"))
    for kwargs, says in cases:
        with FakeComfy("good") as good, FakeComfy("bad", **kwargs) as bad:
            with pytest.raises(ComfyServerError, match=r"server.* bad.*" + says):
                fake_run(pie_dir, tmp_path / "out", [good, bad])
            assert not good.prompts and not bad.prompts
    with FakeComfy("gone") as gone:
        gone.die()
        time.sleep(0.6)
        with pytest.raises(ComfyServerError, match="server gone does not answer"):
            fake_run(pie_dir, tmp_path / "out", [gone])


def at_once(run, fakes) -> list:
    """``run(i, fake)`` for every fake server, each in its own thread at the same time (workers sharing a folder);
    their results in order."""
    results = [None] * len(fakes)

    def worker(i: int, fake) -> None:
        results[i] = run(i, fake)

    threads = [threading.Thread(target=worker, args=(i, f)) for i, f in enumerate(fakes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_shards_share_one_folder_take_only_their_items_and_resume_them(tmp_path):
    from spdinv_pack.benchmarks.pie.run import Shard, server_split
    from spdinv_pack.tests.fake_comfy import FakeComfy

    pie_dir = pie_of(tmp_path / "pie", 7)
    out = tmp_path / "out"
    with FakeComfy("a") as a, FakeComfy("b") as b:
        reports = at_once(lambda i, fake: fake_run(pie_dir, out, [fake], shard=Shard(i, 2),
                                                   methods=(("ddim", "spdinv"), ("p2p",))), (a, b))
        files = made(out)
        assert set(files) == {(m, f"{n:012d}") for m in ("ddim+p2p", "spdinv+p2p") for n in range(7)}
        by_a = {image_id for (_, image_id), maker in files.items() if maker == "a"}
        assert by_a == {f"{n:012d}" for n in (0, 2, 4, 6)}  # shard 0 ran on a: the even items
        assert server_split(out) == {"a": 8, "b": 6} and reports[0].done + reports[1].done == 14
        (out / "ddim+p2p" / "000000000004.png").unlink()  # shard 0's
        (out / "ddim+p2p" / "000000000001.png").unlink()  # shard 1's: missing, but not shard 0's to make
        again = fake_run(pie_dir, out, [a], shard=Shard(0, 2), methods=(("ddim", "spdinv"), ("p2p",)))
    assert again.done == 1 and a.finished[-1].endswith("ddim+p2p/000000000004")
    assert not (out / "ddim+p2p" / "000000000001.png").exists()


def test_workers_on_the_same_items_never_replace_each_others_edits(tmp_path):
    from spdinv_pack.tests.fake_comfy import FakeComfy

    pie_dir = pie_of(tmp_path / "pie", 6)
    out = tmp_path / "out"
    with FakeComfy("a") as a, FakeComfy("b") as b:
        reports = at_once(lambda i, fake: fake_run(pie_dir, out, [fake], in_flight=1,
                                                   methods=(("ddim",), ("masactrl",))), (a, b))
    files = made(out)
    assert len(files) == 6 and reports[0].done + reports[1].done == 6  # each edit saved by one worker only
    assert reports[0].made_elsewhere + reports[1].made_elsewhere == 6
    assert server_split_matches(out, files)


def server_split_matches(out, files) -> bool:
    """Whether the runs' records name, for every edit, the server whose bytes are in the file."""
    import json

    records = {(r["method"], r["image_id"]): r["server"] for p in (out / "runs").glob("*.jsonl")
               for r in map(json.loads, p.read_text().splitlines())}
    return records == files


def test_an_edit_another_worker_saved_after_the_run_started_is_not_made_again(tmp_path):
    from spdinv_pack.tests.fake_comfy import FakeComfy

    pie_dir = pie_of(tmp_path / "pie", 6)
    out = tmp_path / "out"
    last = out / "ddim+masactrl" / "000000000005.png"
    with FakeComfy("a", seconds=0.2) as a:
        result = []
        worker = threading.Thread(target=lambda: result.append(
            fake_run(pie_dir, out, [a], in_flight=1, methods=(("ddim",), ("masactrl",)))))
        worker.start()
        while not a.prompts:  # the run has planned its six edits and started the first
            time.sleep(0.01)
        last.parent.mkdir(exist_ok=True)
        last.write_bytes(b"other:worker")
        worker.join()
    assert result[0].done == 5 and result[0].made_elsewhere == 1
    assert len(a.prompts) == 5 and not any(p.endswith("000000000005") for p in a.finished)
    assert last.read_bytes() == b"other:worker"


def test_comfyui_args_are_recorded_and_refused_with_running_servers(pie, tmp_path, capsys):
    args = run_parsed("--comfyui-args=--cuda-device 1")
    assert cli._settings(args).comfyui_args == "--cuda-device 1" and cli._settings(run_parsed()).comfyui_args is None
    code = cli.main(["run", "--pie-dir", str(pie), "--checkpoint", "x.safetensors", "--out", str(tmp_path),
                     "--servers", "http://127.0.0.1:1", "--comfyui-args=--bf16-unet"])
    assert code == 2 and "--comfyui-args is for the ComfyUI a run starts" in capsys.readouterr().err
