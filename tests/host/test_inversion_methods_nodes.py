"""The other inversions of SPDInvInvert through the nodes (random-weight SD1.5): negative-prompt inversion,
null-text inversion, DirectInversion, and the paper's DDIM baseline (source_guidance 'like target')."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import sd_like_latent
from spdinv_pack.tests.host.pack_calls import RowCount, edit, invert

SOURCE, TARGET, STEPS = "a photo of a cat", "a photo of a dog", 4


@pytest.fixture(scope="module")
def prompts(comfy_env, sd15, run_node):
    model, clip, _ = sd15
    encode = [run_node(comfy_env.nodes.CLIPTextEncode, text=t, clip=clip)[0] for t in (SOURCE, TARGET, "")]
    return model, {"samples": sd_like_latent(64)}, *encode


def test_negative_prompt_inversion_edits_with_the_source_prompt_as_negative(run_node, pack_nodes, prompts, caplog):
    model, latent, source, target, null = prompts
    inv, _ = invert(run_node, pack_nodes, model, source, latent, method="negative_prompt", steps=STEPS)
    assert inv.method == "negative_prompt" and inv.result.settings.method == "ddim"
    plain, _, _ = edit(run_node, pack_nodes, model, inv, source, target)
    with caplog.at_level("WARNING"):
        ignored, _, _ = edit(run_node, pack_nodes, model, inv, source, target, negative=null)
    assert torch.equal(plain["samples"], ignored["samples"])
    assert any("negative_prompt inversion" in r.getMessage() for r in caplog.records)
    from spdinv_pack.nodes.residual_plot import _series

    assert _series(inv, (0, 0, 0)).label.startswith("negative_prompt")


def test_direct_inversion_keeps_the_guided_source_on_the_inversion_and_needs_a_negative(run_node, pack_nodes,
                                                                                         prompts):
    model, latent, source, target, null = prompts
    direct, _ = invert(run_node, pack_nodes, model, source, latent, method="direct_inversion", steps=STEPS)
    ddim, _ = invert(run_node, pack_nodes, model, source, latent, method="ddim", steps=STEPS)
    with pytest.raises(ValueError, match="negative"):
        edit(run_node, pack_nodes, model, direct, source, target)
    with RowCount(model) as rows:
        edited, recon, _ = edit(run_node, pack_nodes, model, direct, source, target, negative=null)
    _, baseline, _ = edit(run_node, pack_nodes, model, ddim, source, target, negative=null,
                          source_guidance="like target")
    _, exact, _ = edit(run_node, pack_nodes, model, ddim, source, target, negative=null)
    db = {name: latent_psnr(r["samples"], latent["samples"]) for name, r in
          (("direct", recon), ("baseline", baseline), ("exact", exact))}
    print(f"\n[host] source branch vs the photo's latent: DirectInversion {db['direct']:.1f} dB, DDIM baseline "
          f"(guided source) {db['baseline']:.1f} dB, DDIM exact source {db['exact']:.1f} dB; {rows.rows} UNet rows")
    assert rows.rows == 4 * STEPS
    assert db["direct"] > db["baseline"] + 3
    assert torch.isfinite(edited["samples"]).all()


def test_a_guided_source_cannot_be_asked_of_negative_prompt_inversion(run_node, pack_nodes, prompts):
    model, latent, source, target, null = prompts
    inv, _ = invert(run_node, pack_nodes, model, source, latent, method="negative_prompt", steps=2)
    with pytest.raises(ValueError, match="source_guidance"):
        edit(run_node, pack_nodes, model, inv, source, target, negative=null, source_guidance="like target")


def test_null_text_inversion_tunes_negatives_that_make_the_guided_source_retrace_it(run_node, pack_nodes,
                                                                                      prompts):
    model, latent, source, target, null = prompts
    with pytest.raises(ValueError, match="negative"):
        invert(run_node, pack_nodes, model, source, latent, method="null_text", steps=STEPS)
    nti, _ = invert(run_node, pack_nodes, model, source, latent, method="null_text", steps=STEPS, negative=null)
    ddim, _ = invert(run_node, pack_nodes, model, source, latent, method="ddim", steps=STEPS)
    assert nti.null_text.embeddings.shape == (STEPS, 1, *null[0][0].shape[1:])
    assert torch.equal(nti.result.latents, ddim.result.latents)
    _, recon, _ = edit(run_node, pack_nodes, model, nti, source, source, negative=null)
    _, baseline, _ = edit(run_node, pack_nodes, model, ddim, source, source, negative=null,
                          source_guidance="like target")
    db = {name: latent_psnr(r["samples"], latent["samples"]) for name, r in (("nti", recon), ("ddim", baseline))}
    print(f"\n[host] guided source (CFG 7.5) vs the photo's latent: null-text {db['nti']:.1f} dB, "
          f"DDIM baseline {db['ddim']:.1f} dB")
    assert db["nti"] > db["ddim"] + 3
