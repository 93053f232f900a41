"""A batch of photos inverted together (random-weight SD1.5): each photo stops costing UNet rows once it has
converged, and each comes out as it would alone, with its own prompt where the conditioning has one per photo."""

from __future__ import annotations

import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.pack_calls import RowCount, invert, photo

STEPS = 4


def stacked(*conds):
    """One CONDITIONING whose tensors carry a row per photo, from single-prompt ones."""
    (first, extra), others = conds[0][0], [c[0] for c in conds[1:]]
    merged = {k: torch.cat([v, *(o[1][k] for o in others)]) if isinstance(v, torch.Tensor) else v
              for k, v in extra.items()}
    return [[torch.cat([first, *(o[0] for o in others)]), merged]]


def test_converged_photos_leave_the_batch_and_each_photo_inverts_as_alone(run_node, pack_nodes, sd15, comfy_env):
    model, clip, vae = sd15
    pixels = torch.cat([torch.full_like(photo(64), 0.5), photo(64).flip(2)])
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=pixels, vae=vae)
    texts = ["a grey wall", "a photo of a cat"]
    conds = [run_node(comfy_env.nodes.CLIPTextEncode, text=t, clip=clip)[0] for t in texts]
    with RowCount(model) as together:
        batch, _ = invert(run_node, pack_nodes, model, stacked(*conds), latent, steps=STEPS)
    alone = []
    for i, cond in enumerate(conds):
        with RowCount(model) as rows:
            single, _ = invert(run_node, pack_nodes, model, cond, {"samples": latent["samples"][i:i + 1]},
                               steps=STEPS)
        alone.append((single.result, rows.rows))
    passes = int(batch.result.forwards.sum())
    print(f"\n[host] batch of 2: {passes} passes, {together.rows} UNet rows (all photos every pass: "
          f"{2 * passes}); alone {alone[0][1]} + {alone[1][1]} rows")
    assert together.rows == alone[0][1] + alone[1][1] < 2 * passes
    for i, (single, _) in enumerate(alone):
        psnr = latent_psnr(batch.result.noise[i:i + 1], single.noise)
        print(f"[host] photo {i + 1}: batch vs alone {psnr:.1f} dB, residual {batch.result.residual[:, i].tolist()}")
        assert psnr > 60
        assert torch.allclose(batch.result.residual[:, i], single.residual[:, 0], rtol=1e-2)
