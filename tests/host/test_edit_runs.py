"""A run is a value: two edits on clones of one engine-patched MODEL (ComfyUI >= 0.14 shares the patch objects
between clones, 0.3.64 copies them) give each its own result, the same as each edit alone."""

from __future__ import annotations

import torch
from pack_calls import edit, invert, photo

from spdinv_pack.attention_patches.registration import engine_of

SIZE = 128


def test_two_edits_on_clones_of_one_engine_patched_model_give_what_each_gives_alone(comfy_env, sd15, run_node,
                                                                                     pack_nodes):
    model, clip, vae = sd15
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(SIZE), vae=vae)
    patched, source, _ = run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip,
                                  source_text="a photo of a cat", target_text="a photo of a dog",
                                  blend_source_words="cat", blend_target_words="dog",
                                  blend_threshold=0.99).result
    targets = {name: run_node(comfy_env.nodes.CLIPTextEncode, text=f"a photo of a {name}", clip=clip)[0]
               for name in ("dog", "fox")}
    inversions = {3: invert(run_node, pack_nodes, model, source, latent, steps=3)[0],
                  5: invert(run_node, pack_nodes, model, source, latent, steps=5)[0]}
    jobs = (("dog", 3), ("fox", 5))

    def run(clone, name, steps):
        edited, recon, maps = edit(run_node, pack_nodes, clone, inversions[steps], source, targets[name])
        return edited["samples"], recon["samples"], maps

    alone = {job: run(patched.clone(), *job) for job in jobs}
    clones = [patched.clone() for _ in jobs]
    together = {job: run(clone, *job) for clone, job in zip(clones, jobs, strict=True)}
    first_maps = together[jobs[0]][2]
    run(clones[0], *jobs[1])  # a later run on the same clone leaves the first run's outputs as they were
    assert engine_of(clones[0]) is not None and engine_of(clones[1]) is not None
    for job in jobs:
        edited, recon, maps = together[job]
        assert torch.equal(edited, alone[job][0]) and torch.equal(recon, alone[job][1])
        assert torch.equal(maps.maps, alone[job][2].maps) and torch.equal(maps.blend_mask, alone[job][2].blend_mask)
    assert torch.equal(first_maps.maps, alone[jobs[0]][2].maps)
    coverage = float(first_maps.blend_mask.float().mean())
    assert 0.0 < coverage < 1.0, "a trivial blend mask would not show the runs' records apart"
