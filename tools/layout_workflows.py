"""Lay out the shipped workflows in ComfyUI's real frontend and save them the way the frontend saves them.

    COMFYUI_PATH=~/ComfyUI python -m tools.layout_workflows [--chromium /usr/bin/chromium] [STEM ...]

For each ``workflows/<stem>.json`` (all by default; a new workflow may be drafted as an API-format graph with
titles in ``_meta``, which the frontend builds first), in a ``main.py --cpu`` server with the pack and the
frontend in headless Chromium (Debian's ``chromium`` driven by the ``playwright`` package):

1. nodes that kept a default title get one that says what they hold ("Decode edit", "Save attention maps");
2. a Note with the three things to change is added (once), and loaders of the model files in ``MODEL_FILES``
   get the frontend's download metadata;
3. nodes are placed in columns by link depth, at the size the frontend computes for their widgets (images
   get room to show), with gaps, and the view is fitted to a 1920×1080 screen below the menus;
4. the graph is saved as the frontend serialises it, its API twin ``workflows/api/<stem>.json`` is what
   the frontend would queue (``graphToPrompt``), and a screenshot becomes the template thumbnail
   ``workflows/<stem>.jpg``.

A developer tool: the nodes never import it. ``tests/host/test_frontend.py`` checks the result.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .comfy_server import ComfyServer

ROOT = Path(__file__).resolve().parents[1]
SCREEN = (1920, 1080)
MARGINS = {"left": 70, "top": 110, "right": 30, "bottom": 50}
"""Screen space kept free for the frontend's side bar, menus and canvas controls."""
NOTICES = (400, 240)
"""Width and bottom edge (screen px) of the top-right corner where the frontend shows its notices (missing
models...): columns reaching into it start below it."""
MIN_SCALE = 0.6
"""Below this zoom the frontend draws nodes without their text (LiteGraph's low-quality threshold)."""
GAP = (40, 30)
"""Horizontal gap between columns and vertical gap between nodes, in graph units."""
MAX_COLUMN = (SCREEN[1] - 160) / 0.7
"""Tallest column (graph units) before it wraps into a second one: the screen's height at zoom 0.7."""
TITLE = 30
"""LiteGraph's title bar height: node positions are the body's top-left corner."""
THUMBNAIL_WIDTH = 640

PHOTO = "1. Photo: load your photo (the example is a CC0 photo of a cat).\n"
SOURCE = "2. Source prompt: describe the photo as it is.\n"
STEPS = ("3. Steps (both inversions): one step count, linked to the steps input of both inversions, which "
         "must agree.\n")
P2P = ("Edit a photo with SPDInv + Prompt-to-Prompt\n\n" + PHOTO + SOURCE + "3. Prompt-to-Prompt, target_text: the "
       "same sentence with the change (and the changed word in blend/reweight).\n\nThen Run. Saved: the edit, "
       "reconstruction | edit, attention maps.")
MASACTRL = ("Edit a photo with SPDInv + MasaCtrl (pose, action, layout changes)\n\n" + PHOTO + SOURCE + "3. Target "
            "prompt: the same subject doing something else.\n\nThen Run. Saved: the edit, reconstruction | edit.")
SDXL_VAE = ("\n\nSDXL's own VAE gives NaN (a black image) in fp16: on a GPU that runs the VAE in fp16, load "
            "sdxl_vae.safetensors from madebyollin/sdxl-vae-fp16-fix with Load VAE into the Encode and Decode nodes, "
            "or start ComfyUI with --fp32-vae.")
NOTES = {
    "Wan video edit with Prompt to Prompt": "Edit a video clip with Wan 2.1: SPDInv + Prompt-to-Prompt\n\nModels: "
                                            "models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors; models/"
                                            "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors; models/vae/"
                                            "wan_2.1_vae.safetensors.\n\n1. Clip: load your clip; First frames: "
                                            "how many to edit, 1 + 4k.\n2. Prompt-to-Prompt, source_text: describe "
                                            "the clip as it is.\n3. target_text: the same sentence with the change "
                                            "(and the changed word in blend/reweight).\n\nThe target follows the "
                                            "source's word maps over every frame; local blend keeps the clip outside "
                                            "the words' region. Saved: the edited and the reconstructed clips, the "
                                            "attention maps (frames top to bottom), the residual plot.",
    "paper procedure": "The SPDInv paper's exact procedure (ECCV 2024, official code's defaults)\n\nInversion: AdamW "
                       "through the UNet, K 25, lr 1e-3, delta 5e-6 alone (rel_tol 0), 50 steps on the official "
                       "grid (980 ... 0). P2P: refine, reweight x2, local blend from the edited maps, ProxEdit "
                       "and inversion guidance, CFG 7.5. Slow: AdamW backpropagates through the UNet at "
                       "every iteration.\n\n"
                       + PHOTO + SOURCE + "3. target_text: the change.",
    "SDXL edit with Prompt to Prompt": P2P + SDXL_VAE,
    "SDXL edit with MasaCtrl": MASACTRL + SDXL_VAE,
    "Prompt to Prompt": P2P,
    "MasaCtrl": MASACTRL,
    "Plug and Play": "Edit a photo with SPDInv + Plug-and-Play (style, material, appearance)\n\n" + PHOTO + SOURCE
                     + "3. Target prompt: what it should look like.\n\nThen Run. Saved: the edit, photo | edit. "
                       "Color fix: Ctrl+B.",
    "ELITE": "Put an object from another image into a photo (SPDInv + ELITE)\n\n1. Photo: your photo; Reference "
             "image: the object that * stands for (the examples: CC0 photos of a cat and a coffee cup).\n" + SOURCE
             + "3. Target prompt: the source prompt with the subject replaced by *, e.g. 'a close-up photo of a *'.\n\n"
             "Models: models/elite/global_mapper.pt (ELITE-library/ELITE); models/clip_vision/"
             "clip-vit-large-patch14.safetensors (openai/clip-vit-large-patch14's model.safetensors, renamed).",
    "SD3 reconstruction": "Invert a photo with a flow model (SD3.x) and rebuild it: SPDInv vs plain flow "
                          "inversion\n\n" + PHOTO + SOURCE + STEPS + "\nThe checkpoint: an SD3.x file with its text "
                          "encoders (or Flux through Load Diffusion Model). Saved: plain | SPDInv reconstruction, the "
                          "residual plot.",
    "MM-DiT": "Edit a photo with a flow model (SD3.x, Flux): SPDInv + MM-DiT mutual attention\n\n" + PHOTO + SOURCE
              + "3. Target prompt: the edit.\n\nThen Run. Saved: the edit, reconstruction | edit. Flux: CFG 1 "
                "in the edit sampler and the guidance from FluxGuidance.",
    "Flux.1 edit": "Edit a photo with Flux.1-dev: SPDInv + MM-DiT mutual attention\n\nModels: models/diffusion_models/"
                   "flux1-dev.safetensors; models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors; "
                   "models/vae/ae.safetensors.\n\n" + PHOTO + SOURCE + "3. Target prompt: the edit.\n\n"
                   "Guidance (FluxGuidance): 1 on the source prompt, which the inversion and the edit's source "
                   "branch use, 2 on the target, the edit's (RF-Solver-Edit and FireFlow invert Flux at 1 and edit "
                   "at 2); each branch keeps its own. Edit CFG 1 (Flux.1-dev is guidance-distilled). 28 steps "
                   "(FlowEdit's on Flux). Saved: the edit, reconstruction | edit, the residual plot.",
    "Flux.2 edit": "Edit a photo with Flux.2 [klein] 4B: SPDInv + MM-DiT mutual attention\n\nModels: "
                   "models/diffusion_models/flux-2-klein-base-4b.safetensors; models/text_encoders/"
                   "qwen_3_4b.safetensors; models/vae/flux2-vae.safetensors.\n\n" + PHOTO + SOURCE
                   + "3. Target prompt: the edit.\n\nThe base (undistilled) Klein with true CFG 5 against an empty "
                     "negative and 20 steps, as ComfyUI's Klein template samples it; inversion at CFG 1. Saved: the "
                     "edit, reconstruction | edit, the residual plot.",
    "Qwen-Image edit": "Edit a photo with Qwen-Image: SPDInv + MM-DiT mutual attention\n\nModels: models/"
                       "diffusion_models/qwen_image_fp8_e4m3fn.safetensors; models/text_encoders/"
                       "qwen_2.5_vl_7b_fp8_scaled.safetensors; models/vae/qwen_image_vae.safetensors.\n\n" + PHOTO
                       + SOURCE + "3. Target prompt: the edit.\n\nTrue CFG 4 against an empty negative and 50 "
                         "steps (Qwen-Image's reference settings), shift 3.1 as ComfyUI's template; inversion at "
                         "CFG 1. Fewer steps run faster. Saved: the edit, reconstruction | edit, the residual plot.",
    "Kontext instruction": "Edit a photo with FLUX.1 Kontext [dev] without drift: SPDInv + mutual attention + "
                           "preservation\n\nModels: models/diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors; "
                           "models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors; models/vae/"
                           "ae.safetensors.\n\n" + PHOTO + "2. Instruction: the edit, as you would tell Kontext. "
                           "(Empty instruction: leave empty.)\n\nThe photo is inverted under Kontext (the photo as "
                           "its reference, guidance 2.5), then edited: outside the edit region the result keeps the "
                           "photo exactly (no pixel shift). The region is found where the instruction changes the "
                           "prediction (see 'Preview edit region'); connect a mask to 'Preserve outside edit' to "
                           "choose it. Global edits (style, lighting): remove the preservation node. Saved: the edit, "
                           "reconstruction | edit.",
    "Qwen-Image-Edit instruction": "Edit a photo with Qwen-Image-Edit 2509 without drift: SPDInv + mutual attention + "
                                   "preservation\n\nModels: models/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn."
                                   "safetensors; models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors; models/"
                                   "vae/qwen_image_vae.safetensors.\n\n" + PHOTO + "2. Instruction: the edit. (Empty "
                                   "instruction: leave empty.)\n\nThe photo is inverted under Qwen-Image-Edit (the "
                                   "photo as its reference), then edited at CFG 2.5, 20 steps, shift 3 (ComfyUI's "
                                   "template): outside the edit region the result keeps the photo exactly (no pixel "
                                   "shift). The region is found where the instruction changes the prediction (see "
                                   "'Preview edit region'); connect a mask to 'Preserve outside edit' to choose it. "
                                   "Global edits: remove the preservation node. Saved: the edit, reconstruction | "
                                   "edit.",
    "Wan video": "Edit a video clip with Wan 2.1: SPDInv + mutual attention\n\nModels: models/diffusion_models/"
                 "wan2.1_t2v_1.3B_fp16.safetensors; models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors; "
                 "models/vae/wan_2.1_vae.safetensors.\n\n1. Clip: load your clip (the example pans over a CC0 photo "
                 "of a cat); First frames: how many to edit, 1 + 4k (Wan's own length is 81).\n2. Source prompt: "
                 "describe the clip as it is.\n3. Target prompt: the edit.\n\nCFG 5 against the source prompt, 30 "
                 "steps, shift 8; inversion at CFG 1. A mask: SPDInv Preserve Outside Edit into the Edit. Saved: "
                 "the edited and the reconstructed clips, the residual plot.",
    "reconstruction": "Invert a photo and rebuild it: SPDInv vs plain DDIM inversion\n\n" + PHOTO + SOURCE + STEPS
                      + "\nThen Run. Saved: both reconstructions and the residual plot.",
}

MODEL_FILES = {
    "flux1-dev.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/"),
    "clip_l.safetensors": ("text_encoders", "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/"),
    "t5xxl_fp16.safetensors": ("text_encoders",
                               "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/"),
    "ae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/"
                              "vae/"),
    "flux-2-klein-base-4b.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/flux2-klein/resolve/"
                                                             "main/split_files/diffusion_models/"),
    "qwen_3_4b.safetensors": ("text_encoders", "https://huggingface.co/Comfy-Org/flux2-klein/resolve/main/"
                                               "split_files/text_encoders/"),
    "flux2-vae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/vae/"),
    "qwen_image_fp8_e4m3fn.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/"
                                                              "resolve/main/split_files/diffusion_models/"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": ("text_encoders", "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/"
                                                               "resolve/main/split_files/text_encoders/"),
    "qwen_image_vae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/"
                                          "split_files/vae/"),
    "flux1-dev-kontext_fp8_scaled.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/"
                                                                     "flux1-kontext-dev_ComfyUI/resolve/main/"
                                                                     "split_files/diffusion_models/"),
    "qwen_image_edit_2509_fp8_e4m3fn.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/"
                                                                        "Qwen-Image-Edit_ComfyUI/resolve/main/"
                                                                        "split_files/diffusion_models/"),
    "v1-5-pruned-emaonly.safetensors": ("checkpoints", "https://huggingface.co/Comfy-Org/"
                                                       "stable-diffusion-v1-5-archive/resolve/main/"),
    "sd_xl_base_1.0.safetensors": ("checkpoints", "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/"
                                                  "resolve/main/"),
    "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors": ("checkpoints", "https://huggingface.co/Comfy-Org/"
                                                                          "stable-diffusion-3.5-fp8/resolve/main/"),
    "clip-vit-large-patch14.safetensors": ("clip_vision", "https://huggingface.co/openai/clip-vit-large-patch14/"
                                                          "resolve/main/model.safetensors"),
    "global_mapper.pt": ("elite", "https://huggingface.co/ELITE-library/ELITE/resolve/main/checkpoints/"),
    "wan2.1_t2v_1.3B_fp16.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/"
                                                             "Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/"
                                                             "diffusion_models/"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", "https://huggingface.co/Comfy-Org/"
                                                                "Wan_2.1_ComfyUI_repackaged/resolve/main/"
                                                                "split_files/text_encoders/"),
    "wan_2.1_vae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/"
                                       "split_files/vae/"),
}
"""Model file -> (ComfyUI models folder, download URL): a folder URL (ending in ``/``) that holds the file under
its name, or the file's own URL where it is published under another name (CLIP ViT-L/14's ``model.safetensors``).
The flow models as ComfyUI's own templates name and link them (comfyui-workflow-templates:
flux_dev_full_text_to_image, image_flux2_klein_text_to_image, image_qwen_image, text_to_video_wan; the Kontext and
Qwen-Image-Edit files from Comfy-Org's flux1-kontext-dev_ComfyUI and Qwen-Image-Edit_ComfyUI); the SD checkpoints
from Comfy-Org's and Stability AI's repositories; ELITE's global mapper from its authors' release
(ELITE-library/ELITE)."""
LOADERS = ("UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "CheckpointLoaderSimple", "CLIPVisionLoader",
           "ELITEMapperLoader")


def model_url(name: str) -> str:
    """Download URL of a :data:`MODEL_FILES` file."""
    url = MODEL_FILES[name][1]
    return url + name if url.endswith("/") else url


def link_model_files(workflow: dict) -> None:
    """Put the frontend's model metadata (``properties.models``: name, url, directory) on loader nodes whose
    widgets name a file of :data:`MODEL_FILES`, so the frontend offers the download when the file is missing."""
    for node in workflow["nodes"]:
        if node["type"] not in LOADERS:
            continue
        names = [v for v in node.get("widgets_values") or [] if isinstance(v, str) and v in MODEL_FILES]
        if names:
            node.setdefault("properties", {})["models"] = [
                {"name": n, "url": model_url(n), "directory": MODEL_FILES[n][0]} for n in names]


def note_text(stem: str) -> str:
    for key, text in NOTES.items():
        if key in stem:
            return text
    raise KeyError(f"no Note text for {stem}")


def save_title(prefix: str) -> str:
    """Title of a SaveImage node from its filename prefix."""
    for marker, title in (("_vs_edit", "Save {} | edit"), ("attention_maps", "Save attention maps"),
                          ("residual_plot", "Save residual plot"), ("ddim_reconstruction", "Save DDIM reconstruction"),
                          ("spdinv_reconstruction", "Save SPDInv reconstruction")):
        if marker in prefix:
            return title.format("photo" if "photo_vs" in prefix else "reconstruction")
    return "Save edit"


def name_default_titles(workflow: dict, object_info: dict) -> None:
    """Give nodes without a title one that tells them apart (two VAE Decodes, three Save Images)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    origin = {link[0]: (link[1], link[2]) for link in workflow["links"]}
    for node in workflow["nodes"]:
        if node.get("title"):
            continue
        kind = node["type"]
        if kind == "SaveImage":
            node["title"] = save_title(node["widgets_values"][0])
        elif kind == "VAEEncode":
            node["title"] = "Encode photo"
        elif kind == "VAEDecode":
            src, slot = origin[node["inputs"][0]["link"]]
            outputs = object_info[nodes[src]["type"]]["output_name"]
            what = {"edited": "edit"}.get(outputs[slot], outputs[slot])
            same_slot = [n for n in workflow["nodes"] if n["type"] == "VAEDecode" and n is not node
                         and origin[n["inputs"][0]["link"]][1] == slot]
            node["title"] = f"Decode {nodes[src].get('title', what)}" if same_slot else f"Decode {what}"
        elif kind == "CheckpointLoaderSimple":
            node["title"] = "Checkpoint"


def linked(workflow: dict) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """``(inputs, consumers)``: the nodes each node reads from, and the nodes that read from it."""
    inputs, consumers = defaultdict(list), defaultdict(list)
    for link in workflow["links"]:
        inputs[link[3]].append(link[1])
        consumers[link[1]].append(link[3])
    return inputs, consumers


def columns(workflow: dict) -> dict[int, int]:
    """Column of each node: the longest chain of links leading to it; a node without inputs (loader, prompt)
    sits just before the first node it feeds."""
    inputs, consumers = linked(workflow)
    depth: dict[int, int] = {}

    def of(node: int) -> int:
        if node not in depth:
            depth[node] = 1 + max((of(src) for src in inputs[node]), default=-1)
        return depth[node]

    column = {n["id"]: of(n["id"]) for n in workflow["nodes"]}
    for node in column:
        if not inputs[node] and consumers[node]:
            column[node] = max(0, min(column[c] for c in consumers[node]) - 1)
    return column


def place(workflow: dict, sizes: dict[int, list[float]], note_id: int,
          drop: dict[int, float] | None = None) -> tuple[dict[int, list[float]], dict[int, int]]:
    """Positions (body top-left) in columns, each column ordered by where its inputs sit and started
    ``drop[column]`` lower; also each node's column."""
    column = columns(workflow)
    column[note_id] = 0
    inputs, _ = linked(workflow)
    by_column: dict[int, list[int]] = defaultdict(list)
    for node, c in column.items():
        by_column[c].append(node)
    positions: dict[int, list[float]] = {}
    x = 0.0
    for c in sorted(by_column):
        def rank(node: int) -> tuple:
            ys = [positions[s][1] for s in inputs[node] if s in positions]
            return (node != note_id, sum(ys) / len(ys) if ys else 0.0, node)

        top = y = (drop or {}).get(c, 0.0)
        width = 0.0
        for node in sorted(by_column[c], key=rank):
            if y > top and y + TITLE + sizes[node][1] > top + MAX_COLUMN:
                x, y, width = x + width + GAP[0], top, 0.0
            positions[node] = [x, y + TITLE]
            y += TITLE + sizes[node][1] + GAP[1]
            width = max(width, sizes[node][0])
        x += width + GAP[0]
    return positions, column


def fitted_view(positions: dict[int, list[float]], sizes: dict[int, list[float]]) -> dict[str, Any]:
    """``extra.ds`` that shows every node (titles included) inside the screen's free area."""
    left = min(p[0] for p in positions.values())
    top = min(p[1] - TITLE for p in positions.values())
    right = max(p[0] + sizes[n][0] for n, p in positions.items())
    bottom = max(p[1] + sizes[n][1] for n, p in positions.items())
    width = SCREEN[0] - MARGINS["left"] - MARGINS["right"]
    height = SCREEN[1] - MARGINS["top"] - MARGINS["bottom"]
    scale = min(1.0, width / (right - left), height / (bottom - top))
    return {"scale": scale, "offset": [MARGINS["left"] / scale - left, MARGINS["top"] / scale - top]}


PREPARE = """([note]) => {
    const graph = window.app.graph;
    let target = graph._nodes.find(n => n.type === 'Note' && n.title === 'Start here');
    if (!target) {
        target = LiteGraph.createNode('Note');
        target.title = 'Start here';
        graph.add(target);
    }
    target.widgets[0].value = note;
    target.size = [380, 230];
    const sizes = {};
    for (const n of graph._nodes) {
        const need = n.computeSize();
        const shows = ['SaveImage', 'PreviewImage', 'LoadImage', 'LoadVideo', 'SaveVideo'].includes(n.type);
        const wide = shows ? Math.min(need[0], 560) : need[0];  // a video preview sizes itself to the clip
        sizes[n.id] = n === target ? [360, 220] : [Math.max(wide, shows ? 280 : 220),
                                                    Math.max(need[1], shows ? 280 : 0)];
    }
    return {note: target.id, sizes};
}"""

APPLY = """async ([positions, sizes, ds]) => {
    const app = window.app, graph = app.graph;
    for (const n of graph._nodes) {
        n.pos = positions[n.id];
        n.size = sizes[n.id];
    }
    app.canvas.ds.scale = ds.scale;
    app.canvas.ds.offset = ds.offset;
    graph.extra = {...(graph.extra || {}), ds: {scale: ds.scale, offset: ds.offset}};
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    return {workflow: graph.serialize(), prompt: (await app.graphToPrompt()).output};
}"""


def without_nulls(value: Any) -> Any:
    """The serialised graph without ``null`` entries (the frontends fill them in; older ones refuse a file
    that has them), except an input's ``link`` and an output's ``links``, where ``null`` means unconnected."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None or k in ("link", "links")}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def lay_out(page: Any, path: Path, object_info: dict) -> None:
    workflow = json.loads(path.read_text())
    name_default_titles(workflow, object_info)
    link_model_files(workflow)
    page.evaluate("async ([w, name]) => { await window.app.loadGraphData(w, true, true, name); }",
                  [workflow, path.stem])
    page.wait_for_function(f"window.app.graph._nodes.length >= {len(workflow['nodes'])}", timeout=60_000)
    prepared = page.evaluate(PREPARE, [note_text(path.stem)])
    sizes = {int(k): v for k, v in prepared["sizes"].items()}
    prepared["note"] = int(prepared["note"])
    workflow["nodes"].append({"id": prepared["note"], "type": "Note"})
    positions, column = place(workflow, sizes, prepared["note"])
    ds = fitted_view(positions, sizes)
    for _ in range(2):  # move the columns under the frontend's notices down, then fit again
        corner = (SCREEN[0] - NOTICES[0]) / ds["scale"] - ds["offset"][0]
        below = (NOTICES[1] - MARGINS["top"]) / ds["scale"]
        drop = {column[n]: below for n, p in positions.items() if p[0] + sizes[n][0] > corner}
        positions, column = place(workflow, sizes, prepared["note"], drop)
        ds = fitted_view(positions, sizes)
    if ds["scale"] < MIN_SCALE:
        print(f"warning: {path.name} fits the screen only at zoom {ds['scale']:.2f}: the frontend draws it "
              "without text until the user zooms in")
    saved = page.evaluate(APPLY, [{str(k): v for k, v in positions.items()}, {str(k): v for k, v in sizes.items()},
                                  ds])
    time.sleep(1.0)
    page.keyboard.press("Escape")
    shot = page.screenshot()
    path.write_text(json.dumps(without_nulls(saved["workflow"]), indent=1, ensure_ascii=False) + "\n")
    twin = ROOT / "workflows" / "api" / path.name
    twin.write_text(json.dumps(saved["prompt"], indent=1, ensure_ascii=False) + "\n")
    from PIL import Image

    with Image.open(io.BytesIO(shot)) as image:
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
        thumb.save(path.with_suffix(".jpg"), quality=85)
    print(f"{path.name}: {len(saved['workflow']['nodes'])} nodes, view scale {ds['scale']:.2f}")


def from_api_draft(page: Any, path: Path) -> None:
    """Turn a new workflow's first draft, an API-format graph (titles in ``_meta``), into the UI format: the
    frontend builds the graph and serialises it."""
    draft = json.loads(path.read_text())
    page.evaluate("async ([w, name]) => { await window.app.loadApiJson(w, name); }", [draft, path.stem])
    page.wait_for_function(f"window.app.graph._nodes.length >= {len(draft)}", timeout=60_000)
    workflow = without_nulls(page.evaluate("() => window.app.graph.serialize()"))
    path.write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")


def model_placeholders(folder: Path) -> dict[str, list[Path]]:
    """Empty files named as :data:`MODEL_FILES` in ``folder``, by ComfyUI models folder: the layout server lists
    them, so the frontend finds the models the workflows name and the thumbnails show no missing-model notice."""
    folders: dict[str, list[Path]] = {}
    for name, (kind, _) in MODEL_FILES.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        (folder / kind / name).touch()
        folders[kind] = [folder / kind]
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stems", nargs="*", help="workflow names without .json (default: all)")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="Chromium executable")
    args = parser.parse_args(argv)
    if not args.comfyui or not args.chromium:
        parser.error("needs a ComfyUI checkout (--comfyui or $COMFYUI_PATH) and Chromium (--chromium)")
    from playwright.sync_api import sync_playwright

    paths = [ROOT / "workflows" / f"{s}.json" for s in args.stems] or sorted((ROOT / "workflows").glob("*.json"))
    placeholders = tempfile.TemporaryDirectory(prefix="spdinv-layout-models-")
    folders = model_placeholders(Path(placeholders.name))
    with placeholders, ComfyServer(args.comfyui, extra_folders=folders) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        object_info = server.object_info()
        def fresh_page() -> Any:  # a fresh page each time: one tab in the thumbnail, named after the workflow
            page = browser.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
            page.goto(server.url)
            page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=180_000)
            time.sleep(2)
            page.keyboard.press("Escape")
            return page

        for path in paths:
            if "nodes" not in json.loads(path.read_text()):
                page = fresh_page()
                from_api_draft(page, path)
                page.close()
            page = fresh_page()
            lay_out(page, path, object_info)
            page.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
