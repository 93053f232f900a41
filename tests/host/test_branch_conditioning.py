"""The edit sampler's per-branch conditioning (nodes/branch_conditioning.py) with ComfyUI's ControlBase."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.nodes.branch_conditioning import BranchControl, edit_conditioning


class StandInControl:
    """Returns residuals of ones for every row of the batch, and counts lifecycle calls."""

    def __init__(self, value: float = 1.0):
        self.value, self.pre_runs, self.cleanups = value, 0, 0

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        ones = torch.full((x_noisy.shape[0], 2, 1, 1), self.value)
        return {"input": [ones], "middle": [ones.clone()], "output": [None, ones.clone()]}

    def pre_run(self, model, fn):
        self.pre_runs += 1

    def cleanup(self):
        self.cleanups += 1

    def get_models(self):
        return [f"model-{self.value}"]

    def get_extra_hooks(self):
        return []

    def inference_memory_requirements(self, dtype):
        return 10


def cond(control=None, **extra):
    meta = {"pooled_output": torch.zeros(1, 4), **extra}
    if control is not None:
        meta["control"] = control
    return [[torch.zeros(1, 77, 8), meta]]


def test_a_control_on_the_target_acts_on_the_target_rows_of_every_chunk_only():
    control = StandInControl()
    positive, negative = edit_conditioning(cond(), cond(control, control_apply_to_uncond=False),
                                           cond(control, control_apply_to_uncond=False), rows=2)
    branch = positive[0][1]["control"]
    assert isinstance(branch, BranchControl) and branch.controls == [None, control]
    assert negative[0][1]["control"] is branch  # same controls: one object, so ComfyUI batches cond and uncond
    out = branch.get_control(torch.zeros(8, 4, 2, 2), None, {}, 2, {"cond_or_uncond": [0, 1]})
    rows = out["input"][0][:, 0, 0, 0].tolist()
    assert rows == [0, 0, 1, 1, 0, 0, 1, 1] and out["output"][0] is None
    branch.pre_run(None, None)
    branch.cleanup()
    assert control.pre_runs == 1 and control.cleanups == 1
    assert branch.get_models() == ["model-1.0"] and branch.inference_memory_requirements(None) == 10


def test_controls_on_both_branches_stay_on_their_rows():
    a, b = StandInControl(1.0), StandInControl(2.0)
    positive, negative = edit_conditioning(cond(a), cond(b), None, rows=1)
    out = positive[0][1]["control"].get_control(torch.zeros(2, 4, 2, 2), None, {}, 1, {"cond_or_uncond": [0]})
    assert out["middle"][0][:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert negative[0][1]["control"].controls == [a, a]  # the negative defaults to the source prompt, control included


def test_the_legacy_apply_to_uncond_flag_gives_a_branchs_control_to_its_negative():
    control = StandInControl()
    _, negative = edit_conditioning(cond(), cond(control, control_apply_to_uncond=True), cond(), rows=1)
    assert negative[0][1]["control"].controls == [None, control]


def test_extras_that_differ_between_branches_are_refused_naming_both_inputs():
    with pytest.raises(ValueError, match="source, target: .*'width'"):
        edit_conditioning(cond(width=1024), cond(width=768), None, rows=1)
    positive, _ = edit_conditioning(cond(width=1024), cond(width=1024), cond(width=1024), rows=1)
    assert positive[0][1]["width"] == 1024 and positive[0][1]["pooled_output"].shape == (2, 4)
    with pytest.raises(ValueError, match="'mask'"):
        edit_conditioning(cond(mask=torch.ones(1, 8, 8)), cond(), None, rows=1)


def test_each_branch_keeps_its_distilled_guidance_on_a_guidance_distilled_model():
    positive, negative = edit_conditioning(cond(guidance=1.0), cond(guidance=3.5), None, rows=2,
                                           branch_guidance=True)
    meta = positive[0][1]
    assert meta["guidance"] is None  # no model default over the per-row values
    assert meta["model_conds"]["guidance"].cond.tolist() == [1.0, 1.0, 3.5, 3.5]
    assert negative[0][1]["guidance"] == 1.0 and "model_conds" not in negative[0][1]  # [source, source]: one value
    with pytest.raises(ValueError, match="source, target: the conditionings differ in 'guidance'"):
        edit_conditioning(cond(guidance=1.0), cond(guidance=3.5), None, rows=1)  # a model without it: refused
    with pytest.raises(ValueError, match="^negative: sets no guidance .*FluxGuidance"):
        edit_conditioning(cond(guidance=1.0), cond(guidance=3.5), cond(), rows=1, branch_guidance=True)


def test_hidreams_llama_layers_are_stacked_per_row_like_the_prompt_and_unequal_lengths_are_refused():
    def llama(seed: int, tokens: int = 127) -> torch.Tensor:
        return torch.randn(1, 32, tokens, 8, generator=torch.Generator().manual_seed(seed))

    source, target, negative = llama(0), llama(1), llama(2)
    positive, uncond = edit_conditioning(cond(conditioning_llama3=source), cond(conditioning_llama3=target),
                                         cond(conditioning_llama3=negative), rows=2)
    stacked = positive[0][1]["conditioning_llama3"]
    assert stacked.shape == (4, 32, 127, 8)
    assert torch.equal(stacked[1], source[0]) and torch.equal(stacked[2], target[0])
    assert torch.equal(uncond[0][1]["conditioning_llama3"][3], negative[0])
    with pytest.raises(ValueError, match="source, target: the prompts' 'conditioning_llama3' differ in shape "
                                         r"\(\[1, 32, 127, 8\], \[1, 32, 140, 8\]\).*shorten the longer prompt"):
        edit_conditioning(cond(conditioning_llama3=source), cond(conditioning_llama3=llama(1, 140)), None, rows=1)
    with pytest.raises(ValueError, match="only some conditionings have 'conditioning_llama3'"):
        edit_conditioning(cond(conditioning_llama3=source), cond(), None, rows=1)


def test_a_text_encoder_without_pooled_output_keeps_the_key_as_comfyui_0_3_64_reads_it():
    """T5-only encoders (Chroma's) give ``pooled_output=None``; 0.3.64's Flux-family models index the key."""
    t5 = [[torch.zeros(1, 16, 8), {"pooled_output": None}]]
    positive, negative = edit_conditioning(t5, t5, None, rows=1)
    assert "pooled_output" in positive[0][1] and positive[0][1]["pooled_output"] is None
    assert negative[0][1]["pooled_output"] is None
    positive, _ = edit_conditioning([[torch.zeros(1, 16, 8), {}]], [[torch.zeros(1, 16, 8), {}]], None, rows=1)
    assert "pooled_output" not in positive[0][1]
