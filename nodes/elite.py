"""ELITE customisation: map a reference image to a word (ELITEMapperLoader, ELITEMapper).

The mapper turns CLIP ViT-L/14 image features into a word embedding, which replaces a placeholder token
(``*``) of the text **before** the text transformer, through ComfyUI's embedding support (a tensor in
place of a token id). SPDInv-ELITE then edits with P2P refine, e.g. "a photo of a white *".
"""

from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..spdinv.elite_mapper import GlobalMapper, build_mapper, clip_features, read_mapper_file
from .clip_tokens import named, token_ids

MODELS_FOLDER = "elite"
EXTENSIONS = {".pt", ".pth", ".bin", ".safetensors"}
VIT_L = (257, 1024, 24)
"""CLIP ViT-L/14 at 224 px: tokens, width, layers."""

EliteMapperType = io.Custom("ELITE_MAPPER")


def register_models_folder() -> None:
    """``models/elite`` (and any ``elite`` folder from extra_model_paths.yaml) for the mapper files."""
    folder_paths.add_model_folder_path(MODELS_FOLDER, os.path.join(folder_paths.models_dir, MODELS_FOLDER))
    paths, extensions = folder_paths.folder_names_and_paths[MODELS_FOLDER]
    folder_paths.folder_names_and_paths[MODELS_FOLDER] = (paths, set(extensions) | EXTENSIONS)


register_models_folder()


class ELITEMapperLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ELITEMapperLoader",
            display_name="SPDInv ELITE Mapper Loader",
            category="SPDInv/ELITE",
            description="Load ELITE's global_mapper.pt (or the same tensors as safetensors) from models/elite. "
                        "The trained cross-attention K/V in the file are not used by SPDInv-ELITE and are skipped. "
                        "Files are read as plain tensors: a file that would run code is refused.",
            inputs=[
                io.Combo.Input("mapper_name", options=folder_paths.get_filename_list(MODELS_FOLDER),
                               tooltip="A mapper file in models/elite (ELITE's global_mapper.pt)."),
            ],
            outputs=[EliteMapperType.Output(display_name="mapper")],
        )

    @classmethod
    def validate_inputs(cls, mapper_name: str) -> bool | str:
        """Refuse a missing file when the prompt is queued (ComfyUI 0.3.x does not check V3 combo values)."""
        if folder_paths.get_full_path(MODELS_FOLDER, mapper_name) is None:
            return (f"mapper_name: {mapper_name!r} is not in models/{MODELS_FOLDER}; put ELITE's global_mapper.pt "
                    "there and refresh the page")
        return True

    @classmethod
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path(MODELS_FOLDER, mapper_name)
        if path is None:
            raise ValueError(f"mapper_name: {mapper_name!r} is not in models/{MODELS_FOLDER}")
        mapper_file = named("mapper_name", read_mapper_file, path)
        return io.NodeOutput(named("mapper_name", build_mapper, mapper_file, "global"))


def vision_features(clip_vision, image: torch.Tensor) -> list[torch.Tensor]:
    """ELITE's five feature levels from ComfyUI's CLIP vision model (resized to 224 without cropping, as
    ELITE does). ComfyUI's ``all_hidden_states[:, k]`` is HF ``hidden_states[k + 1]``."""
    previous = clip_vision.return_all_hidden_states
    clip_vision.return_all_hidden_states = True
    try:
        out = clip_vision.encode_image(image, crop=False)
    finally:
        clip_vision.return_all_hidden_states = previous
    last, every = out["last_hidden_state"], out["all_hidden_states"]
    found = (last.shape[1], last.shape[2], every.shape[1])
    if found != VIT_L:
        raise ValueError(f"clip_vision: ELITE needs CLIP ViT-L/14 (257 tokens, width 1024, 24 layers); this model "
                         f"gives {found[0]} tokens, width {found[1]}, {found[2]} layers. Load "
                         "clip-vit-large-patch14.safetensors (openai/clip-vit-large-patch14)")
    return clip_features(last.float(), [last] + list(every.float().unbind(1)))


def placeholder_entries(tokens: dict, placeholder_id: int) -> list[tuple[str, int, int]]:
    """``(key, batch, position)`` of every placeholder token in ``clip.tokenize`` output."""
    return [(key, b, i) for key, batches in tokens.items() for b, batch in enumerate(batches)
            for i, entry in enumerate(batch) if entry[0] == placeholder_id]


class ELITEMapper(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ELITEMapper",
            display_name="SPDInv ELITE Mapper",
            category="SPDInv/ELITE",
            description="Encode a text whose placeholder word (*) stands for the object in a reference image: ELITE's "
                        "mapper turns the image's CLIP ViT-L/14 features into that word's embedding, injected before "
                        "the text transformer. Feed the result to SPDInv Prompt-to-Prompt as target_conditioning.",
            inputs=[
                EliteMapperType.Input("mapper", tooltip="From SPDInv ELITE Mapper Loader."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-L/14 (clip-vit-large-patch14), as ELITE was "
                                    "trained with."),
                io.Image.Input("image", tooltip="The reference image whose object the placeholder word becomes."),
                io.Clip.Input("clip", tooltip="The SD1.x text encoder."),
                io.String.Input("text", multiline=True, default="a photo of a white *",
                                tooltip="The prompt, with the placeholder exactly once."),
                io.String.Input("placeholder", default="*", tooltip="The placeholder word (one CLIP token)."),
                io.Mask.Input("mask", optional=True, tooltip="The object in the reference image: the image is "
                              "masked to it before encoding, so the word describes the object only."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, mapper, clip_vision, image, clip, text, placeholder, mask=None) -> io.NodeOutput:
        placeholder_tokens = token_ids(clip)(placeholder)
        if len(placeholder_tokens) != 1:
            raise ValueError(f"placeholder: {placeholder!r} is {len(placeholder_tokens)} CLIP tokens; use a single "
                             "token such as '*'")
        tokens = clip.tokenize(text)
        if set(tokens) != {"l"}:
            raise ValueError("clip: ELITE's mapper makes SD1.x (CLIP ViT-L text, 768-d) word embeddings; this text "
                             f"encoder has {sorted(tokens)}")
        spots = placeholder_entries(tokens, placeholder_tokens[0])
        if len(spots) != 1:
            raise ValueError(f"text: the placeholder {placeholder!r} must appear exactly once, found {len(spots)} in "
                             f"{text!r}")
        if mask is not None:
            mask = mask.reshape(-1, *mask.shape[-2:])
            if mask.shape[0] not in (1, image.shape[0]) or tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
                raise ValueError(f"mask: {tuple(mask.shape)} does not match the image batch "
                                 f"{tuple(image.shape[:3])}; give one mask per image at the image's size")
            image = image * mask[..., None].to(image)
        features = vision_features(clip_vision, image)
        if not isinstance(mapper, GlobalMapper):
            raise ValueError("mapper: connect SPDInv ELITE Mapper Loader")
        with torch.no_grad():
            words = mapper(features)[:, 0]
        key, b, i = spots[0]
        conds = []
        for word in words:
            batch = list(tokens[key][b])
            batch[i] = (word.float().cpu(), *batch[i][1:])
            injected = {key: [*tokens[key][:b], batch, *tokens[key][b + 1:]]}
            conds.append(clip.encode_from_tokens_scheduled(injected))
        if len(conds) == 1:
            return io.NodeOutput(conds[0])
        meta = dict(conds[0][0][1])
        if meta.get("pooled_output") is not None:
            meta["pooled_output"] = torch.cat([c[0][1]["pooled_output"] for c in conds])
        return io.NodeOutput([[torch.cat([c[0][0] for c in conds]), meta]])
