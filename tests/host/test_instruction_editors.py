"""Instruction editors inside real ComfyUI: the photo inverted under Qwen-Image-Edit, Flux Kontext and Flux.2's
reference edits with its reference latent (ComfyUI's ``ReferenceLatent``) in every call, then edited with mutual
attention and the preservation rule, which keeps the photo exactly outside the edit region.

Random weights stand in for the editors (Qwen-Image-Edit is Qwen-Image's transformer, Kontext Flux.1-dev's, a Flux.2
edit Flux.2's: the loader detects them as ``QwenImage``, ``Flux`` and ``Flux2``; no Flux.2 on 0.3.64), stand-in
encodings for their text encoders. What is checked holds for any weights: which inputs the model sees, exactness outside
the region, an edit inside it.
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.tests.host.factory import INSTRUCTION_EDITORS
from spdinv_pack.tests.host.pack_calls import (
    diffusion_model,
    edit,
    edit_region,
    editor_model_path,
    instruction,
    invert,
    mutual,
)

STEPS = 6
EXACT = 1e-5
"""Largest difference from the photo's latent that counts as the photo: the latent's round trip through the
model's latent scaling (``process_latent_in``/``out``) in float32."""
EDITED = 1e-4
"""Smallest mean change inside the region that counts as an edit: well above :data:`EXACT`, where the identity
instruction's change is 0."""


@pytest.fixture(scope="module", params=sorted(INSTRUCTION_EDITORS))
def scene(request, comfy_env, run_node, pack_nodes, comfy_extra_nodes):
    """``(editor, model, photo, prompt)``: the editor's random MODEL, a 128² photo's latent and ``prompt(seed)``, the
    editor's stand-in prompt with the photo attached (seed 0: the source, the empty instruction)."""
    import comfy.supported_models

    editor = INSTRUCTION_EDITORS[request.param]
    if editor.model == "flux2" and not hasattr(comfy.supported_models, "Flux2"):
        pytest.skip("this ComfyUI has no Flux.2 (0.3.64)")
    photo = editor.test_model.photo(128)

    def prompt(seed: int) -> list:
        return instruction(run_node, comfy_extra_nodes["ReferenceLatent"], editor, seed, photo)

    with diffusion_model(editor_model_path(editor)) as model:
        yield editor, model, photo, prompt


@pytest.fixture(scope="module")
def inverted(scene, run_node, pack_nodes):
    editor, model, photo, prompt = scene
    inversion, _ = invert(run_node, pack_nodes, model, prompt(0), photo, steps=STEPS, rel_tol=0.01)
    return inversion


def centre_mask(size: int = 128) -> torch.Tensor:
    """A MASK of the photo's central quarter (the edit region)."""
    mask = torch.zeros(1, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    return mask


class ReferenceProbe:
    """The reference latents of every diffusion-model call while installed (a forward pre-hook)."""

    def __init__(self, model):
        self.module = model.get_model_object("diffusion_model")
        self.calls: list[tuple[int, list | None]] = []

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self.record, with_kwargs=True)
        return self

    def record(self, _module, args, kwargs):
        self.calls.append((int(args[0].shape[0]), kwargs.get("ref_latents")))

    def __exit__(self, *exc):
        self.handle.remove()


def test_the_editor_sees_the_photo_as_its_reference_in_the_inversion_and_in_both_branches_of_the_edit(
        scene, inverted, run_node, pack_nodes):
    editor, model, photo, prompt = scene
    expected = model.model.process_latent_in(photo["samples"]).float()
    with ReferenceProbe(model) as inversion_calls:
        invert(run_node, pack_nodes, model, prompt(0), photo, steps=2, rel_tol=0.01)
    with ReferenceProbe(model) as edit_calls:
        edit(run_node, pack_nodes, mutual(run_node, pack_nodes, model), inverted, prompt(0), prompt(1), cfg=editor.cfg)
    for probe in (inversion_calls, edit_calls):
        assert probe.calls
        for rows, refs in probe.calls:
            assert refs is not None and len(refs) == 1 and refs[0].shape[0] == rows
            for row in refs[0]:
                torch.testing.assert_close(row[None].float(), expected, atol=1e-6, rtol=0)
    assert any(rows >= 2 for rows, _ in edit_calls.calls)  # source and target rows in one call


def test_outside_the_given_region_the_target_is_the_photo_and_inside_it_is_edited(
        scene, inverted, run_node, pack_nodes):
    editor, model, photo, prompt = scene
    patched = mutual(run_node, pack_nodes, model)
    (rule,) = run_node(pack_nodes.SPDInvPreservation, mask=centre_mask(), threshold=0.5, estimate_for=0.25,
                       grow=0).result
    free, _, _ = edit(run_node, pack_nodes, patched, inverted, prompt(0), prompt(1), cfg=editor.cfg)
    kept, recon, _, region = edit_region(run_node, pack_nodes, patched, inverted, prompt(0), prompt(1), cfg=editor.cfg,
                                         preserve=rule)
    assert torch.equal(region, centre_mask())
    cells = photo["samples"].shape[-2:]
    inside = torch.nn.functional.adaptive_max_pool2d(region[None], cells)[0].bool().expand_as(photo["samples"])
    outside = ~inside
    drift = (free["samples"] - photo["samples"])[outside].abs().max().item()
    kept_drift = (kept["samples"] - photo["samples"])[outside].abs().max().item()
    change = (kept["samples"] - recon["samples"])[inside].abs().mean().item()
    print(f"\n[host] {editor.name} outside the region: max abs {drift:.3g} free, {kept_drift:.3g} preserved; "
          f"inside: mean abs {change:.3g} from the reconstruction")
    assert drift > 1e-3 and kept_drift < EXACT
    assert change > EDITED


def test_the_found_region_is_where_the_branches_differ_and_the_identity_instruction_gives_the_photo(
        scene, inverted, run_node, pack_nodes):
    editor, model, photo, prompt = scene
    patched = mutual(run_node, pack_nodes, model)
    (rule,) = run_node(pack_nodes.SPDInvPreservation, threshold=0.5, estimate_for=0.25, grow=0).result
    edited, _, _, region = edit_region(run_node, pack_nodes, patched, inverted, prompt(0), prompt(1), cfg=editor.cfg,
                                       preserve=rule)
    assert region.shape == (1, 128, 128) and 0.0 < region.mean().item() < 1.0
    outside = ~torch.nn.functional.adaptive_max_pool2d(region[None], photo["samples"].shape[-2:])[0].bool()
    assert (edited["samples"] - photo["samples"])[outside.expand_as(photo["samples"])].abs().max() < EXACT
    same, _, _, nothing = edit_region(run_node, pack_nodes, patched, inverted, prompt(0), prompt(0), cfg=editor.cfg,
                                      preserve=rule)
    assert not nothing.any()
    assert (same["samples"] - photo["samples"]).abs().max() < EXACT
    assert not {"patches", "patches_replace"} & set(model.model_options.get("transformer_options", {}))


def test_branches_with_different_reference_images_are_refused_by_name(scene, inverted, run_node, pack_nodes):
    editor, model, photo, prompt = scene
    plain_source = editor.test_model.prompt(0, editor.guidance)
    with pytest.raises(ValueError, match="reference image differs"):
        edit(run_node, pack_nodes, model, inverted, plain_source, prompt(1), cfg=editor.cfg)
