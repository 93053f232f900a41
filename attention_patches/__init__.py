"""Attention-level editing (Prompt-to-Prompt, MasaCtrl, Plug-and-Play, attention-map recording).

``attention_math`` (what attention computes), ``engine`` (the engines' lifecycle and step windows, the step
read from ComfyUI's sigmas), one module per engine, and ``registration``, the thin layer that installs an
engine's rules as ComfyUI patches on a model clone. The branch layout the engines read rows through is the
core's ``spdinv.branches``. Nothing here imports ComfyUI.
"""
