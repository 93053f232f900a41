"""Calls of the pack's nodes shared by the host tests, and the synthetic photo they invert."""

from __future__ import annotations

import torch

STEPS = 10


def photo(size: int = 64) -> torch.Tensor:
    """A smooth synthetic RGB image [1, H, W, 3] in 0..1."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(4 * y)], dim=-1)
    return img.unsqueeze(0)


def invert(run_node, pack_nodes, model, source, latent, **kw):
    settings = dict(steps=STEPS, method="spdinv", solver="anderson", max_iters=25, lr=1e-3, delta=5e-6,
                    rel_tol=0.0, measure_residual=True)
    settings.update(kw)
    return run_node(pack_nodes.SPDInvInvert, model=model, source=source, latent=latent, **settings).result


def edit(run_node, pack_nodes, model, inversion, source, target, cfg=7.5, **kw):
    """All outputs of the edit sampler: (edited, reconstruction, attention)."""
    return run_node(pack_nodes.SPDInvEditSampler, model=model, inversion=inversion, source=source, target=target,
                    cfg=cfg, **kw).result


def reconstruct(run_node, pack_nodes, model, inversion, source, target=None, cfg=1.0):
    """(edited, reconstruction) LATENTs; target defaults to the source prompt."""
    return edit(run_node, pack_nodes, model, inversion, source, target if target is not None else source, cfg)[:2]
