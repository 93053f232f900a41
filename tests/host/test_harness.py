"""Self-tests of the host-test harness: random SD1.5 checkpoint, LoRA, ComfyUI bootstrap, run_node.

They prove that what the pack's host tests rely on holds: the random checkpoint is detected as
SD1.5 with the exact key set of ComfyUI's modules, the models run under inference mode with finite
outputs, the LoRA measurably changes UNet and CLIP, and ``run_node`` drives V3 nodes the way the
executor does.
"""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import comfy.model_management
import pytest
import torch
from comfy_api.latest import io
from safetensors import safe_open

from spdinv_pack.tests.host import factory

# --------------------------------------------------------------------------------------------
# Checkpoint vs ComfyUI's modules
# --------------------------------------------------------------------------------------------


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _strip(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def _module_shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {k[len(prefix) :]: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith(prefix)}


def test_checkpoint_detected_as_sd15(sd15) -> None:
    model, clip, vae = sd15
    base = model.model
    assert type(base.model_config).__name__ == "SD15"
    assert base.model_type.name == "EPS"
    assert base.model_config.unet_config["context_dim"] == 768
    assert type(clip.cond_stage_model).__name__ == "SD1ClipModel"
    assert vae.latent_channels == 4


def test_file_has_exact_sd15_layout(sd15_checkpoint_path: Path) -> None:
    shapes = _file_shapes(sd15_checkpoint_path)
    assert len(_strip(shapes, factory.UNET_PREFIX)) == 686
    assert len(_strip(shapes, factory.CLIP_PREFIX)) == 196 + 1  # + embeddings.position_ids
    assert len(_strip(shapes, factory.VAE_PREFIX)) == 248
    assert len(shapes) == 686 + 197 + 248
    params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith("position_ids"))
    assert params == 1_066_235_307
    with safe_open(str(sd15_checkpoint_path), "pt") as f:
        assert f.get_slice(factory.UNET_PREFIX + "out.2.weight").get_dtype() == "F16"


def test_key_sets_and_shapes_equal_comfy_modules(sd15, sd15_checkpoint_path: Path) -> None:
    """No missing or unexpected keys: the file is exactly what ComfyUI's SD15 modules hold."""
    model, clip, vae = sd15
    shapes = _file_shapes(sd15_checkpoint_path)

    assert _strip(shapes, factory.UNET_PREFIX) == _module_shapes(model.model.diffusion_model)
    assert _strip(shapes, factory.VAE_PREFIX) == _module_shapes(vae.first_stage_model)

    clip_file = _strip(shapes, factory.CLIP_PREFIX)
    clip_mod = _module_shapes(clip.cond_stage_model, "clip_l.transformer.text_model.")
    # position_ids is an old HF buffer that real SD1.5 files carry too; ComfyUI ignores it.
    assert set(clip_file) - set(clip_mod) == {"embeddings.position_ids"}
    assert set(clip_mod) == set(clip_file) - {"embeddings.position_ids"}
    assert all(clip_mod[k] == clip_file[k] for k in clip_mod)
    # What ComfyUI's CLIP has beyond the text model is absent from every SD1.5 checkpoint.
    extra = set(clip.cond_stage_model.state_dict()) - {"clip_l.transformer.text_model." + k for k in clip_mod}
    assert extra == {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}


def test_weights_are_inference_tensors(sd15) -> None:
    """Loaded like the executor loads them: weights are inference tensors (see notes §1)."""
    model, clip, vae = sd15
    assert model.model.diffusion_model.input_blocks[0][0].weight.is_inference()
    assert next(clip.cond_stage_model.parameters()).is_inference()
    assert next(vae.first_stage_model.parameters()).is_inference()


# --------------------------------------------------------------------------------------------
# Running the models
# --------------------------------------------------------------------------------------------


def test_encode_sample_decode_finite(comfy_env, sd15, run_node) -> None:
    """CLIPTextEncode -> one KSampler step (CFG) on an 8x8 latent -> VAEDecode, all finite."""
    n = comfy_env.nodes
    model, clip, vae = sd15
    (pos,) = run_node(n.CLIPTextEncode, clip=clip, text="a photo of a cat")
    (neg,) = run_node(n.CLIPTextEncode, clip=clip, text="")
    cond = pos[0][0]
    assert cond.shape == (1, 77, 768) and torch.isfinite(cond).all() and cond.is_inference()
    assert not torch.equal(cond, neg[0][0])

    (latent,) = run_node(n.EmptyLatentImage, width=64, height=64, batch_size=1)
    (out,) = run_node(
        n.KSampler,
        model=model,
        seed=0,
        steps=1,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    samples = out["samples"]
    assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()
    assert 0 < samples.abs().max() < 1e3

    (image,) = run_node(n.VAEDecode, samples=out, vae=vae)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1


def _denoise(model, x: torch.Tensor, sigma: float, cond: torch.Tensor) -> torch.Tensor:
    """Denoised prediction of one UNet call for this patcher (load applies/removes its LoRA)."""
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
        dev = model.load_device
        s = torch.full((x.shape[0],), sigma, device=dev)
        return model.model.apply_model(x.to(dev), s, c_crossattn=cond.to(dev)).float().cpu()


def test_lora_changes_unet_and_clip(comfy_env, sd15, sd15_lora, run_node) -> None:
    model, clip, _ = sd15
    lmodel, lclip = sd15_lora
    assert len(lmodel.patches) == sum(1 for name, *_ in factory.LORA_TARGETS if name.startswith("lora_unet_"))
    assert len(lclip.patcher.patches) == 1

    (pos,) = run_node(comfy_env.nodes.CLIPTextEncode, clip=clip, text="a photo of a cat")
    (lpos,) = run_node(comfy_env.nodes.CLIPTextEncode, clip=lclip, text="a photo of a cat")
    c, lc = pos[0][0].float(), lpos[0][0].float()
    assert (lc - c).norm() / c.norm() > 1e-2

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3.0
    base = _denoise(model, x, 3.0, c)
    lora = _denoise(lmodel, x, 3.0, c)
    base_again = _denoise(model, x, 3.0, c)
    assert torch.isfinite(base).all() and torch.isfinite(lora).all()
    rel = ((lora - base).norm() / (base - x).norm()).item()
    print(f"LoRA: CLIP rel change {((lc - c).norm() / c.norm()).item():.3f}, UNet eps rel change {rel:.3f}")
    assert rel > 1e-2, f"LoRA changed the UNet output by only {rel:.2e}"
    torch.testing.assert_close(base_again, base)  # the LoRA is unpatched when the base is loaded again


# --------------------------------------------------------------------------------------------
# ComfyUI bootstrap and run_node
# --------------------------------------------------------------------------------------------


def test_bootstrap_imports_comfyui_modules(comfy_env, comfyui_path: Path, sd15_checkpoint_path: Path,
                                          lora_path: Path) -> None:
    assert Path(sys.modules["nodes"].__file__).resolve() == comfyui_path / "nodes.py"
    assert Path(sys.modules["utils"].__file__).resolve() == comfyui_path / "utils" / "__init__.py"
    assert comfy_env.nodes is sys.modules["nodes"]
    assert "spdinv_pack" in sys.modules  # the pack is reachable as spdinv_pack.* (tests/conftest.py)
    assert comfy.model_management.cpu_state == comfy.model_management.CPUState.CPU
    assert factory.CHECKPOINT_NAME in comfy_env.folder_paths.get_filename_list("checkpoints")
    assert factory.LORA_NAME in comfy_env.folder_paths.get_filename_list("loras")
    import comfy_extras.nodes_custom_sampler  # noqa: F401


class _ScaleLatent(io.ComfyNode):
    """Tiny V3 node: reports the execution context and scales a latent."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpdinvTest_ScaleLatent",
            category="testing",
            inputs=[io.Latent.Input("latent"), io.Float.Input("factor", default=2.0, min=0.0, max=10.0)],
            outputs=[io.Latent.Output(), io.String.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, factor: float) -> bool | str:
        return True if factor != 3.0 else "factor 3 is forbidden"

    @classmethod
    def execute(cls, latent: dict, factor: float) -> io.NodeOutput:
        info = (
            f"inference={torch.is_inference_mode_enabled()} grad={torch.is_grad_enabled()} "
            f"clone={cls is not _ScaleLatent} id={cls.hidden.unique_id}"
        )
        return io.NodeOutput({"samples": latent["samples"] * factor}, info)


class _AsyncNode(io.ComfyNode):
    """Tiny async V3 node returning whether inference mode is on inside the coroutine."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="SpdinvTest_Async", inputs=[io.Int.Input("n")], outputs=[io.Boolean.Output()])

    @classmethod
    async def execute(cls, n: int) -> io.NodeOutput:
        await asyncio.sleep(0)
        return io.NodeOutput(torch.is_inference_mode_enabled() and n == 5)


def test_run_node_v3_like_executor(run_node) -> None:
    latent = {"samples": torch.ones(1, 4, 2, 2)}
    out = run_node(_ScaleLatent, latent=latent)  # factor filled from its default
    assert isinstance(out, io.NodeOutput)
    scaled, info = out.result
    assert torch.equal(scaled["samples"], torch.full((1, 4, 2, 2), 2.0))
    assert scaled["samples"].is_inference()
    assert info == "inference=True grad=False clone=True id=1"

    _, info = run_node(_ScaleLatent, latent=latent, factor=0.5, _hidden={io.Hidden.unique_id: "42"}).result
    assert info.endswith("id=42")
    with pytest.raises(ValueError, match="forbidden"):
        run_node(_ScaleLatent, latent=latent, factor=3.0)
    assert run_node(_AsyncNode, n=5).result == (True,)


def test_run_node_comfy_extras_v3(comfy_extra_nodes, run_node) -> None:
    """A real V3 node from comfy_extras (AlignYourStepsScheduler) and a V1 one (FlipSigmas)."""
    (sigmas,) = run_node(comfy_extra_nodes["AlignYourStepsScheduler"], model_type="SD1", steps=10).result
    assert sigmas.shape == (11,) and sigmas[0].item() == pytest.approx(14.6146, abs=1e-3) and sigmas[-1] == 0
    (flipped,) = run_node(comfy_extra_nodes["FlipSigmas"], sigmas=sigmas)  # V1: a plain tuple
    assert flipped[0].item() == pytest.approx(1e-4) and flipped[-1].item() == pytest.approx(14.6146, abs=1e-3)


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def test_factory_is_deterministic_and_cached(sd15_checkpoint_path: Path, lora_path: Path) -> None:
    assert factory.sd15_checkpoint_path() == sd15_checkpoint_path  # reused, not rebuilt
    assert sd15_checkpoint_path.parent == factory.cache_dir()
    a, b = factory.build_lora_state_dict(), factory.build_lora_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(_file_shapes(lora_path)) == set(a)
