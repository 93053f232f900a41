"""Inversion and editing on rectified-flow models inside real ComfyUI: a random SD3-class checkpoint (a depth-4
MM-DiT, CLIP-L, the 16-channel VAE) that ComfyUI's loader detects as ``SD3`` with its shifted flow schedule, and a
random Flux-dev-class diffusion model (the distilled-guidance embedder) that ComfyUI's diffusion-model loader
detects as ``Flux``: of width 256 with 2 double-stream and 4 single-stream blocks where the loader reads Flux's width
from the weights (0.33), else of Flux's full width 3072 with 1 double- and 2 single-stream blocks (0.3.64 fixes the
width; there mutual attention goes through block patches, as ComfyUI's Flux blocks have no pre-attention hook).

Random weights stand in for real SD3.x and Flux models, which cannot be downloaded here; the checks are the ones
that hold for any weights (the fixed point's gain over plain inversion, exactness, what stays untouched). Flux's
text encoders (CLIP-L and T5-XXL, 4.8 B parameters together) are too big to build here: its prompts are stood in
for by random encodings of T5's and CLIP's shapes, with the guidance value FluxGuidance would set.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from spdinv_pack.attention_patches.dit_blocks import block_from
from spdinv_pack.attention_patches.families import Family
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS, sd3_checkpoint_path, sd_like_latent
from spdinv_pack.tests.host.pack_calls import (
    RowCount,
    diffusion_model,
    edit,
    invert,
    loadable_flux_path,
    reconstruct,
    reconstruction_psnr,
)

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


@pytest.fixture(scope="module")
def sd3(comfy_env, run_node):
    """``(MODEL, CLIP, VAE)`` of the random SD3-class checkpoint, unloaded after the module."""
    import comfy.model_management

    loaded = run_node(comfy_env.nodes.CheckpointLoaderSimple, ckpt_name=sd3_checkpoint_path().name)
    yield tuple(loaded)
    del loaded
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def photo_latent():
    """A 128² SD3 latent with real latent statistics (the random VAE's own latents are far too small)."""
    return {"samples": sd_like_latent(128, channels=16, scale=1.5305, shift=0.0609)}


def encode(comfy_env, run_node, clip, text):
    return run_node(comfy_env.nodes.CLIPTextEncode, text=text, clip=clip)[0]


def test_the_loader_detects_sd3_with_its_flow_schedule(sd3):
    import comfy.model_base
    import comfy.model_sampling

    model, clip, vae = sd3
    sampling = model.get_model_object("model_sampling")
    assert isinstance(model.model, comfy.model_base.SD3)
    assert isinstance(sampling, comfy.model_sampling.CONST) and sampling.shift == pytest.approx(3.0)
    text = clip.cond_stage_model
    assert text.clip_l is not None and text.clip_g is None and text.t5xxl is None and vae.latent_channels == 16


@pytest.mark.parametrize("steps", [10, 28])
def test_spdinv_reconstructs_far_better_than_plain_flow_inversion(run_node, pack_nodes, comfy_env, sd3,
                                                                   photo_latent, steps):
    model, clip, _ = sd3
    source = encode(comfy_env, run_node, clip, SOURCE)
    psnr, passes = {}, {}
    for method in ("ddim", "spdinv"):
        with RowCount(model) as rows:
            inversion, _ = invert(run_node, pack_nodes, model, source, photo_latent, method=method, steps=steps,
                                  rel_tol=0.01, measure_residual=False)
        passes[method] = rows.rows
        _, recon = reconstruct(run_node, pack_nodes, model, inversion, source)
        psnr[method] = latent_psnr(recon["samples"], photo_latent["samples"])
        if method == "spdinv":
            result = inversion.result
            met = result.steps_under_delta()
            grid = result.sigmas
    print(f"\n[host] SD3, {steps} steps (grid {grid[0]:.3f} ... {grid[-2]:.3f}): reconstruction PSNR plain inversion "
          f"{psnr['ddim']:.1f} dB, SPDInv {psnr['spdinv']:.1f} dB; DiT passes {passes['ddim']} / {passes['spdinv']} "
          f"({passes['spdinv'] / steps:.1f} a step); {met} of {steps} steps under delta")
    assert float(grid[0]) == pytest.approx(1.0)  # the model's own schedule, from pure noise
    assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_identity_edit_is_exact_and_the_model_samples_bit_identically_after(run_node, pack_nodes, comfy_env, sd3,
                                                                            photo_latent):
    model, clip, _ = sd3
    source = encode(comfy_env, run_node, clip, SOURCE)
    ksampler = dict(seed=0, steps=2, cfg=4.0, sampler_name="euler", scheduler="simple", positive=source,
                    negative=source, latent_image=photo_latent, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    inversion, _ = invert(run_node, pack_nodes, model, source, photo_latent, steps=8, rel_tol=0.01)
    edited, recon, _ = edit(run_node, pack_nodes, model, inversion, source, source, cfg=4.0)
    assert torch.equal(edited["samples"], recon["samples"])
    target = encode(comfy_env, run_node, clip, TARGET)
    edited, recon, _ = edit(run_node, pack_nodes, model, inversion, source, target, cfg=4.0)
    assert not torch.equal(edited["samples"], recon["samples"])
    (after,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])


@pytest.fixture(scope="module")
def sd3_scene(run_node, pack_nodes, comfy_env, sd3, photo_latent):
    """The SD3 latent inverted in 8 steps with the source prompt, and both prompts' encodings."""
    model, clip, _ = sd3
    source, target = (encode(comfy_env, run_node, clip, t) for t in (SOURCE, TARGET))
    inversion, _ = invert(run_node, pack_nodes, model, source, photo_latent, steps=8, rel_tol=0.01)
    return model, inversion, source, target


def mutual(run_node, pack_nodes, model, **kw):
    settings = dict(start_step=0.1, start_block=-1.0, share="keys and values")
    return run_node(pack_nodes.MMDiTMutualAttention, model=model, **{**settings, **kw}).result[0]


def test_mutual_attention_keeps_more_of_the_photo_and_identity_stays_exact(run_node, pack_nodes, sd3_scene):
    model, inversion, source, target = sd3_scene
    plain, recon, _ = edit(run_node, pack_nodes, model, inversion, source, target, cfg=4.0)
    results = {}
    for share in ("keys and values", "values"):
        patched = mutual(run_node, pack_nodes, model, share=share, start_block=0.0)
        with RowCount(patched) as rows:
            edited, recon_m, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=4.0)
        assert rows.rows == 3 * 8  # the source's unconditional rows are left out, as without an engine
        gap = (recon_m["samples"] - recon["samples"]).abs().max().item()
        print(f"\n[host] {share}: reconstruction with vs without the engine: max abs difference {gap:.2e}")
        assert gap < 1e-4  # the source branch is untouched (up to the batch's summation order)
        results[share] = latent_psnr(edited["samples"], recon["samples"])
        same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=4.0)
        assert torch.equal(same["samples"], recon_same["samples"])
    baseline = latent_psnr(plain["samples"], recon["samples"])
    print(f"\n[host] SD3 edit vs reconstruction: plain {baseline:.3f} dB, mutual keys+values "
          f"{results['keys and values']:.3f} dB, values only {results['values']:.3f} dB")
    # Random weights attend almost uniformly, so the effects are small (+0.005 dB here; sharing the opposite way,
    # target + (target - source), gives -0.006 dB), but the edit that attends to the source's image tokens must lie
    # nearer the reconstruction than the plain edit.
    for share, psnr in results.items():
        assert psnr > baseline, f"{share}: {psnr:.4f} dB from the reconstruction, plain edit {baseline:.4f} dB"
    assert results["keys and values"] != results["values"]


def test_mutual_attention_patches_only_a_clone_and_chains_onto_a_block_patch(run_node, pack_nodes, sd3_scene):
    """Another node's block patch and attention override stay in force; the override, called by the engine with
    the keys it changed, sees the target's image tokens carry the source's in the controlled blocks only."""
    model, inversion, source, target = sd3_scene
    calls, shared = [], []

    def earlier_patch(args, extra):
        calls.append(args["img"].shape[1])
        return extra["original_block"](args)

    def earlier_override(func, q, k, v, *rest, **kwargs):
        if k.shape[0] == 4:  # an edit call: [source, target] per CFG chunk (a foreign patch is on: no sharing)
            src = 2 * list(kwargs["transformer_options"]["cond_or_uncond"]).index(0)
            shared.append(bool(torch.equal(k[src + 1, -64:], k[src, -64:])))
            assert not torch.equal(k[src + 1, :-64], k[src, :-64])  # the target's own prompt tokens
        return func(q, k, v, *rest, **kwargs)

    chained = model.clone()
    chained.set_model_patch_replace(earlier_patch, "dit", "double_block", 3)
    chained.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = earlier_override
    patched = mutual(run_node, pack_nodes, chained, start_block=0.5)
    keys = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(keys) == [("double_block", 2), ("double_block", 3)]  # depth 4: the second half
    edit(run_node, pack_nodes, patched, inversion, source, target, cfg=4.0)
    assert calls and set(calls) == {64}  # the earlier patch still runs (8×8 image tokens of the 16×16 latent)
    assert len(shared) == 4 * 8 and sum(shared) == 2 * 8  # 4 blocks a step, 2 of them controlled, 8 steps
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})


def test_mutual_attention_refuses_a_unet_model(run_node, pack_nodes, sd15):
    with pytest.raises(ValueError, match="^model: SPDInv MM-DiT Mutual Attention runs on .*this model is SD1.x: use "
                                         "SPDInv Prompt-to-Prompt"):
        mutual(run_node, pack_nodes, sd15[0])


@pytest.fixture(scope="module")
def flux(comfy_env):
    """The random Flux-dev-class MODEL as ComfyUI's diffusion-model loader loads it, unloaded after the module."""
    with diffusion_model(loadable_flux_path()) as model:
        yield model


def controlled_blocks(model) -> list[tuple[str, int]]:
    """The ``(dit patch kind, index)`` of the blocks mutual attention controls at its default start depth, by the
    pack's rule (the family's relative depth over the model's blocks in forward order)."""
    family = Family.of(model)
    blocks = family.sites(model.get_model_object("diffusion_model"))
    return [(b.kind, b.index) for b in blocks[block_from(family.default("mmdit_start_block"), len(blocks)):]]


def blocks_call_pre_attention_hook(model) -> bool:
    """Whether this ComfyUI's single-stream blocks call the DiT pre-attention hook (0.33 does, 0.3.64 does not)."""
    block = model.get_model_object("diffusion_model").single_blocks[0]
    return "attn1_patch" in inspect.getsource(inspect.getmodule(type(block)))


def flux_prompt(seed: int, guidance: float = 3.5) -> list:
    """A stand-in for a Flux prompt's CONDITIONING: T5-shaped tokens, a CLIP-L pooled vector, the guidance."""
    return FLOW_TEST_MODELS["flux"].prompt(seed, guidance)


def test_flux_inverts_with_its_guidance_far_better_than_plain_flow_inversion(run_node, pack_nodes, flux,
                                                                              photo_latent):
    import comfy.model_base
    import comfy.model_sampling

    assert isinstance(flux.model, comfy.model_base.Flux)
    assert isinstance(flux.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    source = flux_prompt(0)
    for steps in (10, 28):
        psnr = reconstruction_psnr(run_node, pack_nodes, flux, source, photo_latent, steps, "Flux")
        assert psnr["spdinv"] >= psnr["ddim"] + 10
    other = flux_prompt(0, guidance=1.0)  # the guidance value reaches the model: another inversion
    a, _ = invert(run_node, pack_nodes, flux, source, photo_latent, method="ddim", steps=4)
    b, _ = invert(run_node, pack_nodes, flux, other, photo_latent, method="ddim", steps=4)
    assert not torch.equal(a.result.noise, b.result.noise)


def test_flux_edit_at_cfg_1_with_mutual_attention_on_single_stream_blocks(run_node, pack_nodes, flux, photo_latent):
    source, target = flux_prompt(0), flux_prompt(1)
    inversion, _ = invert(run_node, pack_nodes, flux, source, photo_latent, steps=6, rel_tol=0.01)
    seen = []

    def recorder(func, q, k, v, *rest, **kwargs):
        tokens = 2 if kwargs.get("skip_reshape") else 1
        src = 2 * list(kwargs["transformer_options"]["cond_or_uncond"]).index(0)
        image = k.narrow(tokens, k.shape[tokens] - 64, 64)
        seen.append((k.shape[0], bool(torch.equal(image[src + 1], image[src]))))
        return func(q, k, v, *rest, **kwargs)

    recorded = flux.clone()
    recorded.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = recorder
    patched = mutual(run_node, pack_nodes, recorded)  # the default depth 0.65: the last blocks
    expected = controlled_blocks(flux)
    blocks = len(Family.of(flux).sites(flux.get_model_object("diffusion_model")))
    assert 0 < len(expected) < blocks and all(kind == "single_block" for kind, _ in expected)
    options = patched.model_options["transformer_options"]
    hooks = options.get("patches", {}).get("attn1_patch", [])  # ComfyUI's pre-attention hook where it has one
    assert bool(hooks) == blocks_call_pre_attention_hook(flux)  # else dit block patches (0.3.64)
    assert bool(hooks) != ("dit" in options.get("patches_replace", {}))
    keys = hooks[0].site if hooks else options["patches_replace"]["dit"]
    assert sorted(keys) == expected
    edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    assert {rows for rows, _ in seen} == {2}  # CFG 1: one row per branch, no unconditional chunk
    assert len(seen) == blocks * 6 and sum(shared for _, shared in seen) == len(expected) * 6
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=1.0)
    assert torch.equal(same["samples"], recon_same["samples"])
    assert not {"patches", "patches_replace"} & set(flux.model_options.get("transformer_options", {}))


def test_flux_inverts_and_edits_at_separate_distilled_guidances(run_node, pack_nodes, flux, photo_latent, caplog):
    """The inversion's guidance rides on the source (the edit's source branch too, so it retraces the inversion),
    the edit's on the target: the reconstruction stays the photo whatever the target's guidance, the edit follows
    the target's guidance, and a source at another guidance than the inversion's is warned about."""
    source = flux_prompt(0, guidance=1.0)
    inversion, _ = invert(run_node, pack_nodes, flux, source, photo_latent, steps=6, rel_tol=0.01)
    _, alone = reconstruct(run_node, pack_nodes, flux, inversion, source)
    edits = {g: edit(run_node, pack_nodes, flux, inversion, source, flux_prompt(1, guidance=g), cfg=1.0)
             for g in (1.0, 3.5)}
    for _, recon, _ in edits.values():
        assert (recon["samples"] - alone["samples"]).abs().max() < 1e-4
    assert latent_psnr(alone["samples"], photo_latent["samples"]) > 40
    assert not torch.allclose(edits[1.0][0]["samples"], edits[3.5][0]["samples"], atol=1e-3)
    assert "or FluxGuidance value" not in caplog.text
    with caplog.at_level("WARNING"):
        edit(run_node, pack_nodes, flux, inversion, flux_prompt(0, guidance=3.5), flux_prompt(1), cfg=1.0)
    assert "reference image or FluxGuidance value" in caplog.text
