"""The engines composed with another pack's attention replacement, inside real ComfyUI (random SD1.5).

The stand-in is shaped like IPAdapter_plus's ``attn2`` replacement: the host's attention over the text plus
a weighted attention over extra (image) keys and values, registered with ``set_model_attn2_replace`` on every
cross-attention layer before the engine node runs.
"""

from __future__ import annotations

import pytest
import torch
from comfy.ldm.modules.attention import optimized_attention

from spdinv_pack.attention_patches.unet_layers import transformer_layers
from spdinv_pack.tests.host.pack_calls import edit, inverted_photo

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


class ImagePromptAttention:
    """IP-Adapter-style ``attn2`` replacement: text attention + ``weight`` × attention to 4 image tokens."""

    calls = 0
    """Calls of every copy (``ModelPatcher.clone`` deep-copies patches)."""

    def __init__(self, weight: float = 1.0, seed: int = 0):
        self.weight, self.seed = weight, seed

    def __call__(self, q, k, v, extra_options):
        ImagePromptAttention.calls += 1
        heads, rows, inner = extra_options["n_heads"], q.shape[0], q.shape[-1]
        g = torch.Generator().manual_seed(self.seed + inner)
        k_img, v_img = (3.0 * torch.randn(1, 4, inner, generator=g).to(q) for _ in range(2))
        return optimized_attention(q, k, v, heads) + self.weight * optimized_attention(
            q, k_img.expand(rows, -1, -1), v_img.expand(rows, -1, -1), heads)


def with_image_prompt(model):
    """A clone of ``model`` with the stand-in on every cross-attention layer."""
    clone, patch = model.clone(), ImagePromptAttention()
    for layer in transformer_layers(clone.get_model_object("diffusion_model")):
        if layer.cross_attention:
            clone.set_model_attn2_replace(patch, *layer.key)
    return clone


@pytest.fixture(scope="module")
def scene(comfy_env, sd15, run_node, pack_nodes):
    model, clip, _, source, inversion = inverted_photo(comfy_env, sd15, run_node, pack_nodes, SOURCE, 64, 6)
    return model, clip, source, inversion


def differ(a, b) -> float:
    return (a["samples"] - b["samples"]).abs().max().item()


def test_p2p_on_an_image_prompt_replacement_shows_both_effects(run_node, pack_nodes, scene):
    model, clip, source, inversion = scene
    ip_model = with_image_prompt(model)
    settings = {"inversion_guidance": False}

    def p2p(base):
        return run_node(pack_nodes.P2PAttentionControl, model=base, clip=clip, source_text=SOURCE,
                        target_text=TARGET, **settings).result

    p2p_only, src, tgt = p2p(model)
    both, _, _ = p2p(ip_model)
    before = ImagePromptAttention.calls
    edited_both = edit(run_node, pack_nodes, both, inversion, src, tgt)[0]
    calls = ImagePromptAttention.calls - before
    edited_p2p = edit(run_node, pack_nodes, p2p_only, inversion, src, tgt)[0]
    edited_ip = edit(run_node, pack_nodes, ip_model, inversion, src, tgt)[0]  # image prompt, no engine
    print(f"\n[host] P2P+IP vs P2P: {differ(edited_both, edited_p2p):.3f}; vs IP alone: "
          f"{differ(edited_both, edited_ip):.3f}; replacement calls {calls}")
    assert calls > 0
    assert differ(edited_both, edited_p2p) > 1e-2  # the image prompt acts under P2P
    assert differ(edited_both, edited_ip) > 1e-2  # P2P acts on top of the image prompt
    identity, s2, t2 = run_node(pack_nodes.P2PAttentionControl, model=ip_model, clip=clip, source_text=SOURCE,
                                target_text=SOURCE).result
    edited, recon, _ = edit(run_node, pack_nodes, identity, inversion, s2, t2)
    assert differ(edited, recon) <= 1e-4  # identity stays exact with the replacement chained


def test_masactrl_on_an_image_prompt_replacement_shows_both_effects(comfy_env, run_node, pack_nodes, scene):
    model, clip, source, inversion = scene
    ip_model = with_image_prompt(model)
    settings = {"start_step": 0.0, "start_layer": 0}
    (target,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TARGET, clip=clip)
    both = run_node(pack_nodes.MasaCtrlMutualAttention, model=ip_model, **settings).result[0]
    masa = run_node(pack_nodes.MasaCtrlMutualAttention, model=model, **settings).result[0]
    edited_both = edit(run_node, pack_nodes, both, inversion, source, target)[0]
    edited_masa = edit(run_node, pack_nodes, masa, inversion, source, target)[0]
    edited_ip = edit(run_node, pack_nodes, ip_model, inversion, source, target)[0]
    print(f"\n[host] MasaCtrl+IP vs MasaCtrl: {differ(edited_both, edited_masa):.3f}; vs IP alone: "
          f"{differ(edited_both, edited_ip):.3f}")
    assert differ(edited_both, edited_masa) > 1e-2 and differ(edited_both, edited_ip) > 1e-2


@pytest.fixture(scope="module")
def controlnet(sd15):
    """A random-weight SD1.5 ControlNet (original layout), loaded by ComfyUI's own ControlNet loader.

    Built in memory from the layout ComfyUI detects for the loaded UNet; its zero convolutions are random
    (a trained ControlNet's are not zero either), so it changes what it is applied to.
    """
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_detection
    import comfy.ops

    unet_sd = sd15[0].model.diffusion_model.state_dict()
    config = dict(comfy.model_detection.model_config_from_unet(unet_sd, "", True).unet_config)
    config.pop("out_channels")
    config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="meta")
    shapes = {k: v.shape for k, v in comfy.cldm.cldm.ControlNet(**config).state_dict().items()}
    g = torch.Generator().manual_seed(7)
    sd = {f"control_model.{k}": (torch.randn(s, generator=g) / (s[1:].numel() ** 0.5 if len(s) > 1 else 10.0))
          for k, s in shapes.items()}
    return comfy.controlnet.load_controlnet_state_dict(sd)


@pytest.mark.parametrize("engine", ["none", "p2p"])
def test_a_controlnet_on_the_target_changes_the_target_and_leaves_the_source_alone(comfy_env, run_node, pack_nodes,
                                                                                  scene, controlnet, engine):
    model, clip, source, inversion = scene
    (target,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TARGET, clip=clip)
    if engine == "p2p":
        model, source, target = run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text=SOURCE,
                                         target_text=TARGET).result
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    controlled, negative = run_node(comfy_env.nodes.ControlNetApplyAdvanced, positive=target, negative=source,
                                    control_net=controlnet, image=hint, strength=1.0, start_percent=0.0,
                                    end_percent=1.0)
    edited_cn, recon_cn, _ = edit(run_node, pack_nodes, model, inversion, source, controlled, negative=negative)
    edited, recon, _ = edit(run_node, pack_nodes, model, inversion, source, target)
    print(f"\n[host] ControlNet on the target ({engine}): target changed by {differ(edited_cn, edited):.3f}, "
          f"source by {differ(recon_cn, recon):.2e}")
    assert differ(edited_cn, edited) > 1e-2
    assert differ(recon_cn, recon) <= 1e-5
