"""Attention-level editing (Prompt-to-Prompt, MasaCtrl, Plug-and-Play, attention-map recording).

Functions over q/k/v tensors with no ComfyUI import, plus a thin layer that registers them as ComfyUI
patches. The engines arrive with their issues; this package already imports without ComfyUI.
"""
