"""Robustness across the pack (issue 7): bad inputs, cancel, no leakage between edits, determinism.

Server tests post small API prompts (64 px, a few steps) to the session's real ``main.py --cpu`` server;
in-process tests call the nodes as the executor does. A random-weight UNet gives meaningless pictures, so
outputs are checked for what does not depend on the weights: finiteness, shapes, bit-identity.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from spdinv_pack.tests.host.pack_calls import ENGINES, MASA_START_LAYER, edit, engine_model, invert, photo
from spdinv_pack.tools.api_graph import ApiGraph
from spdinv_pack.tools.comfy_server import ComfyServer, ExecutionError, ExecutionInterrupted, PromptValidationError

SOURCE_TEXT, TARGET_TEXT = "a photo of a cat", "a photo of a dog"

# ------------------------------------------------------------------------------------------------
# API prompts
# ------------------------------------------------------------------------------------------------

CKPT, PHOTO, RESIZE, ENCODE, SOURCE, INVERT, ENGINE, EDIT, SAVE, TARGET, DECODE, SAVE_IMAGE = (
    str(i) for i in range(1, 13))


def edit_prompt(ckpt: str, image: str, object_info: dict[str, Any], *, engine: str = "p2p",
                size: tuple[int, int] = (64, 64), source: str = SOURCE_TEXT, target: str = TARGET_TEXT, steps: int = 3,
                decode: bool = False, prefix: str = "robustness") -> dict[str, dict[str, Any]]:
    """photo -> resize -> VAEEncode -> SPDInvInvert -> engine node -> SPDInvEditSampler -> SaveLatent (+ PNG);
    what is not set here is the nodes' defaults (from ``object_info``)."""
    width, height = size
    g = ApiGraph()
    ckpt_node = g.add("CheckpointLoaderSimple", _id=CKPT, ckpt_name=ckpt)
    model, clip, vae = ckpt_node, ckpt_node[1], ckpt_node[2]
    photo_node = g.add("LoadImage", _id=PHOTO, image=image)
    resized = g.add("ImageScale", _id=RESIZE, image=photo_node, upscale_method="bilinear", width=width, height=height,
                    crop="disabled")
    latent = g.add("VAEEncode", _id=ENCODE, pixels=resized, vae=vae)
    source_cond = g.add("CLIPTextEncode", _id=SOURCE, text=source, clip=clip)
    inverted = g.add("SPDInvInvert", _id=INVERT, model=model, source=source_cond, latent=latent, steps=steps,
                     max_iters=5)
    if engine == "p2p":
        engine_node = g.add("P2PAttentionControl", _id=ENGINE, model=model, clip=clip, source_text=source,
                            target_text=target)
        edit_source, edit_target = engine_node[1], engine_node[2]
    else:
        edit_source, edit_target = source_cond, g.add("CLIPTextEncode", _id=TARGET, text=target, clip=clip)
        if engine == "masactrl":
            engine_node = g.add("MasaCtrlMutualAttention", _id=ENGINE, model=model, start_layer=MASA_START_LAYER)
        elif engine == "pnp":
            engine_node = g.add("PNPInjection", _id=ENGINE, model=model)
        else:
            raise ValueError(engine)
    edited = g.add("SPDInvEditSampler", _id=EDIT, model=engine_node, inversion=inverted, source=edit_source,
                   target=edit_target)
    g.add("SaveLatent", _id=SAVE, samples=edited, filename_prefix=prefix)
    if decode:
        decoded = g.add("VAEDecode", _id=DECODE, samples=edited, vae=vae)
        g.add("SaveImage", _id=SAVE_IMAGE, images=decoded, filename_prefix=prefix)
    return g.prompt(object_info)


def saved_latents(server: ComfyServer, history: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors SaveLatent wrote, in the history's order."""
    out = []
    for node_out in history.get("outputs", {}).values():
        for item in node_out.get("latents", []):
            path = server.output_dir / item.get("subfolder", "") / item["filename"]
            out.append(load_file(str(path))["latent_tensor"])
    return out


def executed_again(history: dict[str, Any]) -> set[str]:
    """Node ids that ComfyUI took from its cache in this run."""
    messages = history.get("status", {}).get("messages", [])
    return {n for kind, data in messages if kind == "execution_cached" for n in data.get("nodes", [])}


@pytest.fixture(scope="module")
def photo_name(server: ComfyServer, photo_file: Path) -> str:
    return server.upload_image(photo_file)


@pytest.fixture(scope="module")
def good(server: ComfyServer, photo_name: str, sd15_checkpoint_path: Path) -> Callable[..., dict[str, Any]]:
    """``good(**kw)``: a valid edit prompt for the server (see :func:`edit_prompt`)."""
    object_info = server.object_info()
    return lambda **kw: edit_prompt(sd15_checkpoint_path.name, photo_name, object_info, **kw)


# ------------------------------------------------------------------------------------------------
# The bad-input matrix
# ------------------------------------------------------------------------------------------------


def _set(node: str, **inputs: Any) -> Callable[[dict], None]:
    return lambda p: p[node]["inputs"].update(inputs)


def _black_image(p: dict) -> None:
    p[RESIZE] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}


def _flow_latent(p: dict) -> None:
    """An SD3/Flux-shaped (16-channel) latent instead of the photo's."""
    p[ENCODE] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}


def _empty_prompts(p: dict) -> None:
    p[SOURCE]["inputs"]["text"] = ""
    p[ENGINE]["inputs"].update(source_text="", target_text="")


@dataclass(frozen=True)
class Case:
    """One row of the matrix: how to spoil the good prompt and how the server must answer.

    ``expect``: "ok" (runs, finite output of ``shape``), "invalid" (HTTP 400, ``node_errors`` name
    ``match``), or "error" (an execution error whose message matches ``match``).
    """

    id: str
    change: Callable[[dict], None]
    expect: str
    match: str = ""
    shape: tuple[int, ...] = (1, 4, 8, 8)


MATRIX = [
    Case("inversion-steps-0", _set(INVERT, steps=0), "invalid", "steps"),
    Case("K-0", _set(INVERT, max_iters=0), "invalid", "max_iters"),
    Case("delta-negative", _set(INVERT, delta=-1.0), "invalid", "delta"),
    Case("cfg-above-max", _set(EDIT, cfg=31.0), "invalid", "cfg"),
    Case("steps-1", _set(INVERT, steps=1), "ok"),
    Case("delta-0", _set(INVERT, delta=0.0), "ok"),
    Case("ddim-steps-1", _set(INVERT, steps=1, method="ddim"), "ok"),
    Case("odd-size-100x70", _set(RESIZE, width=100, height=70), "ok", shape=(1, 4, 8, 12)),
    Case("all-black-image", _black_image, "ok"),
    Case("empty-source-prompt", lambda p: (_set(SOURCE, text="")(p), _set(ENGINE, source_text="")(p)), "ok"),
    Case("empty-source-and-target-p2p", _empty_prompts, "ok"),
    Case("empty-source-target-word-swap", lambda p: (_empty_prompts(p), _set(ENGINE, mode="word swap")(p)), "ok"),
    Case("word-swap-empty-target", lambda p: (_set(ENGINE, mode="word swap", target_text="")(p)), "error",
         "target_text: word swap needs prompts with the same number of words.*refine"),
    Case("flow-latent-16-channels", _flow_latent, "error",
         "latent: the latent has 16 channels but this BaseModel model's latents have 4; encode the photo with "
         "this model's VAE"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MATRIX])
def test_bad_input_matrix_is_answered_clearly_and_the_server_keeps_serving(server, good, case):
    prompt = good(prefix=f"matrix-{case.id}")
    case.change(prompt)
    if case.expect == "invalid":
        with pytest.raises(PromptValidationError) as err:
            server.run(prompt, timeout=600)
        assert case.match in str(err.value.node_errors), err.value
    elif case.expect == "error":
        with pytest.raises(ExecutionError, match=case.match):
            server.run(prompt, timeout=1200)
    else:
        (latent,) = saved_latents(server, server.run(prompt, timeout=1200))
        assert tuple(latent.shape) == case.shape
        assert torch.isfinite(latent).all()
    assert server.running


PICKLE_MARKER = Path("/tmp/spdinv-robustness-pickle-ran")


class RunsCode:
    """Unpickling this would create ``PICKLE_MARKER``; a safe loader refuses it without running it."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(PICKLE_MARKER), "w"))


@pytest.fixture(scope="module")
def bad_mappers(server_elite_folder: Path, elite_mapper_path_global: Path) -> dict[str, str]:
    """Mapper files in the server's elite folder: empty, truncated, and a pickle that would run code."""
    data = elite_mapper_path_global.read_bytes()
    files = {"empty.pt": b"", "truncated.pt": data[: len(data) // 2],
             "truncated.safetensors": b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\": \"F32\"",
             "runs_code_raw.pt": pickle.dumps(RunsCode())}
    for name, content in files.items():
        (server_elite_folder / name).write_bytes(content)
    torch.save({"mapping_0.0.weight": RunsCode()}, server_elite_folder / "runs_code.pt")  # torch's zip format
    return {"empty": "empty.pt", "truncated": "truncated.pt", "truncated-safetensors": "truncated.safetensors",
            "runs-code": "runs_code.pt", "runs-code-raw-pickle": "runs_code_raw.pt"}


@pytest.mark.parametrize("kind,match", [
    ("empty", "mapper_name: .*empty.pt: the file is empty"),
    ("truncated", "mapper_name: .*truncated.pt: cannot be read"),
    ("truncated-safetensors", "mapper_name: .*truncated.safetensors: cannot be read"),
    ("runs-code", "mapper_name: .*runs_code.pt: refused: .*could run code.*plain state dict"),
    ("runs-code-raw-pickle", "mapper_name: .*runs_code_raw.pt: not a tensor pickle.*plain state dict"),
])
def test_bad_mapper_files_fail_the_loader_in_the_server_without_running_code(server, bad_mappers, kind, match):
    PICKLE_MARKER.unlink(missing_ok=True)
    # PreviewAny (an output node) makes ComfyUI execute the loader and nothing heavier.
    g = ApiGraph()
    g.add("PreviewAny", source=g.add("ELITEMapperLoader", mapper_name=bad_mappers[kind]))
    prompt = g.prompt()
    with pytest.raises(ExecutionError, match=match):
        server.run(prompt, timeout=600)
    assert not PICKLE_MARKER.exists()
    assert server.running


# ------------------------------------------------------------------------------------------------
# Cancel, leakage and determinism in the server
# ------------------------------------------------------------------------------------------------


def test_interrupt_stops_a_running_inversion_and_the_next_prompt_runs(server, good):
    def inversion_only(steps: int) -> dict[str, Any]:
        prompt = good(source="a photo of a cat, interrupted", prefix="interrupted")
        for node in (ENGINE, EDIT):
            del prompt[node]
        prompt[SAVE]["inputs"]["samples"] = [INVERT, 1]
        prompt[INVERT]["inputs"].update(steps=steps, method="ddim", measure_residual=False)
        return prompt

    server.run(inversion_only(1), timeout=1200)  # loads and caches everything before the inversion
    prompt_id = server.submit(inversion_only(400))
    deadline = time.monotonic() + 300
    while not server.get("/queue")["queue_running"]:
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(2.0)  # inside the 400 inversion steps: everything before them is cached
    server.interrupt()
    with pytest.raises(ExecutionInterrupted) as stopped:
        server.wait(prompt_id, timeout=600)
    assert stopped.value.details.get("node_type") == "SPDInvInvert"
    (latent,) = saved_latents(server, server.run(good(prefix="after-interrupt"), timeout=1200))
    assert torch.isfinite(latent).all()


def test_different_edits_back_to_back_do_not_see_each_others_state(server, good):
    """P2P, then PnP and MasaCtrl on the same cached model and inversion, then P2P again: bit-identical.

    The second P2P run changes ``blend_threshold``, which does nothing without blend words, so ComfyUI runs
    the engine node and the sampler again while the model and the inversion stay cached (the same objects
    the other engines patched)."""
    (first,) = saved_latents(server, server.run(good(prefix="leak-a"), timeout=1200))
    for engine in ("pnp", "masactrl"):
        (other,) = saved_latents(server, server.run(good(engine=engine, target="a photo of a tiger",
                                                         prefix=f"leak-{engine}"), timeout=1200))
        assert torch.isfinite(other).all()
    again = good(prefix="leak-a-again")
    again[ENGINE]["inputs"]["blend_threshold"] = 0.35
    history = server.run(again, timeout=1200)
    cached = executed_again(history)
    assert {CKPT, INVERT} <= cached and not {ENGINE, EDIT} & cached, cached
    (second,) = saved_latents(server, history)
    assert torch.equal(first, second)


def test_the_same_workflow_twice_gives_bit_identical_output(server, good):
    """Everything runs again the second time: ``/free`` drops ComfyUI's cache and unloads the model."""
    prompt = good(decode=True, prefix="determinism")
    first = server.run(prompt, timeout=1200)
    status, _ = server.request("POST", "/free", {"free_memory": True})
    assert status == 200
    # ComfyUI's worker reads the flag after a prompt (or when the flag wakes it while idle): run a tiny prompt
    # so the reset has happened, whatever the timing, before the workflow runs again.
    tiny = ApiGraph()
    tiny.add("PreviewImage", images=tiny.add("EmptyImage", width=8, height=8))
    server.run(tiny.prompt(server.object_info()), timeout=600)
    second = server.run(prompt, timeout=1200)
    assert not executed_again(second), "the second run was served from the cache"
    (a,), (b,) = saved_latents(server, first), saved_latents(server, second)
    assert torch.equal(a, b)
    (png_a,), (png_b,) = server.output_images(first), server.output_images(second)
    with Image.open(png_a) as im_a, Image.open(png_b) as im_b:
        assert np.array_equal(np.asarray(im_a), np.asarray(im_b))


# ------------------------------------------------------------------------------------------------
# In-process: cancel during an edit, an inversion used with another model
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(comfy_env, sd15, run_node, pack_nodes):
    """A 64² photo inverted in 4 steps, and the source and target encodings."""
    model, clip, vae = sd15
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(64), vae=vae)
    source, target = (run_node(comfy_env.nodes.CLIPTextEncode, text=t, clip=clip)[0]
                      for t in (SOURCE_TEXT, TARGET_TEXT))
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=4)
    return model, clip, latent, source, target, inversion


@pytest.mark.parametrize("engine", ENGINES)
def test_cancel_during_an_edit_stops_within_one_unet_call_and_leaves_no_state(run_node, pack_nodes, scene,
                                                                              comfy_env, engine):
    import comfy.model_management as mm

    model, clip, latent, source, target, inversion = scene
    ksampler = dict(seed=0, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal", positive=target,
                    negative=source, latent_image=latent, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    calls = {"n": 0}

    def interrupting(apply_model, args):
        calls["n"] += 1
        if calls["n"] == 2:
            mm.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapped = model.clone()
    wrapped.set_model_unet_function_wrapper(interrupting)
    patched, src, tgt = engine_model(run_node, pack_nodes, engine, wrapped, clip, SOURCE_TEXT, TARGET_TEXT,
                                     source, target)
    grad_before = torch.is_grad_enabled()
    with pytest.raises(mm.InterruptProcessingException):
        edit(run_node, pack_nodes, patched, inversion, src, tgt)
    assert calls["n"] == 2, "the edit went on after the interrupt"
    assert not mm.processing_interrupted()
    assert torch.is_grad_enabled() == grad_before and not torch.is_inference_mode_enabled()
    unet = model.get_model_object("diffusion_model")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    assert "model_function_wrapper" not in model.model_options and not model.wrappers
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    (after,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])
    # The interrupted engine runs again from a clean state: the same edit as a fresh engine's.
    # The fresh engine gets a pass-through function wrapper too: with another node's wrapper on the model the
    # edit keeps all 4 rows a step, and equal batches are needed for a bitwise comparison.
    rerun, _, _ = edit(run_node, pack_nodes, patched, inversion, src, tgt)
    passing = model.clone()
    passing.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"], args["timestep"],
                                                                                  **args["c"]))
    fresh_model, fresh_src, fresh_tgt = engine_model(run_node, pack_nodes, engine, passing, clip, SOURCE_TEXT,
                                                     TARGET_TEXT, source, target)
    fresh, _, _ = edit(run_node, pack_nodes, fresh_model, inversion, fresh_src, fresh_tgt)
    assert calls["n"] == 2 + inversion.result.steps
    assert torch.isfinite(rerun["samples"]).all()
    assert torch.equal(rerun["samples"], fresh["samples"])


TINY_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "dtype": torch.float32, "in_channels": 4, "model_channels": 32,
             "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
             "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
             "transformer_depth_output": [1, 1, 1, 1], "use_temporal_attention": False,
             "use_temporal_resblock": False}
"""An SD1.x-layout UNet at 1.6 M parameters: a real ComfyUI ``BaseModel`` that stands for another checkpoint."""


def tiny_model(seed: int, config_class: str = "SD15", in_channels: int = 4) -> Any:
    """A ``ModelPatcher`` around a tiny SD1.x-layout UNet with weights drawn from ``seed``."""
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)({**TINY_UNET, "in_channels": in_channels})
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in base.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_scene(comfy_env, run_node, pack_nodes):
    """A tiny model, a random conditioning and latent, and an inversion made with that model."""
    model = tiny_model(seed=0)
    gen = torch.Generator().manual_seed(1)
    cond = [[torch.randn(1, 77, 768, generator=gen), {}]]
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=gen)}
    inversion, _ = invert(run_node, pack_nodes, model, cond, latent, steps=3)
    return model, cond, latent, inversion


def test_an_inversion_refuses_another_checkpoint_and_accepts_the_same_weights_or_a_patched_clone(
        run_node, pack_nodes, tiny_scene):
    model, cond, _, inversion = tiny_scene
    plain, _, _ = edit(run_node, pack_nodes, model, inversion, cond, cond)
    reloaded, _, _ = edit(run_node, pack_nodes, tiny_model(seed=0), inversion, cond, cond)
    assert torch.equal(plain["samples"], reloaded["samples"]), "the same weights loaded again"
    lora_like = model.clone()
    first = next(model.model.diffusion_model.parameters())
    lora_like.add_patches({"diffusion_model.time_embed.0.weight": (0.5 * torch.ones_like(first),)}, 1.0)
    patched, _, _ = edit(run_node, pack_nodes, lora_like, inversion, cond, cond)
    assert not torch.equal(patched["samples"], plain["samples"]), "the patch was applied"
    with pytest.raises(ValueError, match="model: the inversion was made with another checkpoint .*connect the MODEL "
                                         "you inverted with .*or invert again"):
        edit(run_node, pack_nodes, tiny_model(seed=7), inversion, cond, cond)
    with pytest.raises(ValueError, match="model: the inversion was made with a BaseModel model but this model is "
                                         "SD15_instructpix2pix; invert again"):
        edit(run_node, pack_nodes, tiny_model(seed=0, config_class="SD15_instructpix2pix", in_channels=8),
             inversion, cond, cond)
    again, _, _ = edit(run_node, pack_nodes, model, inversion, cond, cond)
    assert torch.equal(again["samples"], plain["samples"])


def test_a_lora_on_the_inverted_model_is_allowed_in_the_edit_sampler(run_node, pack_nodes, scene, sd15_lora):
    _, _, _, source, target, inversion = scene
    lora_model, _ = sd15_lora
    edited, _, _ = edit(run_node, pack_nodes, lora_model, inversion, source, target)
    assert torch.isfinite(edited["samples"]).all()
