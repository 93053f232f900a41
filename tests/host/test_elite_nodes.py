"""ELITE mapper nodes inside real ComfyUI: random ViT-L/14 vision tower and random mapper files in the
published layout (made by the factory; the real weights cannot be downloaded here)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from spdinv_pack.tests.host.pack_calls import edit, invert, photo

TEXT = "a photo of a white *"


@pytest.fixture(scope="module")
def elite_folder(comfy_env, tmp_path_factory, elite_mapper_path_global, elite_mapper_path_safetensors):
    """A models/elite folder with the published-layout files, a wrong-layout file and a code-running pickle."""
    import folder_paths

    folder = tmp_path_factory.mktemp("elite")
    shutil.copy(elite_mapper_path_global, folder / "global_mapper.pt")
    shutil.copy(elite_mapper_path_safetensors, folder / "global_mapper.safetensors")
    torch.save({"mapping_0.0.weight": torch.zeros(3, 3)}, folder / "wrong_layout.pt")
    (folder / "runs_code.pt").write_bytes(pickle.dumps(Evil()))
    folder_paths.add_model_folder_path("elite", str(folder))
    return folder


MARKER = Path("/tmp/spdinv-elite-pickle-ran")


class Evil:
    """Unpickling this would create a marker file; a safe loader must refuse it without running it."""

    def __reduce__(self):
        return (open, (str(MARKER), "w"))


@pytest.fixture(scope="module")
def clip_vision(comfy_env, clip_vision_path):
    import comfy.clip_vision

    return comfy.clip_vision.load(str(clip_vision_path))


def load_mapper(run_node, pack_nodes, name):
    return run_node(pack_nodes.ELITEMapperLoader, mapper_name=name).result[0]


def test_mapper_files_load_from_pt_and_safetensors_alike(run_node, pack_nodes, elite_folder):
    pt = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    st = load_mapper(run_node, pack_nodes, "global_mapper.safetensors")
    for (name, a), (_, b) in zip(pt.state_dict().items(), st.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_placeholder_word_is_injected_before_the_text_transformer(run_node, pack_nodes, elite_folder,
                                                                      clip_vision, sd15, comfy_env):
    _, clip, _ = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    (cond,) = run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision, image=photo(96), clip=clip,
                       text=TEXT, placeholder="*").result
    (plain,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TEXT, clip=clip)
    position = 1 + 5  # BOS, then "a photo of a white"
    # The text transformer is causal: positions before the placeholder cannot see the injected word.
    torch.testing.assert_close(cond[0][0][:, :position], plain[0][0][:, :position])
    assert not torch.allclose(cond[0][0][:, position], plain[0][0][:, position])
    images = torch.cat([photo(96), photo(96).flip(2)])
    (two,) = run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision, image=images, clip=clip,
                      text=TEXT, placeholder="*").result
    assert two[0][0].shape[0] == 2 and not torch.allclose(two[0][0][0], two[0][0][1])


def test_an_elite_edit_runs_with_p2p_refine(run_node, pack_nodes, elite_folder, clip_vision, sd15, comfy_env):
    model, clip, vae = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(64), vae=vae)
    (elite_cond,) = run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision, image=photo(64),
                             clip=clip, text=TEXT, placeholder="*").result
    patched, source, target = run_node(
        pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text="a photo of a cat", target_text=TEXT,
        mode="refine", cross_replace=0.4, self_replace=0.6, blend_source_words="", blend_target_words="",
        blend_threshold=0.3, blend_start=0.2, reweight="", proximal_guidance=False, proximal_quantile=0.7,
        inversion_guidance=False, target_conditioning=elite_cond).result
    assert target is elite_cond
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=4)
    edited, _, _ = edit(run_node, pack_nodes, patched, inversion, source, target)
    assert torch.isfinite(edited["samples"]).all()


@pytest.mark.parametrize("name,match", [
    ("wrong_layout.pt", "mapper_name: .*mapping_0.0.weight"),
    ("runs_code.pt", "mapper_name: .*plain"),
])
def test_bad_mapper_files_are_refused_without_running_code(run_node, pack_nodes, elite_folder, name, match):
    MARKER.unlink(missing_ok=True)
    with pytest.raises(ValueError, match=match):
        load_mapper(run_node, pack_nodes, name)
    assert not MARKER.exists()


@pytest.mark.parametrize("text,placeholder,match", [
    ("a photo of a white cat", "*", "text: the placeholder '\\*' must appear exactly once, found 0"),
    ("a * next to a *", "*", "found 2"),
    (TEXT, "two words", "placeholder: "),
])
def test_bad_texts_name_the_input(run_node, pack_nodes, elite_folder, clip_vision, sd15, text, placeholder, match):
    _, clip, _ = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    with pytest.raises(ValueError, match=match):
        run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision, image=photo(64), clip=clip,
                 text=text, placeholder=placeholder)


def test_a_mask_batch_that_does_not_match_the_images_is_refused(run_node, pack_nodes, elite_folder, clip_vision,
                                                               sd15):
    _, clip, _ = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    with pytest.raises(ValueError, match="^mask: "):
        run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision, image=photo(64).repeat(3, 1, 1, 1),
                 clip=clip, text=TEXT, placeholder="*", mask=torch.ones(2, 64, 64))


class NotViTL:
    """A stand-in CLIP vision model with ViT-H/14 output sizes (a real one is 2.5 GB of random weights)."""

    return_all_hidden_states = False

    def encode_image(self, image, crop=True):
        return {"last_hidden_state": torch.zeros(image.shape[0], 257, 1280),
                "all_hidden_states": torch.zeros(image.shape[0], 32, 257, 1280)}


def test_a_clip_vision_model_that_is_not_vit_l_is_refused(run_node, pack_nodes, elite_folder, sd15):
    _, clip, _ = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    with pytest.raises(ValueError, match="clip_vision: ELITE needs CLIP ViT-L/14"):
        run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=NotViTL(), image=photo(64), clip=clip,
                 text=TEXT, placeholder="*")


def test_the_conditioning_equals_encoding_the_text_with_the_mapped_vector_by_hand(run_node, pack_nodes, elite_folder,
                                                                                 clip_vision, sd15, comfy_env):
    _, clip, _ = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    (plain_before,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TEXT, clip=clip)
    (cond,) = run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision, image=photo(96), clip=clip,
                       text=TEXT, placeholder="*").result
    clip_vision.return_all_hidden_states = True
    try:
        out = clip_vision.encode_image(photo(96), crop=False)
    finally:
        clip_vision.return_all_hidden_states = False
    layers = out["all_hidden_states"].float()
    features = [out["last_hidden_state"].float()] + [layers[:, k - 1] for k in (4, 8, 12, 16)]
    with torch.no_grad():
        word = mapper(features)[0, 0]
    tokens = clip.tokenize(TEXT)
    star = clip.tokenize("*")["l"][0][1][0]
    batch = [(word, w) if t == star else (t, w) for t, w in tokens["l"][0]]
    by_hand = clip.encode_from_tokens_scheduled({"l": [batch]})
    torch.testing.assert_close(cond[0][0], by_hand[0][0])
    (plain_after,) = run_node(comfy_env.nodes.CLIPTextEncode, text=TEXT, clip=clip)
    assert torch.equal(plain_before[0][0], plain_after[0][0])
    assert clip_vision.return_all_hidden_states is False


def test_two_reference_images_for_one_photo_are_refused_by_the_sampler(run_node, pack_nodes, elite_folder,
                                                                      clip_vision, sd15, comfy_env):
    model, clip, vae = sd15
    mapper = load_mapper(run_node, pack_nodes, "global_mapper.pt")
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(64), vae=vae)
    (source,) = run_node(comfy_env.nodes.CLIPTextEncode, text="a photo of a cat", clip=clip)
    (two,) = run_node(pack_nodes.ELITEMapper, mapper=mapper, clip_vision=clip_vision,
                      image=torch.cat([photo(64), photo(64)]), clip=clip, text=TEXT, placeholder="*").result
    inversion, _ = invert(run_node, pack_nodes, model, source, latent, steps=2)
    with pytest.raises(ValueError, match="target: batch of 2 does not match the 1 image"):
        edit(run_node, pack_nodes, model, inversion, source, two)
