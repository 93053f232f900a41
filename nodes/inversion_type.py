"""The SPDINV_INVERSION payload passed from the inversion node to samplers and previews."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from comfy_api.latest import io

from ..spdinv.inversion import InversionResult

Inversion = io.Custom("SPDINV_INVERSION")


@dataclass
class InversionPayload:
    """An inversion plus what is needed to check it is used with a matching model and latent."""

    result: InversionResult
    """Trajectory in the model's latent space (after ``process_latent_in``), on the intermediate device."""
    source_latent: torch.Tensor
    """The LATENT samples that were inverted, as given (raw VAE scale)."""
    model_family: str
    model_ref: Any = field(repr=False, default=None)

    @classmethod
    def create(cls, result: InversionResult, source_latent: torch.Tensor, model_patcher: Any) -> InversionPayload:
        base = model_patcher.model
        return cls(result, source_latent, type(base).__name__, weakref.ref(base))

    def check_model(self, model_patcher: Any, input_name: str) -> bool:
        """Raise if ``model_patcher`` is of another family; return False when it is another model object
        of the same family (a different checkpoint: allowed, but the reconstruction will not be exact)."""
        family = type(model_patcher.model).__name__
        if family != self.model_family:
            raise ValueError(f"{input_name}: the inversion was made with a {self.model_family} model but this "
                             f"model is {family}; invert again with the model you sample with")
        return self.model_ref is not None and self.model_ref() is model_patcher.model
