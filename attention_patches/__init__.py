"""Attention-level editing (Prompt-to-Prompt, MasaCtrl, Plug-and-Play, MM-DiT mutual attention).

``run`` (one edit run as a value, read from each model call), ``attention_call`` (what every engine hook gets),
``engine`` (the engines' base: immutable configuration), one module per engine, ``attention_math`` (what
attention computes), ``families`` (each model family as data: sites, tokens, grid, conditioning, engines and
their defaults; ``unet_layers`` and ``dit_blocks`` find the sites), and ``registration``, the thin layer that
installs an engine as ComfyUI patches on a model clone. The branch layout the engines read rows through is the
core's ``spdinv.branches``. Nothing here imports ComfyUI.
"""
