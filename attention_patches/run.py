"""One edit run as a value: what the engines read from a model call instead of keeping state of their own.

The edit sampler makes one :class:`EditRun` per edit (its sigma grid, one branch's latent shape, a ``records``
dict for what engines gather during the run) and hands it to every model call of the edit in one namespaced
``transformer_options`` entry (:data:`RUN_KEY`). A patched attention finds the run, and from the call's sigma
its step, in the call's own options, so an engine is configuration that any number of clones and runs can
share: a call without a run (a plain KSampler on the same MODEL, the inversion) is plain attention.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

RUN_KEY = "spdinv"
"""The ``transformer_options`` entry holding the call's :class:`EditRun`."""


def steps_for(fraction: float, steps: int) -> int:
    """How many of ``steps`` a fraction covers, rounded down as the reference does (0.8·50 → 40)."""
    return int(math.floor(fraction * steps + 1e-9))


def check_fraction(name: str, value: float) -> None:
    """Refuse a step fraction outside ``[0, 1]``, naming the input."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be between 0 and 1, got {value}")


@dataclass(frozen=True)
class EditRun:
    """One edit: its descending sigma grid (ending at 0), one branch's latent shape, and ``records``, the
    per-run data engines gather (P2P's maps, MasaCtrl's step maps), keyed by engine name.

    ``shared_source``, ``image_tokens`` and ``reference_tokens`` are per-call facts the pack's wrappers add
    (:meth:`for_call`): the call's unconditional chunks carry target rows only; how many of a DiT call's tokens are
    the noisy image's; how many are reference images' (an instruction editor's, after the image's).
    """

    grid: torch.Tensor
    latent_shape: tuple[int, ...] = ()
    records: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    shared_source: bool = False
    image_tokens: int | None = None
    reference_tokens: int = 0

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    def step_at(self, sigmas: torch.Tensor | None) -> int | None:
        """Index of the call's sigma on the run's grid, or ``None`` when it is not on it."""
        if sigmas is None or self.steps < 1:
            return None
        s = float(sigmas.reshape(-1)[0])
        distance = (self.grid.detach().float().cpu() - s).abs()
        index = int(distance.argmin())
        return index if float(distance[index]) <= 1e-5 * max(1.0, abs(s)) else None

    def for_call(self, **changes: Any) -> EditRun:
        """This run with per-call facts changed; the copy shares the run's ``records``."""
        return replace(self, **changes)

    def into(self, model_options: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``model_options`` whose calls carry this run."""
        options = dict(model_options.get("transformer_options", {}))
        options[RUN_KEY] = self
        return {**model_options, "transformer_options": options}

    @staticmethod
    def of(transformer_options: Mapping[str, Any] | None) -> EditRun | None:
        """The run a call belongs to, or ``None`` outside an edit."""
        run = (transformer_options or {}).get(RUN_KEY)
        return run if isinstance(run, EditRun) else None
