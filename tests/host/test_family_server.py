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
from spdinv_pack.tools.api_graph import ApiGraph, NodeRef

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
RESOLUTION = 128
"""16×16 latent: the local-blend maps at 1/32 of the image are 4×4 (at 64 px they would be 2×2, all one block)."""
RECONSTRUCTION_STEPS = (10, 20)
EDIT_STEPS = 10
CHECKPOINTS = {"sdxl": factory.sdxl_checkpoint_path, "sd2-v": factory.sd2_checkpoint_path}


def save(g: ApiGraph, samples: Any, name: str) -> str:
    """A SaveLatent node for ``samples``; returns its id (the key of its output in the history)."""
    return g.add("SaveLatent", samples=samples, filename_prefix=f"family_server/{name}").id


def invert(g: ApiGraph, model: Any, source: Any, latent: Any, steps: int, method: str) -> NodeRef:
    return g.add("SPDInvInvert", model=model, source=source, latent=latent, steps=steps, method=method)


def edit(g: ApiGraph, model: Any, inversion: NodeRef, source: Any, target: Any, cfg: float = 7.5) -> NodeRef:
    return g.add("SPDInvEditSampler", model=model, inversion=inversion, source=source, target=target, cfg=cfg)


def loaded(g: ApiGraph, checkpoint: str, latent_file: str, source: str, target: str) -> tuple[NodeRef, ...]:
    """``(model, clip, latent, source, target)``: the checkpoint, the photo's ``.latent`` file and both prompts."""
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    clip = ckpt[1]
    latent = g.add("LoadLatent", latent=latent_file)
    return ckpt, clip, latent, g.add("CLIPTextEncode", text=source, clip=clip), g.add("CLIPTextEncode", text=target,
                                                                                      clip=clip)


def reconstructions(g: ApiGraph, model: Any, source: Any, photo: Any, steps_list: tuple[int, ...],
                    saved: dict[str, str], prefix: str) -> dict[tuple[str, int], NodeRef]:
    """Plain (``ddim``) and SPDInv inversions at each step count, each reconstructed at CFG 1 and saved as
    ``recon <method> <steps>``; returns the inversions."""
    inversions: dict[tuple[str, int], NodeRef] = {}
    for steps, method in itertools.product(steps_list, ("ddim", "spdinv")):
        inversions[method, steps] = invert(g, model, source, photo, steps, method)
        recon = edit(g, model, inversions[method, steps], source, source, cfg=1.0)
        saved[f"recon {method} {steps}"] = save(g, recon[1], f"{prefix}recon_{method}_{steps}")
    return inversions


def family_prompt(checkpoint: str, latent_file: str, object_info: dict) -> tuple[dict, dict[str, str]]:
    """The whole check as one prompt, and which SaveLatent node holds which result."""
    g = ApiGraph()
    model, clip, latent, source, target = loaded(g, checkpoint, latent_file, SOURCE, TARGET)
    ksampler = dict(model=model, seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=source, negative=source)
    before = g.add("KSampler", latent_image=latent, **ksampler)
    saved: dict[str, str] = {"ksampler before": save(g, before, "ksampler_before")}
    inversions = reconstructions(g, model, source, after(g, latent, [before]), RECONSTRUCTION_STEPS, saved, "")
    inversion = inversions["spdinv", EDIT_STEPS]
    edits: list[NodeRef] = []
    for name, settings in {"identity": dict(target_text=SOURCE),
                           "blend": dict(target_text=TARGET, mode="word swap", blend_source_words="cat",
                                         blend_target_words="dog", blend_threshold=0.99)}.items():
        control = g.add("P2PAttentionControl", model=model, clip=clip, source_text=SOURCE, **settings)
        edits.append(edit(g, control, inversion, control[1], control[2]))
        saved[f"{name} edited"] = save(g, edits[-1], f"{name}_edited")
        saved[f"{name} recon"] = save(g, edits[-1][1], f"{name}_recon")
    masa = g.add("MasaCtrlMutualAttention", model=model)
    pnp = g.add("PNPInjection", model=model)
    edits += [edit(g, engine, inversion, source, target) for engine in (masa, pnp)]
    later = g.add("KSampler", latent_image=after(g, latent, edits), **ksampler)
    saved["ksampler after"] = save(g, later, "ksampler_after")
    return g.prompt(object_info), saved


def after(g: ApiGraph, latent: Any, nodes: list[NodeRef]) -> Any:
    """``latent`` plus zero times each node's first LATENT output: the same values, but a link that ComfyUI can
    only resolve once those nodes ran (so the prompt's order of execution is fixed)."""
    for node in nodes:
        zero = g.add("LatentMultiply", samples=node, multiplier=0.0)
        latent = g.add("LatentAdd", samples1=latent, samples2=zero)
    return latent


def mutual_attention_prompt(family: str, model_file: str, latent_file: str, object_info: dict,
                            texts: tuple[str, str, str | None], steps: int, cfg: float) -> tuple[dict, dict[str, str]]:
    """The server check of a diffusion-model family's edit: the photo's latent sampled by a KSampler, inverted at
    ``steps`` (plain and SPDInv), edited with mutual attention to the source prompt (identity) and to the target, and
    sampled again; ``texts``: source, target and the KSampler's negative (``None``: the source prompt), through the
    text-encoder stand-in of ``family``. Returns the API prompt and the saved latents by name."""
    source_text, target_text, negative_text = texts
    g = ApiGraph()
    model = g.add("UNETLoader", unet_name=model_file, weight_dtype="default")
    latent = g.add("LoadLatent", latent=latent_file)
    source, target = (g.add("SPDInvTestTextEncoderStandIn", text=text, family=family)
                      for text in (source_text, target_text))
    negative = source if negative_text is None else g.add("SPDInvTestTextEncoderStandIn", text=negative_text,
                                                          family=family)
    prefix = family.replace("-", "_") + "_"
    ksampler = dict(model=model, seed=0, steps=2, cfg=cfg, sampler_name="euler", scheduler="simple",
                    positive=source if negative_text is not None else target, negative=negative)
    before = g.add("KSampler", latent_image=latent, **ksampler)
    saved = {"ksampler before": save(g, before, f"{prefix}ksampler_before")}
    inversions = reconstructions(g, model, source, after(g, latent, [before]), (steps,), saved, prefix)
    mutual = g.add("MMDiTMutualAttention", model=model)
    edits = []
    for name, prompt in (("identity", source), ("edit", target)):
        edits.append(g.add("SPDInvEditSampler", model=mutual, inversion=inversions["spdinv", steps], source=source,
                           target=prompt, cfg=cfg))
        saved[f"{name} edited"] = save(g, edits[-1], f"{prefix}{name}_edited")
        saved[f"{name} recon"] = save(g, edits[-1][1], f"{prefix}{name}_recon")
    later = g.add("KSampler", latent_image=after(g, latent, edits), **ksampler)
    saved["ksampler after"] = save(g, later, f"{prefix}ksampler_after")
    return g.prompt(object_info), saved


def saved_latents(server, history: dict, saved: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, node_id in saved.items():
        (item,) = history["outputs"][node_id]["latents"]
        out[name] = load_file(Path(server.output_dir) / item["subfolder"] / item["filename"])["latent_tensor"]
    return out


def put_latent(server, samples: torch.Tensor, name: str) -> str:
    """``samples`` as a ``.latent`` file in the server's input folder (what ``LoadLatent`` reads); its name."""
    save_file({"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])},
              str(Path(server.input_dir) / name))
    return name


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def family_run(request, server) -> tuple[str, torch.Tensor, dict[str, torch.Tensor]]:
    """``(family, input latent, results)`` of the family's prompt, run once per family."""
    name = request.param
    checkpoint = CHECKPOINTS[name]()
    samples = factory.sd_like_latent(RESOLUTION)
    latent_file = put_latent(server, samples, f"family_{name}.latent")
    nodes, saved = family_prompt(checkpoint.name, latent_file, server.object_info())
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
