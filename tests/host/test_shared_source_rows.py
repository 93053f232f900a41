"""The edit without the source's unconditional rows (random-weight SD1.5): 3 UNet rows per image and step
instead of 4, the same edit and reconstruction, and every row kept where another node's patch is on the model."""

from __future__ import annotations

import pytest

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.pack_calls import RowCount, edit, engine_model, inverted_photo

SOURCE, TARGET, STEPS = "a photo of a cat", "a photo of a dog", 4


@pytest.fixture(scope="module")
def scene(comfy_env, sd15, run_node, pack_nodes):
    return inverted_photo(comfy_env, sd15, run_node, pack_nodes, SOURCE, 64, STEPS)


def edit_counted(run_node, pack_nodes, model, inversion, source, target, **kw):
    with RowCount(model) as rows:
        edited, recon, _ = edit(run_node, pack_nodes, model, inversion, source, target, **kw)
    return edited, recon, rows.rows


@pytest.mark.parametrize("engine", ["none", "p2p", "masactrl", "pnp"])
def test_the_edit_skips_the_source_uncond_rows_and_gives_the_same_result(run_node, pack_nodes, scene, comfy_env,
                                                                         monkeypatch, engine):
    model, clip, _, source, inversion = scene
    (target,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TARGET, clip=clip)
    if engine == "p2p":  # hard masks (inversion guidance) would turn batch-size rounding into flipped pixels
        patched, source, target = run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip,
                                           source_text=SOURCE, target_text=TARGET,
                                           inversion_guidance=False).result
    elif engine != "none":
        patched, source, target = engine_model(run_node, pack_nodes, engine, model, clip, SOURCE, TARGET, source,
                                               target)
    else:
        patched = model
    shared = edit_counted(run_node, pack_nodes, patched, inversion, source, target)
    from spdinv_pack.nodes import comfy_bridge

    monkeypatch.setattr(comfy_bridge, "can_share_source", lambda _options: False)
    full = edit_counted(run_node, pack_nodes, patched, inversion, source, target)
    images = inversion.result.noise.shape[0]
    edit_db = latent_psnr(shared[0]["samples"], full[0]["samples"])
    recon_db = latent_psnr(shared[1]["samples"], full[1]["samples"])
    print(f"\n[host] {engine}: UNet rows {shared[2]} shared vs {full[2]} full; edit {edit_db:.1f} dB, "
          f"reconstruction {recon_db:.1f} dB")
    assert full[2] == 4 * images * STEPS and shared[2] == 3 * images * STEPS
    assert edit_db > 60 and recon_db > 60


def test_every_row_is_kept_when_another_nodes_patch_is_on_the_model(run_node, pack_nodes, scene, comfy_env):
    model, clip, _, source, inversion = scene
    (target,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TARGET, clip=clip)
    seen = []
    other = model.clone()
    other.set_model_attn2_patch(lambda q, k, v, extra_options: (seen.append(list(extra_options["cond_or_uncond"]))
                                                                or (q, k, v)))
    _, _, rows = edit_counted(run_node, pack_nodes, other, inversion, source, target)
    assert rows == 4 * inversion.result.noise.shape[0] * STEPS
    assert seen and all(len(c) == 2 for c in seen)
