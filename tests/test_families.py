"""The family table (``attention_patches/families.py``): a MODEL's family from its config class or structure, the
refusals that name the engine that fits, and one attach for UNet and DiT engines (no ComfyUI: stand-ins)."""

from __future__ import annotations

import pytest
import torch
from engine_calls import FakePatcher, edit_run
from torch import nn
from unet_standins import sd15_like

from spdinv_pack.attention_patches.families import FAMILIES, MMDIT, Family
from spdinv_pack.attention_patches.joint_attention import JointMutualAttention
from spdinv_pack.attention_patches.mutual_self_attention import MutualSelfAttention
from spdinv_pack.attention_patches.registration import (
    WRAPPER_KEY,
    EditCallWrapper,
    JointBlockPatch,
    PreAttentionPatch,
    attach_engine,
)
from spdinv_pack.attention_patches.run import RUN_KEY, EditRun


def config(name: str, *parents: type) -> object:
    """An instance of a config class called ``name`` (ComfyUI's ``supported_models`` classes are matched by name)."""
    return type(name, parents or (object,), {})()


class FluxLike(nn.Module):
    """Two double-stream and three single-stream blocks, patch size 2."""

    patch_size = 2

    def __init__(self):
        super().__init__()
        self.double_blocks = nn.ModuleList(nn.Identity() for _ in range(2))
        self.single_blocks = nn.ModuleList(nn.Identity() for _ in range(3))


class HookedBlock(nn.Module):
    """A block whose forward calls ComfyUI's DiT pre-attention hook, as 0.33's Flux blocks do."""

    def forward(self, x, transformer_options):
        for patch in transformer_options.get("patches", {}).get("attn1_patch", []):
            patch(x, x, x, extra_options=transformer_options)
        return x


class HookedFlux(FluxLike):
    def __init__(self):
        super().__init__()
        self.double_blocks = nn.ModuleList(HookedBlock() for _ in range(2))
        self.single_blocks = nn.ModuleList(HookedBlock() for _ in range(3))


class SD3Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.joint_blocks = nn.ModuleList(nn.Identity() for _ in range(4))


def test_a_model_is_matched_by_its_config_class_or_a_parent_of_it():
    sdxl = type("SDXL", (), {})
    assert Family.of(FakePatcher(sd15_like(), config("SSD1B", sdxl))).name == "SDXL"
    flux = type("Flux", (), {})
    assert Family.of(FakePatcher(FluxLike(), config("FluxSchnell", flux))).name == "Flux.1"
    assert Family.of(FakePatcher(FluxLike(), config("Flux2", flux))).name == "Flux.2"
    chroma = Family.of(FakePatcher(FluxLike(), config("Chroma")))
    assert chroma.name == "Chroma" and not chroma.guidance_distilled(FluxLike())
    family = Family.of(FakePatcher(sd15_like(), config("SD15")))
    assert family.name == "SD1.x" and family.grid == "ddim_uniform" and not family.size_conditioning
    assert family.default("masactrl_decoder_start") == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="SD1.x has no default 'mmdit_start_block'"):
        family.default("mmdit_start_block")


def test_an_unknown_config_falls_back_to_the_structure_and_else_to_no_engines():
    assert Family.of(FakePatcher(SD3Like(), config("NewModel"))).name == "NewModel (SD3.x-like)"
    assert Family.of(FakePatcher(FluxLike(), config("Other"))).name == "Other (Flux.1-like)"
    unknown = Family.of(FakePatcher(nn.Linear(2, 2), config("Lumina2")))
    assert unknown.name == "Lumina2" and unknown.engines == ()
    with pytest.raises(ValueError, match="this model is Lumina2: no SPDInv editing engine supports it yet"):
        unknown.require(MMDIT)


def test_refusals_name_the_engine_that_fits():
    sd3 = FakePatcher(SD3Like(), config("SD3"))
    with pytest.raises(ValueError, match="^model: SPDInv MasaCtrl runs on SD1.x, SD2.x, SDXL; this model is SD3.x: "
                                         "use SPDInv MM-DiT Mutual Attention"):
        attach_engine(sd3, MutualSelfAttention(), None, "wrapper")
    sd15 = FakePatcher(sd15_like(), config("SD15"))
    with pytest.raises(ValueError, match="runs on SD3.x, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image, HiDream, Wan; "
                                         "this model is SD1.x: use SPDInv Prompt-to-Prompt or SPDInv MasaCtrl or "
                                         "SPDInv Plug-and-Play"):
        attach_engine(sd15, JointMutualAttention(0.1, 0), None, "wrapper")


def test_every_family_lists_its_sites_and_each_engines_node_once():
    for family in FAMILIES:
        assert len(set(family.engines)) == len(family.engines) and family.grid in ("ddim_uniform", "simple")
    flux = next(f for f in FAMILIES if f.name == "Flux.1")
    blocks = flux.sites(FluxLike())
    assert [(b.kind, b.index, b.order) for b in blocks] == [
        ("double_block", 0, 0), ("double_block", 1, 1), ("single_block", 0, 2), ("single_block", 1, 3),
        ("single_block", 2, 4)]


def test_a_dit_engine_patches_its_blocks_on_a_clone_and_chains_onto_a_block_patch_already_there():
    base = FakePatcher(FluxLike(), config("Flux"))
    theirs = object()
    base.set_model_patch_replace(theirs, "dit", "single_block", 1)
    patched = attach_engine(base, JointMutualAttention(0.1, 3), None, "wrapper")
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(dit) == [("single_block", 1), ("single_block", 2)]
    assert isinstance(dit[("single_block", 1)], JointBlockPatch) and dit[("single_block", 1)].inner is theirs
    assert base.model_options["transformer_options"]["patches_replace"]["dit"] == {("single_block", 1): theirs}
    wrapper = patched.model_options["transformer_options"]["wrappers"]["wrapper"][WRAPPER_KEY][0]
    assert isinstance(wrapper, EditCallWrapper) and wrapper.patch_size == 2


def test_the_wrapper_tells_a_run_its_image_tokens_and_leaves_calls_outside_a_run_alone():
    wrapper = EditCallWrapper(JointMutualAttention(0.1, 0), patch_size=2)
    seen = []

    def executor(x, options):
        seen.append(options.get(RUN_KEY))
        return x

    run = edit_run(4)
    options = {RUN_KEY: run, "sigmas": run.grid[:1], "cond_or_uncond": [0]}
    wrapper(executor, torch.zeros(2, 16, 6, 5), options)
    assert isinstance(seen[-1], EditRun) and seen[-1].image_tokens == 3 * 3 and seen[-1].records is run.records
    wrapper(executor, torch.zeros(2, 16, 6, 5), {"cond_or_uncond": [0]})
    assert seen[-1] is None


def test_flux2_reads_distilled_guidance_from_the_model():
    flux2 = next(f for f in FAMILIES if f.name == "Flux.2")
    dev, klein = FluxLike(), FluxLike()
    dev.params = type("Params", (), {"guidance_embed": True})()
    klein.params = type("Params", (), {"guidance_embed": False})()
    assert flux2.guidance_distilled(dev) and not flux2.guidance_distilled(klein)


def test_where_the_blocks_call_the_pre_attention_hook_the_engine_is_one_attn1_patch_on_the_image_tokens():
    patched = attach_engine(FakePatcher(HookedFlux(), config("Flux")), JointMutualAttention(0.0, 3), None, "wrapper")
    options = patched.model_options["transformer_options"]
    assert "dit" not in options.get("patches_replace", {})
    (patch,) = options["patches"]["attn1_patch"]
    assert isinstance(patch, PreAttentionPatch) and sorted(patch.site) == [("single_block", 1), ("single_block", 2)]
    q, k, v = (torch.randn(2, 1, 3 + 4 + 2, 8) for _ in range(3))  # 3 text, 4 image, 2 reference tokens
    run = edit_run(4)
    call = {RUN_KEY: run, "sigmas": run.grid[1:2], "cond_or_uncond": [0], "img_slice": [3, 9],
            "reference_image_num_tokens": [2]}
    assert patch(q, k, v, extra_options={**call, "block_type": "single", "block_index": 0}) == {}  # not controlled
    assert patch(q, k, v, extra_options={**call, "block_type": "single", "block_index": 1, RUN_KEY: None}) == {}
    out = patch(q, k, v, extra_options={**call, "block_type": "single", "block_index": 1})
    assert torch.equal(out["k"][1, :, 3:7], k[0, :, 3:7]) and torch.equal(out["v"][1, :, 3:7], v[0, :, 3:7])
    assert torch.equal(out["k"][1, :, :3], k[1, :, :3]) and torch.equal(out["v"][1, :, 7:], v[1, :, 7:])
    assert torch.equal(out["k"][0], k[0])


def test_on_the_block_patch_route_reference_image_tokens_after_the_photos_are_left_out():
    """0.3.x Flux and Qwen-Image blocks: the wrapper counts the reference latents' tokens (an instruction editor's),
    and the shared keys and values are the noisy image's, which lie before them."""
    wrapper = EditCallWrapper(JointMutualAttention(0.0, 0), patch_size=2)
    seen = []
    run = edit_run(4)
    options = {RUN_KEY: run, "sigmas": run.grid[1:2], "cond_or_uncond": [0]}
    wrapper(lambda x, options, ref_latents: seen.append(options[RUN_KEY]), torch.zeros(2, 16, 4, 4), options,
            ref_latents=[torch.zeros(1, 16, 6, 4), torch.zeros(1, 16, 1, 2, 2)])
    assert seen[-1].image_tokens == 4 and seen[-1].reference_tokens == 6 + 1
    block = Family.of(FakePatcher(FluxLike(), config("Flux"))).sites(FluxLike())[0]
    patch = JointBlockPatch(JointMutualAttention(0.0, 0), block)
    q, k, v = (torch.randn(2, 3 + 4 + 7, 8) for _ in range(3))  # 3 text, 4 image, 7 reference tokens
    captured = {}

    def block_forward(args):
        override = args["transformer_options"]["optimized_attention_override"]
        captured["k"] = override(lambda q, k, v, *a, **kw: k, q, k, v, 1,
                                 transformer_options=args["transformer_options"])
        return args["img"]

    patch({"img": torch.zeros(2, 11, 8), "transformer_options": {**options, RUN_KEY: seen[-1]}},
          {"original_block": block_forward})
    shared = captured["k"]
    assert torch.equal(shared[1, 3:7], k[0, 3:7]) and torch.equal(shared[1, 7:], k[1, 7:])
