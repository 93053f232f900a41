"""Wan in a real ``main.py --cpu`` server: the random Wan 2.1 T2V-class model of ``test_wan.py`` loaded by ComfyUI's
diffusion-model loader, prompts from the test-only text-encoder stand-in (umT5-XXL's shape, 512 tokens of 4096), one
prompt that reconstructs a 9-frame 64² clip's latent with plain flow inversion and SPDInv, edits it with mutual
attention (identity and a new prompt) and samples the MODEL with a KSampler before and after; then the same prompt
cancelled mid-run and run again.

The clip's latent comes in as a ``.latent`` file and every result goes out through ``SaveLatent``; the shipped video
workflow (LoadVideo to SaveVideo through Wan's VAE) runs in ``test_workflows.py``.
"""

from __future__ import annotations

import time

import pytest
import torch

from spdinv_pack.tests.host import factory
from spdinv_pack.tests.host.test_family_server import (
    check_reconstruction_gain,
    mutual_attention_prompt,
    put_latent,
    saved_latents,
)
from spdinv_pack.tools.comfy_server import ExecutionInterrupted

SOURCE, TARGET = "a cat walks across the garden", "a tiger walks across the garden"
STEPS = 10
CFG = 5.0


def wan_prompt(model_file: str, latent_file: str, object_info: dict, steps: int = STEPS
               ) -> tuple[dict, dict[str, str]]:
    """The Wan check's prompt (the KSampler guided by the target against the source prompt, CFG 5)."""
    return mutual_attention_prompt("wan", model_file, latent_file, object_info, (SOURCE, TARGET, None), steps,
                                   CFG)


@pytest.fixture(scope="module")
def wan_run(server):
    """``(input latent, results, latent file)`` of the Wan prompt, run once."""
    samples = factory.FLOW_TEST_MODELS["wan"].photo(64)["samples"]
    latent_file = put_latent(server, samples, "wan_clip.latent")
    nodes, saved = wan_prompt(factory.wan21_model_path().name, latent_file, server.object_info())
    return samples, saved_latents(server, server.run(nodes, timeout=3600), saved), latent_file


def test_spdinv_reconstructs_a_clip_far_better_than_plain_flow_inversion(wan_run):
    samples, out, _ = wan_run
    assert samples.shape == (1, 16, 3, 8, 8) and out["recon spdinv 10"].shape == samples.shape
    check_reconstruction_gain("Wan (9 frames, 64²)", samples, out, (STEPS,))


def test_identity_edit_is_exact_and_a_new_prompt_changes_the_edit(wan_run):
    _, out, _ = wan_run
    assert torch.equal(out["identity edited"], out["identity recon"])
    assert not torch.equal(out["edit edited"], out["edit recon"])


def test_the_models_samples_are_bit_identical_after_the_edits(wan_run):
    _, out, _ = wan_run
    assert torch.equal(out["ksampler before"], out["ksampler after"])


def test_a_cancelled_wan_prompt_leaves_no_state_and_the_prompt_runs_again(server, wan_run):
    _, out, latent_file = wan_run
    slow, _ = wan_prompt(factory.wan21_model_path().name, latent_file, server.object_info(), steps=1000)
    prompt_id = server.submit(slow)
    deadline = time.monotonic() + 300
    while not server.get("/queue")["queue_running"]:
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(3.0)
    server.interrupt()
    with pytest.raises(ExecutionInterrupted):
        server.wait(prompt_id, timeout=600)
    nodes, saved = wan_prompt(factory.wan21_model_path().name, latent_file, server.object_info())
    again = saved_latents(server, server.run(nodes, timeout=3600), saved)
    assert all(torch.equal(again[name], out[name]) for name in out)
