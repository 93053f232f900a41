"""ComfyUI nodes of the pack (V3 schema). Thin adapters over ``spdinv/`` and ``attention_patches/``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .attention_preview import SPDInvAttentionPreview
from .color_fix import SPDInvWaveletColorFix
from .edit_sampler import SPDInvEditSampler
from .elite import ELITEMapper, ELITEMapperLoader
from .example_inputs import install_example_inputs
from .invert import SPDInvInvert
from .masactrl import MasaCtrlMutualAttention
from .mmdit_attention import MMDiTMutualAttention
from .p2p_control import P2PAttentionControl
from .pnp_injection import PNPInjection
from .preservation import SPDInvPreservation
from .residual_plot import SPDInvResidualPlot

NODES: list[type[io.ComfyNode]] = [SPDInvInvert, SPDInvEditSampler, P2PAttentionControl, MasaCtrlMutualAttention,
                                   MMDiTMutualAttention, PNPInjection, ELITEMapperLoader, ELITEMapper,
                                   SPDInvAttentionPreview, SPDInvWaveletColorFix, SPDInvResidualPlot,
                                   SPDInvPreservation]


class SPDInvExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        install_example_inputs()
        return NODES
