"""SPDInv real-image editing for ComfyUI.

ComfyUI imports this package and calls :func:`comfy_entrypoint` (V3 node API). The ComfyUI-facing
code in ``nodes/`` is imported only there, so ``spdinv/`` and ``attention_patches/`` import and run
without ComfyUI installed.
"""

from __future__ import annotations

WEB_DIRECTORY = None


async def comfy_entrypoint():
    """Return the pack's :class:`ComfyExtension` (called by ComfyUI at start-up)."""
    from .nodes import SPDInvExtension

    return SPDInvExtension()
