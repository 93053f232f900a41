"""Plug-and-Play inside real ComfyUI (random-weight SD1.5), node calls under inference mode."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.tests.host.pack_calls import edit, invert, photo

SOURCE, TARGET = "a photo of a cat", "a photo of a tiger"
NEGATIVE = "ugly, blurry, black, low res, unrealistic"
STEPS = 10


@pytest.fixture(scope="module")
def pnp_scene(comfy_env, sd15, run_node, pack_nodes):
    """A 128² photo inverted with the source caption, and the empty, target and negative encodings."""
    model, clip, vae = sd15
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(128), vae=vae)
    source, empty, target, negative = (run_node(comfy_env.nodes.CLIPTextEncode, text=t, clip=clip)[0]
                                       for t in (SOURCE, "", TARGET, NEGATIVE))
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=STEPS)
    return model, inversion, (empty, target, negative)


def pnp(run_node, pack_nodes, model, feature_fraction=0.8, attention_fraction=0.5):
    return run_node(pack_nodes.PNPInjection, model=model, feature_fraction=feature_fraction,
                    attention_fraction=attention_fraction).result[0]


def pnp_edit(run_node, pack_nodes, model, scene):
    _, inversion, (empty, target, negative) = scene
    return edit(run_node, pack_nodes, model, inversion, empty, target, negative=negative)


def test_target_features_equal_the_source_features_during_injected_steps(run_node, pack_nodes, pnp_scene):
    model = pnp_scene[0]
    tapped = model.get_model_object("diffusion_model").output_blocks[4][0].out_layers[-1]
    seen: list[torch.Tensor] = []
    handle = tapped.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        edited, _, _ = pnp_edit(run_node, pack_nodes, pnp(run_node, pack_nodes, model), pnp_scene)
    finally:
        handle.remove()
    assert len(seen) == STEPS, "one UNet call per step (cond and uncond batched)"
    injected = int(0.8 * STEPS)
    for step, out in enumerate(seen):
        # 3 rows: source and target conditional, target unconditional (the source's unconditional row repeats
        # its conditional one and is not computed); injected, every target row holds the source's features.
        assert out.shape[0] == 3
        same = all(torch.equal(out[0], row) for row in out[1:])
        assert same == (step < injected), step
    assert torch.isfinite(edited["samples"]).all()


def test_both_fractions_zero_give_the_engine_free_edit_exactly(run_node, pack_nodes, pnp_scene):
    model = pnp_scene[0]
    plain, _, _ = pnp_edit(run_node, pack_nodes, model, pnp_scene)
    idle, _, _ = pnp_edit(run_node, pack_nodes, pnp(run_node, pack_nodes, model, 0.0, 0.0), pnp_scene)
    injected, _, _ = pnp_edit(run_node, pack_nodes, pnp(run_node, pack_nodes, model), pnp_scene)
    assert torch.equal(idle["samples"], plain["samples"])
    assert not torch.equal(injected["samples"], plain["samples"])


def test_the_model_given_to_pnp_samples_bit_identically_and_keeps_no_hooks(run_node, pack_nodes, pnp_scene,
                                                                         comfy_env):
    model, inversion, (empty, target, _) = pnp_scene
    ksampler = dict(seed=0, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal", positive=target,
                    negative=empty, latent_image={"samples": inversion.source_latent}, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    pnp_edit(run_node, pack_nodes, pnp(run_node, pack_nodes, model), pnp_scene)
    (after,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])
    unet = model.get_model_object("diffusion_model")
    assert not any(m._forward_hooks for m in unet.modules())
    assert not model.wrappers


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fractions_outside_zero_one_are_refused(run_node, pack_nodes, pnp_scene, fraction):
    with pytest.raises(ValueError, match="feature_fraction"):
        pnp(run_node, pack_nodes, pnp_scene[0], feature_fraction=fraction)


def test_color_fix_node_keeps_the_photos_colours_and_names_a_size_mismatch(run_node, pack_nodes, comfy_env):
    photo_image = photo(64)
    edit_image = photo_image.flip(2) * 0.5
    (fixed,) = run_node(pack_nodes.SPDInvWaveletColorFix, edit=edit_image, source=photo_image, levels=5).result
    assert fixed.shape == edit_image.shape and 0.0 <= float(fixed.min()) and float(fixed.max()) <= 1.0
    assert abs(float(fixed.mean()) - float(photo_image.mean())) < abs(float(edit_image.mean()) -
                                                                       float(photo_image.mean()))
    with pytest.raises(ValueError, match="^source: "):
        run_node(pack_nodes.SPDInvWaveletColorFix, edit=edit_image, source=photo(32), levels=5)
