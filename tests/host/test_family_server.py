"""SDXL and SD2.x v-prediction in a real ``main.py --cpu`` server: one prompt per family reconstructs with DDIM
and SPDInv at 10 and 20 steps, makes an identity P2P edit, a local-blend P2P edit, a MasaCtrl and a PnP edit,
and samples the checkpoint's MODEL with a KSampler before and after them.

The photo comes in as an SD-like ``.latent`` file (``LoadLatent``) and every result goes out through
``SaveLatent``: the random VAE encodes photos to latents about 50× too small, on which reconstruction errors
say little. Random weights stand in for real checkpoints (see ``test_model_families.py``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host import factory

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
RESOLUTION = 128
"""16×16 latent: the local-blend maps at 1/32 of the image are 4×4 (at 64 px they would be 2×2, all one block)."""
RECONSTRUCTION_STEPS = (10, 20)
EDIT_STEPS = 10
CHECKPOINTS = {"sdxl": factory.sdxl_checkpoint_path, "sd2-v": factory.sd2_checkpoint_path}


class Prompt:
    """An API-format prompt built node by node; ``add`` returns the node's id for links."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def add(self, class_type: str, **inputs: Any) -> str:
        node_id = str(next(self._ids))
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def save(self, samples: list, name: str) -> str:
        return self.add("SaveLatent", samples=samples, filename_prefix=f"family_server/{name}")


def invert(prompt: Prompt, model: list, source: list, latent: list, steps: int, method: str) -> str:
    return prompt.add("SPDInvInvert", model=model, source=source, latent=latent, steps=steps, method=method,
                      solver="anderson", max_iters=25, lr=1e-3, delta=5e-6, rel_tol=0.01, measure_residual=True)


def edit(prompt: Prompt, model: list, inversion: str, source: list, target: list, cfg: float = 7.5) -> str:
    return prompt.add("SPDInvEditSampler", model=model, inversion=[inversion, 0], source=source, target=target,
                      cfg=cfg)


def p2p(prompt: Prompt, model: list, clip: list, target: str, **kw: Any) -> str:
    settings = dict(mode="refine", cross_replace=0.8, self_replace=0.6, blend_source_words="",
                    blend_target_words="", blend_threshold=0.3, blend_start=0.2, reweight="",
                    proximal_guidance=True, proximal_quantile=0.7, inversion_guidance=True)
    return prompt.add("P2PAttentionControl", model=model, clip=clip, source_text=SOURCE, target_text=target,
                      **{**settings, **kw})


def family_prompt(checkpoint: str, latent_file: str) -> tuple[dict, dict[str, str]]:
    """The whole check as one prompt, and which SaveLatent node holds which result."""
    p = Prompt()
    ckpt = p.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    model, clip = [ckpt, 0], [ckpt, 1]
    latent = [p.add("LoadLatent", latent=latent_file), 0]
    source = [p.add("CLIPTextEncode", text=SOURCE, clip=clip), 0]
    target = [p.add("CLIPTextEncode", text=TARGET, clip=clip), 0]
    ksampler = dict(model=model, seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=source, negative=source, denoise=1.0)
    before = p.add("KSampler", latent_image=latent, **ksampler)
    saved: dict[str, str] = {"ksampler before": p.save([before, 0], "ksampler_before")}
    photo = after(p, latent, [before])
    inversions: dict[tuple[str, int], str] = {}
    for steps, method in itertools.product(RECONSTRUCTION_STEPS, ("ddim", "spdinv")):
        inversions[method, steps] = invert(p, model, source, photo, steps, method)
        recon = edit(p, model, inversions[method, steps], source, source, cfg=1.0)
        saved[f"recon {method} {steps}"] = p.save([recon, 1], f"recon_{method}_{steps}")
    inversion = inversions["spdinv", EDIT_STEPS]
    edits: list[str] = []
    for name, settings in {"identity": dict(target=SOURCE),
                           "blend": dict(target=TARGET, mode="word swap", blend_source_words="cat",
                                         blend_target_words="dog", blend_threshold=0.99)}.items():
        control = p2p(p, model, clip, **settings)
        edits.append(edit(p, [control, 0], inversion, [control, 1], [control, 2]))
        saved[f"{name} edited"] = p.save([edits[-1], 0], f"{name}_edited")
        saved[f"{name} recon"] = p.save([edits[-1], 1], f"{name}_recon")
    masa = p.add("MasaCtrlMutualAttention", model=model, start_step=0.08, start_layer=-1, mask_mode="none",
                 proximal_guidance=True, proximal_quantile=0.6, source_from_inversion=False)
    pnp = p.add("PNPInjection", model=model, feature_fraction=0.8, attention_fraction=0.5)
    edits += [edit(p, [engine, 0], inversion, source, target) for engine in (masa, pnp)]
    later = p.add("KSampler", latent_image=after(p, latent, edits), **ksampler)
    saved["ksampler after"] = p.save([later, 0], "ksampler_after")
    return p.nodes, saved


def after(p: Prompt, latent: list, nodes: list[str]) -> list:
    """``latent`` plus zero times each node's first LATENT output: the same values, but a link that ComfyUI can
    only resolve once those nodes ran (so the prompt's order of execution is fixed)."""
    for node in nodes:
        zero = p.add("LatentMultiply", samples=[node, 0], multiplier=0.0)
        latent = [p.add("LatentAdd", samples1=latent, samples2=[zero, 0]), 0]
    return latent


def saved_latents(server, history: dict, saved: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, node_id in saved.items():
        (item,) = history["outputs"][node_id]["latents"]
        out[name] = load_file(Path(server.output_dir) / item["subfolder"] / item["filename"])["latent_tensor"]
    return out


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def family_run(request, server) -> tuple[str, torch.Tensor, dict[str, torch.Tensor]]:
    """``(family, input latent, results)`` of the family's prompt, run once per family."""
    name = request.param
    checkpoint = CHECKPOINTS[name]()
    samples = factory.sd_like_latent(RESOLUTION)
    latent_file = f"family_{name}.latent"
    save_file({"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])},
              str(Path(server.input_dir) / latent_file))
    nodes, saved = family_prompt(checkpoint.name, latent_file)
    history = server.run(nodes, timeout=3600)
    return name, samples, saved_latents(server, history, saved)


def check_reconstruction_gain(name: str, samples: torch.Tensor, out: dict[str, torch.Tensor],
                              steps_list: tuple[int, ...]) -> None:
    """SPDInv's reconstruction (``recon spdinv <steps>``) at least 10 dB better than plain inversion's."""
    for steps in steps_list:
        psnr = {m: latent_psnr(out[f"recon {m} {steps}"], samples) for m in ("ddim", "spdinv")}
        print(f"\n[server] {name}, {steps} steps: reconstruction PSNR plain (ddim) {psnr['ddim']:.1f} dB, "
              f"spdinv {psnr['spdinv']:.1f} dB")
        assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_spdinv_reconstructs_far_better_than_ddim(family_run):
    name, samples, out = family_run
    check_reconstruction_gain(name, samples, out, RECONSTRUCTION_STEPS)


def test_identity_p2p_edit_is_exact(family_run):
    _, _, out = family_run
    assert torch.equal(out["identity edited"], out["identity recon"])


def test_local_blend_keeps_the_source_exactly_outside_a_partial_mask(family_run):
    """Where every channel of the edit equals the reconstruction to the bit lies outside the blend mask."""
    name, _, out = family_run
    kept = (out["blend edited"] == out["blend recon"]).all(dim=1)
    print(f"\n[server] {name}: local blend kept {float(kept.float().mean()):.0%} of the latent exactly")
    assert 0.0 < float(kept.float().mean()) < 1.0


def test_the_checkpoints_model_samples_bit_identically_after_every_engine(family_run):
    _, _, out = family_run
    assert torch.equal(out["ksampler before"], out["ksampler after"])
