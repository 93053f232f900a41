"""Prompt-to-Prompt inside real ComfyUI (random-weight SD1.5), node calls under inference mode."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.attention_grid import MapRow, grid_layout
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.pack_calls import check_local_blend, edit, inverted_photo

SOURCE = "a photo of a cat"


@pytest.fixture(scope="module")
def photo_scene(comfy_env, sd15, run_node, pack_nodes):
    """A 128² photo (16×16 latent: maps at 4×4) inverted once with the source prompt."""
    model, clip, latent, _, inversion = inverted_photo(comfy_env, sd15, run_node, pack_nodes, SOURCE, 128, 10)
    return model, clip, latent, inversion


def p2p(run_node, pack_nodes, model, clip, target, **kw):
    return run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text=SOURCE,
                    target_text=target, **kw).result


def test_identity_edit_equals_the_reconstruction(run_node, pack_nodes, photo_scene):
    model, clip, _, inversion = photo_scene
    patched, source, target = p2p(run_node, pack_nodes, model, clip, SOURCE)
    edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target)
    diff = (edited["samples"] - recon["samples"]).abs().max().item()
    print(f"\n[host] identity P2P edit vs reconstruction: max abs latent difference {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("mode,target,reweight", [
    ("word swap", "a photo of a dog", ""),
    ("refine", "a photo of a fluffy dog", ""),
    ("refine", "a photo of a silver dog", "silver:2.0"),
], ids=["word-swap", "refine", "reweight"])
def test_local_blend_keeps_the_source_outside_its_mask(run_node, pack_nodes, photo_scene, mode, target, reweight):
    """A random UNet attends almost uniformly (normalised word maps 0.92-1.0), so the threshold is 0.99 to
    get a mask that is neither empty nor full."""
    model, clip, _, inversion = photo_scene
    patched, source, target_cond = p2p(run_node, pack_nodes, model, clip, target, mode=mode, reweight=reweight,
                                       blend_source_words="cat", blend_target_words="dog", blend_threshold=0.99)
    edited, recon, attention = edit(run_node, pack_nodes, patched, inversion, source, target_cond)
    coverage = check_local_blend(edited, recon, attention)
    print(f"\n[host] {mode} {target!r}: blend mask covers {coverage:.0%} of the latent")


@pytest.mark.parametrize("blend_maps", ["target", "edited"])
def test_local_blend_reads_the_target_maps_the_user_chose(run_node, pack_nodes, photo_scene, blend_maps):
    """``edited`` (the official code's store): in the cross-replace window the target's ``dog`` map is the
    source's ``cat`` map, word swap mapping them one to one; ``target``: the target's own map."""
    model, clip, _, inversion = photo_scene
    patched, source, target_cond = p2p(run_node, pack_nodes, model, clip, "a photo of a dog", mode="word swap",
                                       blend_source_words="cat", blend_target_words="dog", blend_threshold=0.99,
                                       blend_maps=blend_maps)
    edited, recon, attention = edit(run_node, pack_nodes, patched, inversion, source, target_cond)
    coverage = check_local_blend(edited, recon, attention)
    cat, dog = attention.maps[0, ..., 5], attention.maps[1, ..., 5]
    print(f"\n[host] blend maps {blend_maps}: mask covers {coverage:.0%} of the latent, max |dog - cat| in the "
          f"preview maps {float((dog - cat).abs().max()):.2e}")
    assert torch.allclose(dog, cat, rtol=1e-5, atol=1e-8) == (blend_maps == "edited")


def test_attention_preview_has_one_panel_per_token(run_node, pack_nodes, photo_scene):
    model, clip, _, inversion = photo_scene
    patched, source, target = p2p(run_node, pack_nodes, model, clip, "a photo of a small dog",
                                  blend_source_words="cat", blend_target_words="dog")
    _, _, attention = edit(run_node, pack_nodes, patched, inversion, source, target)
    assert attention.labels == (["a", "photo", "of", "a", "cat"], ["a", "photo", "of", "a", "small", "dog"])
    image, mask = run_node(pack_nodes.SPDInvAttentionPreview, attention=attention, image_index=0,
                           panel_size=64).result
    rows = [MapRow("", torch.zeros(n, 1, 1).numpy(), [""] * n) for n in (5, 6)]
    assert tuple(image.shape) == (1, *grid_layout(rows, 64, has_mask=True), 3)
    assert float(image.std()) > 0.05
    assert tuple(mask.shape) == (1, 128, 128)


def test_the_model_given_to_p2p_samples_bit_identically_after_an_edit(run_node, pack_nodes, photo_scene,
                                                                     comfy_env):
    model, clip, latent, inversion = photo_scene
    (cond,) = run_node(comfy_env.nodes.CLIPTextEncode, text=SOURCE, clip=clip)
    ksampler = dict(seed=0, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal", positive=cond,
                    negative=cond, latent_image=latent, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    patched, source, target = p2p(run_node, pack_nodes, model, clip, "a photo of a dog",
                                  blend_source_words="cat", blend_target_words="dog")
    edit(run_node, pack_nodes, patched, inversion, source, target)
    (after,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_p2p_keeps_patches_other_nodes_put_on_the_model(run_node, pack_nodes, photo_scene):
    model, clip, _, inversion = photo_scene
    calls = {"n": 0}

    def counting(n, extra_options):
        calls["n"] += 1
        return n

    other = model.clone()
    other.set_model_attn1_output_patch(counting)
    patched, source, target = p2p(run_node, pack_nodes, other, clip, "a photo of a dog")
    edit(run_node, pack_nodes, patched, inversion, source, target)
    assert calls["n"] > 0


def test_cfg_one_runs_cond_only_batches(run_node, pack_nodes, photo_scene, monkeypatch):
    """At CFG 1 everywhere ComfyUI skips the unconditional batch: the controller sees cond chunks only."""
    model, clip, _, inversion = photo_scene
    patched, source, target = p2p(run_node, pack_nodes, model, clip, "a photo of a dog", proximal_guidance=False,
                                  inversion_guidance=False)
    seen = []
    engine = type(patched.model_options["transformer_options"]["spdinv_engine"])
    original = engine.cross_attention

    def spy(self, call):
        seen.append(tuple(call.chunks))
        return original(self, call)

    monkeypatch.setattr(engine, "cross_attention", spy)
    edited, recon, attention = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    assert seen and set(seen) == {(0,)}
    assert torch.isfinite(edited["samples"]).all() and attention.maps is not None


@pytest.mark.parametrize("settings,match", [
    (dict(target_text="a photo of a dog", blend_target_words="horse"), "blend_target_words: .*horse.*a photo of a dog"),
    (dict(target_text="a photo of a dog", blend_source_words="dog"), "blend_source_words: .*dog.*a photo of a cat"),
    (dict(target_text="a photo of a dog", reweight="silver:2"), "reweight: .*silver"),
    (dict(target_text="a photo of a dog", reweight="dog=2"), "reweight: .*word:factor"),
    (dict(target_text="a photo of a big dog", mode="word swap"), "target_text: .*refine"),
    (dict(target_text="a photo of a dog " + "and a cat " * 30), "target_text: .*tokens"),
], ids=["blend-target", "blend-source", "reweight-word", "reweight-format", "swap-count", "too-long"])
def test_bad_p2p_inputs_name_the_input_and_the_fix(run_node, pack_nodes, photo_scene, settings, match):
    model, clip, _, _ = photo_scene
    target = settings.pop("target_text")
    with pytest.raises(ValueError, match=match):
        p2p(run_node, pack_nodes, model, clip, target, **settings)


def test_cond_and_uncond_in_separate_unet_calls_give_the_same_edit(run_node, pack_nodes, photo_scene, monkeypatch):
    """When a batch would not fit in memory ComfyUI runs the cond and uncond batches in separate calls (one
    ``cond_or_uncond`` entry each); the controller must find the same source and target rows."""
    model, clip, _, inversion = photo_scene
    # Inversion guidance off: its pin mask is a hard threshold, so a flip from batch-size rounding would
    # change whole pixels and hide what is compared here (with it on: 31.6 dB, here and in CI).
    patched, source, target = p2p(run_node, pack_nodes, model, clip, "a photo of a dog",
                                  blend_source_words="cat", blend_target_words="dog", inversion_guidance=False)
    together, _, _ = edit(run_node, pack_nodes, patched, inversion, source, target)
    seen = []
    engine = type(patched.model_options["transformer_options"]["spdinv_engine"])
    original = engine.cross_attention

    def spy(self, call):
        seen.append(tuple(call.chunks))
        return original(self, call)

    monkeypatch.setattr(engine, "cross_attention", spy)
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: float("inf"))
    apart, _, _ = edit(run_node, pack_nodes, patched, inversion, source, target)
    assert set(seen) == {(0,), (1,)}
    # Batches of different size round differently inside attention; equal means far beyond that noise.
    psnr = latent_psnr(apart["samples"], together["samples"])
    print(f"\n[host] separate vs batched cond/uncond calls: {psnr:.1f} dB")
    assert psnr > 40
