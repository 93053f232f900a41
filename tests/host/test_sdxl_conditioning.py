"""SDXL's own conditioning inside real ComfyUI (random-weight SDXL-class checkpoint, see
``test_model_families.py``): the photo's size as size conditioning, and ELITE's refusal of SDXL text encoders."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.tests.host.factory import sd_like_latent
from spdinv_pack.tests.host.pack_calls import invert, photo

pytestmark = pytest.mark.parametrize("family", ["sdxl"], indirect=True, scope="module")

SOURCE = "a photo of a cat"


def test_photo_size_is_the_size_conditioning_unless_the_prompt_sets_one(run_node, pack_nodes, comfy_env,
                                                                      comfy_extra_nodes, family):
    """A plain CLIPTextEncode inverts as CLIPTextEncodeSDXL at the photo's size does, not at ComfyUI's 768."""
    _, (model, clip, _) = family
    latent = {"samples": sd_like_latent(64)}
    sdxl_encode = comfy_extra_nodes["CLIPTextEncodeSDXL"]

    def sized(size):
        return run_node(sdxl_encode, clip=clip, width=size, height=size, crop_w=0, crop_h=0, target_width=size,
                        target_height=size, text_g=SOURCE, text_l=SOURCE)[0]

    (plain,) = run_node(comfy_env.nodes.CLIPTextEncode, text=SOURCE, clip=clip)
    noise = {}
    for name, cond in (("plain", plain), ("64", sized(64)), ("768", sized(768))):
        _, out = invert(run_node, pack_nodes, model, cond, latent, method="ddim", steps=4, measure_residual=False)
        noise[name] = out["samples"]
    assert torch.equal(noise["plain"], noise["64"])
    assert not torch.equal(noise["plain"], noise["768"])


def test_elite_refuses_sdxl_naming_the_clip(run_node, pack_nodes, family):
    _, (_, clip, _) = family
    with pytest.raises(ValueError, match="clip: ELITE's mapper makes SD1.x"):
        run_node(pack_nodes.ELITEMapper, mapper=None, clip_vision=None, image=photo(64), clip=clip,
                 text="a photo of a white *", placeholder="*")
