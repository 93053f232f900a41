"""A flow model (the random SD3-class checkpoint of ``test_flow_models.py``) in a real ``main.py --cpu`` server:
one prompt reconstructs with plain flow inversion and SPDInv at 10 and 28 steps, edits with the MM-DiT mutual
attention (identity and a new prompt), and samples the checkpoint's MODEL with a KSampler before and after; then
the prompt is cancelled mid-run and runs again.

The photo comes in as an SD3-like ``.latent`` file and every result goes out through ``SaveLatent`` (the random
VAE's own latents are far too small to judge reconstruction on).
"""

from __future__ import annotations

import time

import pytest
import torch

from spdinv_pack.tests.host import factory
from spdinv_pack.tests.host.test_family_server import (
    after,
    check_reconstruction_gain,
    loaded,
    put_latent,
    reconstructions,
    save,
    saved_latents,
)
from spdinv_pack.tools.api_graph import ApiGraph
from spdinv_pack.tools.comfy_server import ExecutionInterrupted

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
RECONSTRUCTION_STEPS = (10, 28)
EDIT_STEPS = 10
CFG = 4.0


def flow_prompt(checkpoint: str, latent_file: str, object_info: dict) -> tuple[dict, dict[str, str]]:
    g = ApiGraph()
    model, clip, latent, source, target = loaded(g, checkpoint, latent_file, SOURCE, TARGET)
    empty = g.add("CLIPTextEncode", text="", clip=clip)
    ksampler = dict(model=model, seed=0, steps=2, cfg=CFG, sampler_name="euler", scheduler="simple",
                    positive=source, negative=empty)
    before = g.add("KSampler", latent_image=latent, **ksampler)
    saved = {"ksampler before": save(g, before, "flow_ksampler_before")}
    inversions = reconstructions(g, model, source, after(g, latent, [before]), RECONSTRUCTION_STEPS, saved, "flow_")
    mutual = g.add("MMDiTMutualAttention", model=model)
    edits = []
    for name, prompt, negative in (("identity", source, {}), ("edit", target, {"negative": empty})):
        # identity: the default negative (the source prompt) makes the guided target equal to the source
        edits.append(g.add("SPDInvEditSampler", model=mutual, inversion=inversions["spdinv", EDIT_STEPS],
                           source=source, target=prompt, cfg=CFG, **negative))
        saved[f"{name} edited"] = save(g, edits[-1], f"flow_{name}_edited")
        saved[f"{name} recon"] = save(g, edits[-1][1], f"flow_{name}_recon")
    later = g.add("KSampler", latent_image=after(g, latent, edits), **ksampler)
    saved["ksampler after"] = save(g, later, "flow_ksampler_after")
    return g.prompt(object_info), saved


@pytest.fixture(scope="module")
def flow_run(server):
    """``(input latent, results, prompt)`` of the flow prompt, run once."""
    checkpoint = factory.sd3_checkpoint_path()
    samples = factory.sd_like_latent(128, channels=16, scale=1.5305, shift=0.0609)
    latent_file = put_latent(server, samples, "flow_photo.latent")
    nodes, saved = flow_prompt(checkpoint.name, latent_file, server.object_info())
    return samples, saved_latents(server, server.run(nodes, timeout=3600), saved), nodes


def test_spdinv_reconstructs_far_better_than_plain_flow_inversion(flow_run):
    samples, out, _ = flow_run
    check_reconstruction_gain("SD3", samples, out, RECONSTRUCTION_STEPS)


def test_identity_edit_is_exact_and_a_new_prompt_changes_the_edit(flow_run):
    _, out, _ = flow_run
    assert torch.equal(out["identity edited"], out["identity recon"])
    assert not torch.equal(out["edit edited"], out["edit recon"])


def test_the_checkpoints_model_samples_bit_identically_after_the_edits(flow_run):
    _, out, _ = flow_run
    assert torch.equal(out["ksampler before"], out["ksampler after"])


def test_a_cancelled_flow_prompt_leaves_no_state_and_the_prompt_runs_again(server, flow_run):
    _, out, nodes = flow_run
    slow = {k: {**v, "inputs": dict(v["inputs"])} for k, v in nodes.items()}
    for node in slow.values():  # 400-step inversions before the edits: time to cancel inside them
        if node["class_type"] == "SPDInvInvert" and node["inputs"]["steps"] == EDIT_STEPS:
            node["inputs"]["steps"] = 400
    prompt_id = server.submit(slow)
    deadline = time.monotonic() + 300
    while not server.get("/queue")["queue_running"]:
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(3.0)
    server.interrupt()
    with pytest.raises(ExecutionInterrupted):
        server.wait(prompt_id, timeout=600)
    again = saved_latents(server, server.run(nodes, timeout=3600), {"ksampler after": _saver(nodes, "after")})
    assert torch.equal(again["ksampler after"], out["ksampler before"])


def _saver(nodes: dict, which: str) -> str:
    return next(k for k, v in nodes.items()
                if v["class_type"] == "SaveLatent" and v["inputs"]["filename_prefix"].endswith(f"ksampler_{which}"))
