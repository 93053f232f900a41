"""Chroma in a real ``main.py --cpu`` server: the random full-width Chroma of ``test_chroma.py`` loaded by ComfyUI's
diffusion-model loader, prompts from the test-only text-encoder stand-in (T5-XXL cannot run here), one prompt that
reconstructs with plain flow inversion and SPDInv, edits with MM-DiT mutual attention (identity and a new prompt)
and samples the MODEL with a KSampler before and after.

The photo comes in as a ``.latent`` file and every result goes out through ``SaveLatent``.
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.tests.host import factory
from spdinv_pack.tests.host.test_family_server import (
    check_reconstruction_gain,
    mutual_attention_prompt,
    put_latent,
    saved_latents,
)

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
STEPS = 10
CFG = 4.0


@pytest.fixture(scope="module")
def chroma_run(server):
    """``(input latent, results)`` of the Chroma prompt, run once."""
    samples = factory.sd_like_latent(128, channels=16, scale=0.3611, shift=0.1159)
    latent_file = put_latent(server, samples, "chroma_photo.latent")
    nodes, saved = mutual_attention_prompt("chroma", factory.chroma_model_path().name, latent_file,
                                           server.object_info(), (SOURCE, TARGET, ""), STEPS, CFG)
    return samples, saved_latents(server, server.run(nodes, timeout=3600), saved)


def test_spdinv_reconstructs_far_better_than_plain_flow_inversion(chroma_run):
    samples, out = chroma_run
    check_reconstruction_gain("Chroma", samples, out, (STEPS,))


def test_identity_edit_is_exact_and_a_new_prompt_changes_the_edit(chroma_run):
    _, out = chroma_run
    assert torch.equal(out["identity edited"], out["identity recon"])
    assert not torch.equal(out["edit edited"], out["edit recon"])


def test_the_models_samples_are_bit_identical_after_the_edits(chroma_run):
    _, out = chroma_run
    assert torch.equal(out["ksampler before"], out["ksampler after"])
