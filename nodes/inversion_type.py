"""The SPDINV_INVERSION payload passed from the inversion node to samplers and previews."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from comfy_api.latest import io

from ..spdinv.inversion import InversionResult

Inversion = io.Custom("SPDINV_INVERSION")


def weights_fingerprint(model_patcher: Any) -> tuple[tuple[str, tuple[int, ...], float], ...]:
    """Names, shapes and float64 sums of the diffusion model's first and last parameters, unpatched.

    Tells checkpoints of one family apart without hashing gigabytes: two files with the same weights
    (one checkpoint loaded twice) agree, a different checkpoint does not. A LoRA or merge applied by a
    ``ModelPatcher`` clone does not change it: patched weights are read from the patcher's backup of
    the originals (shared by all clones of one base model).
    """
    params = list(model_patcher.model.diffusion_model.named_parameters())
    out = []
    for name, param in (params[0], params[-1]):
        saved = model_patcher.backup.get(f"diffusion_model.{name}")
        weight = saved.weight if saved is not None else param
        out.append((name, tuple(weight.shape), float(weight.detach().double().sum())))
    return tuple(out)


def conditioning_fingerprint(conditioning: Any) -> tuple:
    """Shapes and float64 sums of a CONDITIONING's tensors (the text embedding, the pooled output and an
    instruction editor's reference latents) and its distilled guidance (FluxGuidance): equal for the same prompt
    encoded twice, different for another prompt, reference image or guidance, without keeping the tensors."""
    out = []
    for entry in conditioning or ():
        options = entry[1] if len(entry) > 1 else {}
        tensors = [entry[0], options.get("pooled_output"), *(options.get("reference_latents") or ())]
        out.append(tuple((tuple(t.shape), float(t.detach().double().sum())) for t in tensors if t is not None)
                   + (options.get("guidance"),))
    return tuple(out)


def check_latent_channels(model_patcher: Any, samples: torch.Tensor, input_name: str) -> None:
    """Raise before any UNet call when ``samples`` has another channel count than the model's latents.

    A latent from another family (SD3/Flux 16 channels, SD1.x/SDXL 4) would otherwise fail deep inside the
    UNet's first convolution with a message that names neither the input nor the fix.
    """
    expected = model_patcher.get_model_object("latent_format").latent_channels
    if samples.ndim >= 2 and samples.shape[1] != expected:
        family = type(model_patcher.model).__name__
        raise ValueError(f"{input_name}: the latent has {samples.shape[1]} channels but this {family} model's "
                         f"latents have {expected}; encode the photo with this model's VAE (VAEEncode with the "
                         f"VAE of the checkpoint you invert with)")


@dataclass(frozen=True)
class NullText:
    """Null-text inversion's tuned negative embeddings, ``[steps, photos, tokens, width]`` (step 0 = the noise's),
    and the CFG they were tuned for."""

    embeddings: torch.Tensor
    cfg: float


@dataclass
class InversionPayload:
    """An inversion plus what is needed to check it is used with a matching model and latent."""

    result: InversionResult
    """Trajectory in the model's latent space (after ``process_latent_in``), on the intermediate device."""
    source_latent: torch.Tensor
    """The LATENT samples that were inverted, as given (raw VAE scale)."""
    model_family: str
    model_ref: Any = field(repr=False, default=None)
    fingerprint: tuple = field(repr=False, default=())
    """:func:`weights_fingerprint` of the model inverted with."""
    source_fingerprint: tuple = field(repr=False, default=())
    """:func:`conditioning_fingerprint` of the source prompt inverted with."""
    method: str = "spdinv"
    """The inversion method chosen on the node (:data:`~..spdinv.inversion_methods.INVERSION_METHODS`); the edit
    sampler treats the source branch as it asks."""
    null_text: NullText | None = None
    """``null_text`` inversion's tuned embeddings."""
    source: Any = field(repr=False, default=None)
    """The source CONDITIONING inverted with (a reconstruction of the inversion's noise runs on it)."""

    @classmethod
    def create(cls, result: InversionResult, source_latent: torch.Tensor, model_patcher: Any,
               source: Any = None, method: str = "spdinv", null_text: NullText | None = None) -> InversionPayload:
        base = model_patcher.model
        return cls(result, source_latent, type(base).__name__, weakref.ref(base), weights_fingerprint(model_patcher),
                   conditioning_fingerprint(source), method, null_text, source)

    def warn_if_other_source(self, source: Any) -> bool:
        """Log one warning (and return True) when ``source`` is not the prompt the inversion used: the source
        branch then does not retrace the inversion and the reconstruction is not the photo."""
        if not self.source_fingerprint or conditioning_fingerprint(source) == self.source_fingerprint:
            return False
        logging.warning("SPDInv Edit Sampler: its 'source' conditioning differs from the 'source' that SPDInv "
                        "Invert inverted with (another prompt, reference image or FluxGuidance value), so the "
                        "reconstruction (and the edit's unchanged parts) will not be the photo; connect the same "
                        "source (and reference image) to both, and set the edit's own guidance with a FluxGuidance "
                        "on the target")
        return True

    def check_model(self, model_patcher: Any, input_name: str) -> None:
        """Raise unless ``model_patcher`` is the model inverted with, patched or not.

        Allowed: the same base model with any patches (LoRAs, engine nodes, merges: the patches change
        the edit, which is what they are for), and the same checkpoint loaded again (same weights).
        Refused: another model family, and another checkpoint of the same family (its reconstruction
        would silently not be the photo).
        """
        family = type(model_patcher.model).__name__
        if family != self.model_family:
            raise ValueError(f"{input_name}: the inversion was made with a {self.model_family} model but this "
                             f"model is {family}; invert again with the model you sample with")
        if self.model_ref is not None and self.model_ref() is model_patcher.model:
            return
        if weights_fingerprint(model_patcher) != self.fingerprint:
            raise ValueError(f"{input_name}: the inversion was made with another checkpoint (its weights differ "
                             f"from this model's); connect the MODEL you inverted with (LoRAs and other patches "
                             f"on it are fine) or invert again with this model")
