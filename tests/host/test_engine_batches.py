"""Every engine edits an image batch image by image, and non-square images (random-weight SD1.5)."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.pack_calls import edit, invert, photo

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


def pictures(height: int, width: int, batch: int) -> torch.Tensor:
    """``batch`` different synthetic photos of ``height``×``width``."""
    side = max(height, width)
    base = photo(side)[:, :height, :width]
    return torch.cat([base if i == 0 else base.flip(2) * 0.8 for i in range(batch)])


def engines(run_node, pack_nodes, model, clip):
    """(name, patched model, source cond, target cond, negative) for each engine with its recipe."""
    from nodes import CLIPTextEncode

    def encode(text):
        return run_node(CLIPTextEncode, text=text, clip=clip)[0]

    p2p_model, p2p_source, p2p_target = run_node(
        pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text=SOURCE, target_text=TARGET,
        mode="word swap", cross_replace=0.8, self_replace=0.6, blend_source_words="cat", blend_target_words="dog",
        blend_threshold=0.3, blend_start=0.2, reweight="dog:2", proximal_guidance=True, proximal_quantile=0.7,
        inversion_guidance=True).result
    masa_model = run_node(pack_nodes.MasaCtrlMutualAttention, model=model, start_step=0.0, start_layer=10,
                          mask_mode="auto", proximal_guidance=True, proximal_quantile=0.6,
                          source_from_inversion=False, clip=clip, source_text=SOURCE, target_text=TARGET,
                          source_words="cat", target_words="dog", auto_threshold=0.1).result[0]
    pnp_model = run_node(pack_nodes.PNPInjection, model=model, feature_fraction=0.8,
                         attention_fraction=0.5).result[0]
    return [
        ("p2p", p2p_model, p2p_source, p2p_target, None),
        ("masactrl", masa_model, encode(SOURCE), encode(TARGET), encode("")),
        ("pnp", pnp_model, encode(""), encode(TARGET), encode("ugly, blurry, black, low res, unrealistic")),
    ]


@pytest.mark.parametrize("height,width,batch", [(64, 64, 2), (80, 112, 1)], ids=["batch-2", "non-square"])
def test_each_engine_edits_every_image_of_a_batch_and_non_square_images(run_node, pack_nodes, sd15, comfy_env,
                                                                       height, width, batch):
    model, clip, vae = sd15
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=pictures(height, width, batch), vae=vae)
    (source,) = run_node(comfy_env.nodes.CLIPTextEncode, text=SOURCE, clip=clip)
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=4)
    alone = None
    if batch == 2:
        alone, _ = invert(run_node, pack_nodes, model, source, {"samples": latent["samples"][1:]}, steps=4)
    for name, patched, src, tgt, neg in engines(run_node, pack_nodes, model, clip):
        extra = {} if neg is None else {"negative": neg}
        edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, src, tgt, **extra)
        assert edited["samples"].shape == latent["samples"].shape, name
        assert torch.isfinite(edited["samples"]).all() and torch.isfinite(recon["samples"]).all(), name
        if alone is not None:
            single, _, _ = edit(run_node, pack_nodes, patched, alone, src, tgt, **extra)
            psnr = latent_psnr(edited["samples"][1:], single["samples"])
            print(f"\n[host] {name}: image 2 of a batch vs edited alone {psnr:.1f} dB")
            assert psnr > 30, name
