"""Calls of the pack's nodes shared by the host tests, and the synthetic photo they invert."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from spdinv_pack.spdinv.metrics import latent_psnr

STEPS = 10


def photo(size: int = 64) -> torch.Tensor:
    """A smooth synthetic RGB image [1, H, W, 3] in 0..1."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(4 * y)], dim=-1)
    return img.unsqueeze(0)


def inverted_photo(comfy_env, checkpoint, run_node, pack_nodes, text: str, size: int, steps: int):
    """``(model, clip, latent, source conditioning, inversion)`` of the synthetic photo at ``size``²."""
    model, clip, vae = checkpoint
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(size), vae=vae)
    (source,) = run_node(comfy_env.nodes.CLIPTextEncode, text=text, clip=clip)
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=steps)
    return model, clip, latent, source, inversion


class RowCount:
    """Rows of every diffusion-model call while it is installed (a forward pre-hook)."""

    def __init__(self, model):
        self.rows = 0
        self.module = model.get_model_object("diffusion_model")

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self.count)
        return self

    def count(self, _module, args):
        self.rows += int(args[0].shape[0])

    def __exit__(self, *exc):
        self.handle.remove()


def invert(run_node, pack_nodes, model, source, latent, **kw):
    """SPDInvInvert's outputs with its defaults but ``STEPS`` steps and no relative tolerance (δ alone)."""
    settings = dict(steps=STEPS, rel_tol=0.0)
    settings.update(kw)
    return run_node(pack_nodes.SPDInvInvert, model=model, source=source, latent=latent, **settings).result


def edit(run_node, pack_nodes, model, inversion, source, target, cfg=7.5, **kw):
    """The edit sampler's (edited, reconstruction, attention) outputs (its edit region: :func:`edit_region`)."""
    return edit_region(run_node, pack_nodes, model, inversion, source, target, cfg, **kw)[:3]


def edit_region(run_node, pack_nodes, model, inversion, source, target, cfg=7.5, **kw):
    """All outputs of the edit sampler: (edited, reconstruction, attention, edit region)."""
    return run_node(pack_nodes.SPDInvEditSampler, model=model, inversion=inversion, source=source, target=target,
                    cfg=cfg, **kw).result


def reconstruct(run_node, pack_nodes, model, inversion, source, target=None, cfg=1.0):
    """(edited, reconstruction) LATENTs; target defaults to the source prompt."""
    return edit(run_node, pack_nodes, model, inversion, source, target if target is not None else source, cfg)[:2]


def check_local_blend(edited: dict, recon: dict, attention) -> float:
    """Assert local blend's rule: outside its mask the edit is the reconstruction to the bit, inside it is
    not, and the mask is neither empty nor full (else nothing is proved). Returns the mask's coverage."""
    mask = attention.blend_mask[:, 0]
    assert mask.shape[-2:] == edited["samples"].shape[-2:]
    coverage = float(mask.float().mean())
    assert 0.0 < coverage < 1.0, "threshold gave a trivial mask; the test would prove nothing"
    outside = ~mask.unsqueeze(1).expand_as(edited["samples"])
    assert torch.equal(edited["samples"][outside], recon["samples"][outside])
    assert not torch.equal(edited["samples"][~outside], recon["samples"][~outside])
    assert torch.isfinite(edited["samples"]).all()
    return coverage


MASA_START_LAYER = 10
"""MasaCtrl's start layer in the SD1.5 host tests (the reference's 10, set rather than derived from the model)."""
ENGINES = ("p2p", "masactrl", "pnp")


def engine_model(run_node, pack_nodes, engine: str, model, clip, source_text: str, target_text: str,
                 source, target):
    """(patched MODEL, source, target CONDITIONING) for ``engine`` with its node's defaults (MasaCtrl: start layer
    :data:`MASA_START_LAYER`); ``run_node`` fills the defaults.

    P2P encodes the texts itself and returns its own conditionings; the others return ``source``/``target``.
    """
    if engine == "p2p":
        return run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text=source_text,
                        target_text=target_text).result
    if engine == "masactrl":
        masactrl = run_node(pack_nodes.MasaCtrlMutualAttention, model=model, start_layer=MASA_START_LAYER)
        return masactrl.result[0], source, target
    if engine == "pnp":
        return run_node(pack_nodes.PNPInjection, model=model).result[0], source, target
    raise ValueError(f"unknown engine {engine!r}")


def loadable_flux_path() -> Path:
    """The random Flux file this ComfyUI loads: the fast reduced-width one where its Flux detection reads the width
    from the weights (0.33), else the full-width one of reduced depth (0.3.64 fixes the width at 3072)."""
    import comfy.model_detection
    import comfy.utils

    from spdinv_pack.tests.host.factory import FLUX_REDUCED_WIDTH, flux_full_width_model_path, flux_model_path

    reduced = flux_model_path()
    config = comfy.model_detection.detect_unet_config(comfy.utils.load_torch_file(str(reduced)), "")
    return reduced if config["hidden_size"] == FLUX_REDUCED_WIDTH else flux_full_width_model_path()


def editor_model_path(editor: Any) -> Path:
    """The random diffusion-model file of an instruction editor (:data:`~.factory.INSTRUCTION_EDITORS`) that this
    ComfyUI loads."""
    return loadable_flux_path() if editor.model == "flux" else editor.test_model.model_path()


def instruction(run_node, reference_latent_node, editor: Any, seed: int, photo: dict) -> list:
    """Stand-in prompt ``seed`` of ``editor`` at its guidance, with ``photo`` attached by ComfyUI's
    ``ReferenceLatent`` node (``reference_latent_node``), as an instruction editor's workflow hands it the photo."""
    prompt = editor.test_model.prompt(seed, editor.guidance)
    return run_node(reference_latent_node, conditioning=prompt, latent=photo).result[0]


@contextlib.contextmanager
def diffusion_model(path: Path) -> Iterator[Any]:
    """A diffusion-model file as ComfyUI's diffusion-model loader loads it, unloaded afterwards."""
    import comfy.model_management
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(path))
    try:
        yield model
    finally:
        del model
        comfy.model_management.unload_all_models()


@contextlib.contextmanager
def bypassed_model(config_name: str, unet_config: dict[str, Any], seed: int) -> Iterator[Any]:
    """A MODEL of ComfyUI's ``comfy.supported_models.<config_name>`` built from ``unet_config`` without the
    loader's detection (for families whose detection fixes the width: Z-Image, HiDream), with deterministic random
    fp32 weights (the factory's init), in a ModelPatcher as the loader makes it; unloaded afterwards."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from spdinv_pack.tests.host.factory.shapes import _init_tensor

    config = getattr(comfy.supported_models, config_name)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    weights = {k: _init_tensor(k, tuple(t.shape), gen) for k, t in sorted(model.diffusion_model.state_dict().items())}
    model.diffusion_model.load_state_dict(weights, strict=True)
    model = model.to(comfy.model_management.unet_offload_device())
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    try:
        yield patcher
    finally:
        del patcher, model
        comfy.model_management.unload_all_models()


def reconstruction_psnr(run_node, pack_nodes, model, source, latent: dict, steps: int, name: str) -> dict[str, float]:
    """Reconstruction PSNR of plain inversion (``ddim``) and SPDInv at ``steps``, printed for the note."""
    psnr = {}
    for method in ("ddim", "spdinv"):
        inversion, _ = invert(run_node, pack_nodes, model, source, latent, method=method, steps=steps, rel_tol=0.01,
                              measure_residual=False)
        _, recon = reconstruct(run_node, pack_nodes, model, inversion, source)
        assert recon["samples"].shape == latent["samples"].shape
        psnr[method] = latent_psnr(recon["samples"], latent["samples"])
    print(f"\n[host] {name}, {steps} steps: reconstruction PSNR plain inversion {psnr['ddim']:.1f} dB, SPDInv "
          f"{psnr['spdinv']:.1f} dB")
    return psnr


class AttentionProbe:
    """Every attention call of an edit on a MODEL whose engine is a model-wide attention override: which block ran it
    (read by the probe's own forward pre-hooks on ``blocks``, module path → label; ``None`` outside them, as in
    Z-Image's refiners), and the keys and values the model passed in (``k_in``, ``v_in``: an override installed
    after the engine's, wrapping it, :meth:`wrap`) and those that reached the attention (``k_out``, ``v_out``: an
    override another node had installed before the engine, :meth:`earlier`, which must still run)."""

    def __init__(self, model: Any, blocks: dict[str, str]):
        self.diffusion_model = model.get_model_object("diffusion_model")
        self.blocks, self.current, self.calls = blocks, None, []

        def earlier(func, q, k, v, *rest, **kwargs):  # a function: ComfyUI 0.3.64's clones deep-copy methods' objects
            self.calls[-1].update(k_out=k.clone(), v_out=v.clone())
            return func(q, k, v, *rest, **kwargs)

        self.earlier = earlier

    def wrap(self, patched: Any) -> None:
        """Install the recording override around the engine's on ``patched`` (a clone)."""
        options = patched.model_options["transformer_options"]
        engine = options["optimized_attention_override"]

        def recording(func, q, k, v, *rest, **kwargs):
            self.calls.append(dict(block=self.current, k_in=k.clone(), v_in=v.clone()))
            return engine(func, q, k, v, *rest, **kwargs)

        options["optimized_attention_override"] = recording

    def _enter(self, label: str | None):
        def hook(_module, _args):
            self.current = label
        return hook

    def __enter__(self) -> AttentionProbe:
        self.handles = [self.diffusion_model.register_forward_pre_hook(self._enter(None))]
        self.handles += [self.diffusion_model.get_submodule(path).register_forward_pre_hook(self._enter(label))
                         for path, label in self.blocks.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def mutual(run_node, pack_nodes, model, start_step: float = 0.0, **kw):
    """``model`` through SPDInv MM-DiT Mutual Attention (keys and values, the family's default depth)."""
    settings = dict(start_step=start_step, start_block=-1.0, share="keys and values")
    return run_node(pack_nodes.MMDiTMutualAttention, model=model, **{**settings, **kw}).result[0]


def override_scene(run_node, pack_nodes, model, prompt, latent: dict, steps: int) -> tuple:
    """``(inversion, source, target, options, plain edit)``: the latent inverted with prompt 0, the options the base
    MODEL had before anything ran, and an edit to prompt 1 at CFG 1 without an engine."""
    options = copy.deepcopy(model.model_options)
    source, target = prompt(0), prompt(1)
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=steps, rel_tol=0.01)
    plain = edit(run_node, pack_nodes, model, inversion, source, target, cfg=1.0)
    return inversion, source, target, options, plain


def probed_edit(run_node, pack_nodes, model, scene: tuple, blocks: dict[str, str]) -> tuple:
    """An edit (CFG 1) of ``scene`` with the engine at its defaults on a clone that carries another node's attention
    override, every attention call recorded by :class:`AttentionProbe` over ``blocks``: ``(calls, the options the
    engine installed, edited, reconstruction, the other node's override)``."""
    inversion, source, target, _, _ = scene
    probe = AttentionProbe(model, blocks)
    chained = model.clone()
    chained.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = probe.earlier
    patched = mutual(run_node, pack_nodes, chained)
    installed = dict(patched.model_options["transformer_options"])
    probe.wrap(patched)
    with probe:
        edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    return probe.calls, installed, edited, recon, probe.earlier
