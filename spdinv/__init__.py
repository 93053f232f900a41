"""SPDInv as plain PyTorch: sigma grids, deterministic DDIM in ComfyUI's sigma form, inversion solvers.

Nothing here imports ComfyUI. Models enter as a ``denoise(x, sigma)`` callable that returns the
denoised latent (ComfyUI's convention), so the same code serves SD1.x, SD2.x, SDXL and flow models.
"""
