"""Every shipped workflow runs in a real ComfyUI server (``main.py --cpu``) with the pack loaded.

Each UI-format workflow in ``workflows/`` has an API-format twin in ``workflows/api/`` (the frontend's own
``graphToPrompt`` output, checked in ``test_frontend.py``); comfy-cli's conversion of the UI file with the
server's ``/object_info`` must equal it too, and the twin must execute on the example photo the pack puts
into the input folder. Runs are kept small (64x64 image, few steps) so the suite stays quick on CPU. Workflows
that load a diffusion model, text encoders and a VAE separately (Flux.1, Flux.2, Qwen-Image, Wan) run on the family's
random diffusion model and VAE, with a test-only stand-in for the text encoders (``text_encoder_stand_in/``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host import factory
from spdinv_pack.tools.comfy_server import ExecutionError, PromptValidationError
from spdinv_pack.tools.run_workflow import build_prompt
from spdinv_pack.tools.workflow_api import WORKFLOWS as SHIPPED
from spdinv_pack.tools.workflow_api import api_twin, shipped_workflows, to_api

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_INPUTS = ("spdinv_example_cat.png", "spdinv_example_cup.png", "spdinv_example_clip.mp4")
WORKFLOWS = shipped_workflows()
SMALL = {"Resize.width": 64, "Resize.height": 64}
P2P = SHIPPED / "SPDInv edit with Prompt to Prompt.json"
MASACTRL = SHIPPED / "SPDInv edit with MasaCtrl.json"
PNP = SHIPPED / "SPDInv edit with Plug and Play.json"
ELITE = SHIPPED / "SPDInv edit with ELITE.json"
RECONSTRUCTION = SHIPPED / "SPDInv reconstruction vs DDIM.json"
RECONSTRUCTION_DB = 25.0
"""Least PSNR of a diffusion-model workflow's SPDInv reconstruction against the encoded photo (4 steps)."""


def api_prompt(ui_path: Path) -> dict:
    return json.loads(api_twin(ui_path).read_text())


def needs_comfy_cli() -> None:
    pytest.importorskip("comfy_cli.workflow_to_api", reason="UI-format workflows are converted by comfy-cli")


def small_overrides(prompt: dict, mapper_name: str | None = None, steps: int = 4) -> dict:
    """Shrink a workflow for CPU: 64x64 image, a video's first 9 frames and ``steps`` (4) on every SPDInv inversion
    (on the primitive its steps input is linked to, where the workflow shares one step count between inversions);
    point ELITE mapper loaders at the test's random mapper file."""
    out = dict(SMALL)
    for node in prompt.values():
        if node["class_type"] == "SPDInvInvert":
            linked = node["inputs"]["steps"]
            if isinstance(linked, list):
                out[f"{prompt[linked[0]]['_meta']['title']}.value"] = steps
            else:
                out[f"{node['_meta']['title']}.steps"] = steps
        if node["class_type"] == "ImageFromBatch":  # a video's first frames: 9 (3 latent frames)
            out[f"{node['_meta']['title']}.length"] = 9
        if node["class_type"] == "ELITEMapperLoader" and mapper_name is not None:
            out[f"{node['_meta']['title']}.mapper_name"] = mapper_name
    return out


def test_every_workflow_has_an_api_twin():
    assert WORKFLOWS, "no workflows shipped"
    for ui in WORKFLOWS:
        assert api_twin(ui).is_file(), f"{ui.name} has no API twin at {api_twin(ui)}"


def test_workflows_are_listed_in_the_template_browser(server):
    templates = server.get("/workflow_templates")
    listed = {name for names in templates.values() for name in names}
    assert {ui.stem for ui in WORKFLOWS} <= listed, templates


@pytest.mark.parametrize("ui_path", WORKFLOWS, ids=lambda p: p.stem)
def test_comfy_cli_converts_each_ui_workflow_to_its_api_twin(server, ui_path, comfyui_path):
    needs_comfy_cli()
    family = diffusion_model_family(ui_path)
    if family == "Wan" and comfyui_version(comfyui_path) < (0, 4):
        pytest.skip(ON_0_3_64[family])
    converted = to_api(json.loads(ui_path.read_text()), server.object_info()).prompt
    assert strip_preview_widgets(converted) == strip_preview_widgets(api_prompt(ui_path))


FRONTEND_PREVIEWS = {"video-preview"}
"""Inputs the frontend queues for its own preview widgets (LoadVideo's) and the server ignores; comfy-cli leaves
them out."""


def strip_preview_widgets(prompt: dict) -> dict:
    """Each node's class and inputs, without :data:`FRONTEND_PREVIEWS`."""
    return {k: {"class_type": v["class_type"],
                "inputs": {i: x for i, x in v["inputs"].items() if i not in FRONTEND_PREVIEWS}}
            for k, v in prompt.items()}


def checkpoint_for(ui_path: Path, request: pytest.FixtureRequest) -> Path:
    """The random checkpoint of the workflow's family: SDXL-class for ``*SDXL*`` workflows, SD3-class for
    ``*SD3*`` ones, else SD1.5."""
    family = "sdxl" if "SDXL" in ui_path.stem else "sd3" if "SD3" in ui_path.stem else "sd15"
    return request.getfixturevalue(f"{family}_checkpoint_path")


DIFFUSION_MODEL_FAMILIES = {
    "Flux.1": (factory.flux_model_path, factory.flux_vae_path),
    "Flux.2": (factory.flux2_model_path, factory.flux2_vae_path),
    "Qwen-Image": (factory.qwen_image_model_path, factory.wan21_vae_path),
    "Wan": (factory.wan21_model_path, factory.wan21_vae_path),
}
"""Workflows that load a diffusion model, text encoders and a VAE separately (by a word of their name): the random
diffusion model and VAE of the family that the test runs them on."""
ON_0_3_64_MODELS = {"Flux.1": factory.flux_full_width_model_path}
"""ComfyUI 0.3.x fixes Flux's width at its full 3072: the full-width random Flux.1 of reduced depth there. Its
inversion runs 10 steps: at 4 its random steps are too coarse for the reconstruction bound (19.7 dB at 4 steps,
44.1 dB at 10, measured on 0.3.64)."""
ON_0_3_64 = {"Flux.2": "ComfyUI 0.3.64 has no Flux.2",
             "Wan": "the video workflow's twin is ComfyUI 0.33's (CreateVideo's bit_depth and SaveVideo's "
                    "format.codec are newer; 0.3.64 runs the twin ignoring them, checked locally), and CI's 0.3.64 "
                    "part has no time for another video run"}
"""Why a family's workflow cannot run on ComfyUI 0.3.x."""
TEXT_ENCODER_LOADERS = {"CLIPLoader", "DualCLIPLoader"}


QWEN_EDIT_ENCODERS = {"TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus"}


def stand_in_for_qwen_edit_encoder(prompt: dict, node_id: str) -> None:
    """Replace a Qwen-Image-Edit text encoder node (Qwen2.5-VL reads the prompt and the photo) by the stand-in
    encoding of its prompt with the photo's latent attached by ``ReferenceLatent``, as the node attaches it (the
    node's own 1-megapixel resize aside); the node's id now names the ``ReferenceLatent``."""
    node = prompt[node_id]
    inputs = node["inputs"]
    image = inputs.get("image", inputs.get("image1"))
    family = prompt[inputs["clip"][0]]["inputs"]["type"]
    prompt[f"{node_id} stand-in"] = {"class_type": "SPDInvTestTextEncoderStandIn", "_meta": node["_meta"],
                                     "inputs": {"text": inputs["prompt"], "family": family}}
    prompt[f"{node_id} reference"] = {"class_type": "VAEEncode", "_meta": {"title": "Encode reference"},
                                      "inputs": {"pixels": image, "vae": inputs["vae"]}}
    prompt[node_id] = {"class_type": "ReferenceLatent", "_meta": node["_meta"],
                       "inputs": {"conditioning": [f"{node_id} stand-in", 0], "latent": [f"{node_id} reference", 0]}}


def comfyui_version(comfyui_path: Path) -> tuple[int, ...]:
    """The checkout's version from its ``comfyui_version.py``."""
    text = (comfyui_path / "comfyui_version.py").read_text()
    return tuple(int(x) for x in text.split("__version__ = ")[1].strip().strip('"').split("."))


def diffusion_model_family(ui_path: Path) -> str | None:
    return next((f for f in DIFFUSION_MODEL_FAMILIES if f in ui_path.stem), None)


def with_test_models(prompt: dict, family: str, old_comfyui: bool = False) -> dict[str, str]:
    """Run a diffusion-model workflow on the family's random files (on ComfyUI 0.3.x, those of
    :data:`ON_0_3_64_MODELS`): the diffusion model and VAE swapped in, each text-encoder loader + ``CLIPTextEncode``
    replaced by the test-only stand-in (``FluxGuidance`` and ``ReferenceLatent`` stay; a Qwen-Image-Edit encoder
    becomes :func:`stand_in_for_qwen_edit_encoder`; Prompt-to-Prompt on Wan reads its prompts' tokens from the
    umT5 CLIP stand-in), and ``SaveLatent`` of the encoded photo and the
    edit's reconstruction added; returns their node ids."""
    model_path, vae_path = DIFFUSION_MODEL_FAMILIES[family]
    model_path = ON_0_3_64_MODELS.get(family, model_path) if old_comfyui else model_path
    model, vae = model_path().name, vae_path().name
    loaders = {i for i, n in prompt.items() if n["class_type"] in TEXT_ENCODER_LOADERS}
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "UNETLoader":
            node["inputs"]["unet_name"] = model
        elif node["class_type"] == "VAELoader":
            node["inputs"]["vae_name"] = vae
        elif node["class_type"] == "CLIPTextEncode" and node["inputs"]["clip"][0] in loaders:
            encoder = prompt[node["inputs"]["clip"][0]]
            prompt[node_id] = {"class_type": "SPDInvTestTextEncoderStandIn", "_meta": node["_meta"],
                               "inputs": {"text": node["inputs"]["text"], "family": encoder["inputs"]["type"]}}
        elif node["class_type"] in QWEN_EDIT_ENCODERS:
            stand_in_for_qwen_edit_encoder(prompt, node_id)
        elif node["class_type"] == "P2PAttentionControl" and node["inputs"]["clip"][0] in loaders:
            prompt["umT5 stand-in"] = {"class_type": "SPDInvTestUMT5ClipStandIn", "_meta": {"title": "umT5"},
                                       "inputs": {}}
            node["inputs"]["clip"] = ["umT5 stand-in", 0]
    for node_id in loaders:
        del prompt[node_id]
    encoded = next(i for i, n in prompt.items() if n["class_type"] == "VAEEncode")
    edit = next(i for i, n in prompt.items() if n["class_type"] == "SPDInvEditSampler")
    saved = {"photo": [encoded, 0], "reconstruction": [edit, 1]}
    for name, source in saved.items():
        prompt[f"latent {name}"] = {"class_type": "SaveLatent", "_meta": {"title": f"Save {name} latent"},
                                    "inputs": {"samples": source, "filename_prefix": f"test_{name}"}}
    return {name: f"latent {name}" for name in saved}


def check_video(path: Path, frames: int) -> None:
    """A saved clip of ``frames`` frames, not all one colour."""
    import av

    with av.open(str(path)) as video:
        decoded = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
    assert len(decoded) == frames, f"{path.name}: {len(decoded)} frames"
    assert np.stack(decoded).std() > 0


@pytest.mark.parametrize("ui_path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_twin_executes_on_the_example_photo(server, ui_path, clip_vision_path, elite_mapper_path_global,
                                                comfyui_path, request):
    """Diffusion-model workflows (Flux.1, Flux.2, Qwen-Image, Wan) run on their family's random diffusion model and
    VAE with a stand-in for the text encoders, which cannot run here (T5-XXL, Qwen3, Qwen2.5-VL, umT5-XXL); their
    SPDInv reconstruction must come back close to the encoded photo (Wan: the example clip's first 9 frames)."""
    api = api_prompt(ui_path)
    loaded = {n["inputs"].get("image", n["inputs"].get("file")) for n in api.values()
              if n["class_type"] in ("LoadImage", "LoadVideo")}
    assert loaded & {"spdinv_example_cat.png", "spdinv_example_clip.mp4"} and loaded <= set(EXAMPLE_INPUTS), loaded
    for name in loaded:
        assert (server.input_dir / name).is_file(), f"the pack puts the example {name} in place"
    family = diffusion_model_family(ui_path)
    old_comfyui = comfyui_version(comfyui_path) < (0, 4)
    if family in ON_0_3_64 and old_comfyui:
        pytest.skip(ON_0_3_64[family])
    uses_clip_vision = any(n["class_type"] == "CLIPVisionLoader" for n in api.values())
    prompt = build_prompt(api, server.object_info(),
                          checkpoint_name=None if family else checkpoint_for(ui_path, request).name,
                          clip_vision_name=clip_vision_path.name if uses_clip_vision else None,
                          overrides=small_overrides(api, elite_mapper_path_global.name,
                                                    10 if old_comfyui and family in ON_0_3_64_MODELS else 4)).prompt
    latents = with_test_models(prompt, family, old_comfyui) if family else {}
    history = server.run(prompt, timeout=1800)
    images = server.output_images(history)
    saves = [n for n in api.values() if n["class_type"] in ("SaveImage", "SaveVideo")]
    assert len(images) == len(saves)
    for path in images:
        if path.suffix == ".png":
            with Image.open(path) as im:
                assert np.asarray(im).std() > 0
        else:
            check_video(path, frames=9)
    if latents:
        out = {}
        for name, node_id in latents.items():
            (item,) = history["outputs"][node_id]["latents"]
            out[name] = load_file(server.output_dir / item["subfolder"] / item["filename"])["latent_tensor"]
        psnr = latent_psnr(out["reconstruction"].reshape(out["photo"].shape), out["photo"])
        print(f"\n[server] {ui_path.stem}: SPDInv reconstruction of the encoded photo {psnr:.1f} dB")
        assert psnr >= RECONSTRUCTION_DB
    assert server.running


@pytest.mark.parametrize("ui,prompts,expected", [
    (RECONSTRUCTION, ["--source-prompt", "a photo of a dog"], ["spdinv_reconstruction", "residual_plot"]),
    (P2P, ["--source-prompt", "a photo of a dog", "--target-prompt", "a photo of a cat"],
     ["spdinv_p2p_edit", "spdinv_p2p_reconstruction_vs_edit", "p2p_attention_maps"]),
], ids=["reconstruction", "p2p"])
def test_headless_runner_runs_a_shipped_workflow_from_the_command_line(comfyui_path, sd15_checkpoint_path,
                                                                       photo_file, tmp_path, ui, prompts, expected):
    """The UI file itself, converted by comfy-cli inside the runner, on the device the runner picks. The P2P edit
    keeps the quick preset's image size (256, on the CPU) and reports its changes, device and progress."""
    needs_comfy_cli()
    small = small_overrides(api_prompt(ui))
    if ui == P2P:
        small = {k: v for k, v in small.items() if not k.startswith("Resize.")}
        small.update({"Prompt-to-Prompt.blend_source_words": "dog", "Prompt-to-Prompt.blend_target_words": "cat",
                      "Prompt-to-Prompt.reweight": "cat:2.0"})
    cmd = [sys.executable, "-m", "tools.run_workflow", str(ui), "--comfyui", str(comfyui_path),
           "--python", sys.executable, "--checkpoint", str(sd15_checkpoint_path), "--image", str(photo_file),
           *prompts, "--out", str(tmp_path)]
    for key, value in small.items():
        cmd += ["--set", f"{key}={value}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    for prefix in expected:
        assert any(n.startswith(prefix) for n in names), names
    if ui == P2P:
        log = done.stderr
        on_cpu = "\ndevice: CPU (" in "\n" + log
        assert on_cpu or log.startswith("device: GPU ("), log
        assert "SPDInv inversion | step 4/4" in log and "P2P edit | step " in log, log
        if on_cpu:
            assert "quick preset (on the CPU by default; " in log, log
            assert "Resize.width 512 -> 256; Resize.height 512 -> 256\n" in log, log  # steps: the --set wins
            with Image.open(next(tmp_path.glob("spdinv_p2p_edit*.png"))) as edit:
                assert edit.size == (256, 256)


def test_changing_only_the_target_prompt_reuses_the_cached_inversion(server, photo_file, sd15_checkpoint_path):
    twin = api_prompt(P2P)
    image = server.upload_image(photo_file)
    invert_id = next(i for i, n in twin.items() if n["class_type"] == "SPDInvInvert")

    def run(target: str) -> set[str]:
        prompt = build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name,
                              image_name=image, target_prompt=target, overrides=small_overrides(twin)).prompt
        history = server.run(prompt, timeout=1800)
        messages = history.get("status", {}).get("messages", [])
        return {node for kind, data in messages if kind == "execution_cached" for node in data.get("nodes", [])}

    run("a photo of a tiger sitting next to a mirror")
    cached = run("a photo of a tiger standing next to a mirror")
    assert invert_id in cached, cached
    assert next(i for i, n in twin.items() if n["class_type"] == "P2PAttentionControl") not in cached


@pytest.mark.parametrize("settings", [
    {"Prompt-to-Prompt.mode": "word swap", "Prompt-to-Prompt.reweight": ""},
    {"Prompt-to-Prompt.mode": "refine", "Prompt-to-Prompt.reweight": ""},
    {"Prompt-to-Prompt.mode": "refine", "Prompt-to-Prompt.reweight": "tiger:2.0, photo:0.5"},
], ids=["word-swap", "refine", "reweight"])
def test_p2p_workflow_runs_in_each_mode_with_local_blend(server, photo_file, sd15_checkpoint_path, settings):
    twin = api_prompt(P2P)
    image = server.upload_image(photo_file)
    prompt = build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                          overrides={**small_overrides(twin), **settings}).prompt
    p2p = next(n for n in prompt.values() if n["class_type"] == "P2PAttentionControl")
    assert p2p["inputs"]["blend_source_words"] == "cat" and p2p["inputs"]["blend_target_words"] == "tiger"
    images = server.output_images(server.run(prompt, timeout=1800))
    assert len(images) == 3
    assert server.running


@pytest.mark.parametrize("settings,match", [
    ({"Prompt-to-Prompt.blend_target_words": "horse"}, "blend_target_words: .*horse"),
    ({"Prompt-to-Prompt.mode": "word swap", "Prompt-to-Prompt.target_text": "a close-up photo of a big tiger"},
     "target_text: .*refine"),
    ({"Prompt-to-Prompt.reweight": "tiger=2"}, "reweight: .*word:factor"),
], ids=["blend-word", "swap-count", "reweight-format"])
def test_bad_p2p_input_fails_the_prompt_and_the_server_keeps_serving(server, photo_file, sd15_checkpoint_path,
                                                                     settings, match):
    twin = api_prompt(P2P)
    image = server.upload_image(photo_file)
    prompt = build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                          overrides={**small_overrides(twin), **settings}).prompt
    with pytest.raises(ExecutionError, match=match):
        server.run(prompt, timeout=1800)
    assert server.running
    good = build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                        overrides=small_overrides(twin)).prompt
    assert len(server.output_images(server.run(good, timeout=1800))) == 3


def masactrl_prompt(server, photo_file, sd15_checkpoint_path, settings: dict) -> dict:
    twin = api_prompt(MASACTRL)
    image = server.upload_image(photo_file)
    return build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                        overrides={**small_overrides(twin), **settings}).prompt


@pytest.mark.parametrize("mode", ["none", "mask", "auto"])
def test_masactrl_workflow_runs_in_each_mask_mode(server, photo_file, sd15_checkpoint_path, mode):
    prompt = masactrl_prompt(server, photo_file, sd15_checkpoint_path, {"MasaCtrl.mask_mode": mode})
    if mode == "mask":
        resize = next(i for i, n in prompt.items() if n["_meta"]["title"] == "Resize")
        prompt["900"] = {"class_type": "ImageToMask", "inputs": {"image": [resize, 0], "channel": "red"},
                         "_meta": {"title": "Object mask"}}
        next(n for n in prompt.values() if n["class_type"] == "MasaCtrlMutualAttention")["inputs"]["mask"] = ["900", 0]
    assert len(server.output_images(server.run(prompt, timeout=1800))) == 2
    assert server.running


def test_bad_masactrl_input_fails_the_prompt_and_the_server_keeps_serving(server, photo_file, sd15_checkpoint_path):
    bad = masactrl_prompt(server, photo_file, sd15_checkpoint_path, {"MasaCtrl.start_layer": 16})
    with pytest.raises(ExecutionError, match="start_layer: the model has 16 transformer layers"):
        server.run(bad, timeout=1800)
    bad = masactrl_prompt(server, photo_file, sd15_checkpoint_path,
                          {"MasaCtrl.mask_mode": "auto", "MasaCtrl.target_words": "dog"})
    with pytest.raises(ExecutionError, match="target_words: .*dog"):
        server.run(bad, timeout=1800)
    good = masactrl_prompt(server, photo_file, sd15_checkpoint_path, {})
    assert len(server.output_images(server.run(good, timeout=1800))) == 2


def test_pnp_workflow_runs_with_the_color_fix_enabled(server, photo_file, sd15_checkpoint_path):
    needs_comfy_cli()
    ui = json.loads(PNP.read_text())
    fix = next(n for n in ui["nodes"] if n["type"] == "SPDInvWaveletColorFix")
    assert fix["mode"] == 4, "the colour fix ships bypassed"
    fix["mode"] = 0
    image = server.upload_image(photo_file)
    prompt = build_prompt(ui, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                          overrides=SMALL | {"SPDInv inversion.steps": 4}).prompt
    fix_id = next(i for i, n in prompt.items() if n["class_type"] == "SPDInvWaveletColorFix")
    saved = {n["inputs"]["filename_prefix"]: n["inputs"]["images"] for n in prompt.values()
             if n["class_type"] == "SaveImage"}
    assert saved["spdinv_pnp_edit"] == [fix_id, 0], "enabled, the colour fix feeds the saved edit"
    assert len(server.output_images(server.run(prompt, timeout=1800))) == 2


def test_pnp_fraction_out_of_range_is_refused_by_validation_and_the_server_keeps_serving(
        server, photo_file, sd15_checkpoint_path):
    twin = api_prompt(PNP)
    image = server.upload_image(photo_file)
    prompt = build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                          overrides={**small_overrides(twin), "Plug-and-Play.feature_fraction": 1.5}).prompt
    with pytest.raises(PromptValidationError) as err:
        server.run(prompt, timeout=600)
    assert "feature_fraction" in str(err.value.node_errors)
    assert server.running


def test_bad_elite_text_fails_the_prompt_and_the_server_keeps_serving(server, photo_file, sd15_checkpoint_path,
                                                                      clip_vision_path, elite_mapper_path_global):
    twin = api_prompt(ELITE)
    image = server.upload_image(photo_file)

    def prompt(target: str) -> dict:
        return build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name, image_name=image,
                            clip_vision_name=clip_vision_path.name, target_prompt=target,
                            overrides=small_overrides(twin, elite_mapper_path_global.name)).prompt

    with pytest.raises(ExecutionError, match="text: the placeholder '\\*' must appear exactly once, found 0"):
        server.run(prompt("a photo of a white cat"), timeout=1800)
    assert server.running
    assert len(server.output_images(server.run(prompt("a photo of a white *"), timeout=1800))) == 3


def test_a_missing_elite_mapper_file_is_refused_when_queued(server, photo_file, sd15_checkpoint_path,
                                                            clip_vision_path):
    """HTTP 400 at queue time naming mapper_name, before any node ran (ComfyUI 0.3.x does not check V3 combos)."""
    twin = api_prompt(ELITE)
    prompt = build_prompt(twin, server.object_info(), checkpoint_name=sd15_checkpoint_path.name,
                          image_name=server.upload_image(photo_file), clip_vision_name=clip_vision_path.name,
                          overrides=small_overrides(twin, "no_such_mapper.pt")).prompt
    with pytest.raises(PromptValidationError) as err:
        server.submit(prompt)
    assert "mapper_name" in str(err.value) + str(err.value.node_errors)
    assert "no_such_mapper.pt" in str(err.value.node_errors)
    assert server.running
