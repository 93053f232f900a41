"""Plug-and-Play injection rules on hand-made tensors and a small stand-in UNet (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from engine_calls import attention_call, edit_run
from torch import nn
from unet_standins import ResBlockLike, Upsample

from spdinv_pack.attention_patches.attention_math import plain_attention
from spdinv_pack.attention_patches.plug_and_play import PlugAndPlay, pnp_attention_layers
from spdinv_pack.attention_patches.registration import EditCallWrapper
from spdinv_pack.attention_patches.run import RUN_KEY
from spdinv_pack.attention_patches.unet_layers import TransformerLayer, resblock_output_path
from spdinv_pack.spdinv.branches import BranchLayout

HEADS, DIM, STEPS = 2, 4, 10


class DecoderLike(nn.Module):
    """12 output blocks in 4 stages of 3, like SD1.x's decoder; runs them in order."""

    def __init__(self):
        super().__init__()
        self.output_blocks = nn.ModuleList(
            nn.Sequential(ResBlockLike(), *([Upsample()] if i in (2, 5, 8) else [])) for i in range(12))

    def forward(self, x, transformer_options=None):
        for block in self.output_blocks:
            x = block(x)
        return x


def decoder_layers() -> list[TransformerLayer]:
    return [TransformerLayer("output", i, 0, 4 + i, 0, self_attention=True, cross_attention=True) for i in range(3, 12)]


def engine(**kw) -> PlugAndPlay:
    pnp = PlugAndPlay("output_blocks.4.0.out_layers.3", qk_layers=pnp_attention_layers(decoder_layers()), **kw)
    pnp.check_sites(decoder_layers())
    return pnp


def source_to_target(t: torch.Tensor, chunks: int) -> torch.Tensor:
    return BranchLayout.of_call(t.shape[0], [0] * chunks, "test").source_to_target(t)


def test_the_feature_block_is_the_second_resblock_of_the_second_decoder_stage():
    assert resblock_output_path(DecoderLike(), stage=1, index=1) == "output_blocks.4.0.out_layers.3"
    with pytest.raises(ValueError, match="no decoder stage 7"):
        resblock_output_path(DecoderLike(), stage=7, index=0)


def test_qk_injection_covers_the_decoder_but_its_first_attention_block():
    pnp = engine()
    assert sorted(key[1] for key in pnp.qk_layers) == list(range(4, 12))


def test_queries_and_keys_of_the_target_rows_come_from_the_source_inside_the_window_only():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 9, HEADS * DIM, generator=g) for _ in range(3))
    pnp = engine(attention_fraction=0.5)
    injected_layer, first_layer = decoder_layers()[1], decoder_layers()[0]

    def self_attention(step, site):
        return pnp.attention(attention_call("self", q, k, v, HEADS, site, edit_run(STEPS), step, (1, 0),
                                            spatial=(3, 3)))

    out = self_attention(4, injected_layer)
    expected = plain_attention(source_to_target(q, 2), source_to_target(k, 2), v, HEADS)
    torch.testing.assert_close(out, expected)
    plain = plain_attention(q, k, v, HEADS)
    torch.testing.assert_close(out[[0, 2]], plain[[0, 2]])
    torch.testing.assert_close(self_attention(5, injected_layer), plain)
    torch.testing.assert_close(self_attention(0, first_layer), plain)


class Executor:
    """Stands in for ComfyUI's WrapperExecutor: ``class_obj`` is the UNet, calling it runs the UNet."""

    def __init__(self, unet: nn.Module):
        self.class_obj = unet

    def __call__(self, x, transformer_options):
        return self.class_obj(x, transformer_options)


def run(unet: nn.Module, x: torch.Tensor, pnp: PlugAndPlay | None, step: int) -> torch.Tensor:
    """One UNet call of an edit run at ``step`` through the pack's wrapper (``pnp`` None: the plain UNet)."""
    edit = edit_run(STEPS)
    options = {RUN_KEY: edit, "sigmas": edit.grid[step].repeat(4), "cond_or_uncond": [1, 0]}
    if pnp is None:
        return Executor(unet)(x, transformer_options=options)
    return EditCallWrapper(pnp)(Executor(unet), x, transformer_options=options)


def test_feature_injection_replaces_the_target_rows_of_the_tapped_block_during_the_window():
    torch.manual_seed(0)
    unet = DecoderLike()
    x = torch.randn(4, 4, 6, 6)
    seen = []
    unet.output_blocks[4][0].out_layers[3].register_forward_hook(lambda m, i, out: seen.append(out.clone()))
    pnp = engine(feature_fraction=0.8)
    injected = run(unet, x, pnp, step=7)
    assert torch.equal(seen[-1][[1, 3]], seen[-1][[0, 2]])
    plain = run(unet, x, None, step=7)
    assert torch.equal(injected[[0, 2]], plain[[0, 2]]) and not torch.allclose(injected[[1, 3]], plain[[1, 3]])
    assert torch.equal(run(unet, x, pnp, step=8), plain)
    assert len(unet.output_blocks[4][0].out_layers[3]._forward_hooks) == 1  # the test's own, not the engine's


def test_both_fractions_zero_equal_an_uninjected_pass_and_leave_no_hooks():
    torch.manual_seed(1)
    unet = DecoderLike()
    x = torch.randn(4, 4, 6, 6)
    pnp = engine(feature_fraction=0.0, attention_fraction=0.0)
    assert torch.equal(run(unet, x, pnp, step=0), unet(x))
    assert all(not m._forward_hooks for m in unet.modules())


def test_fractions_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="feature_fraction"):
        PlugAndPlay("x", feature_fraction=1.2)
