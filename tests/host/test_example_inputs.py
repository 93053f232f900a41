"""The example photo, reference image and clip the shipped workflows load: copied into ComfyUI's input folder,
never over a user's file."""

from __future__ import annotations

import logging

from PIL import Image


def test_the_examples_are_copied_once_and_never_over_a_users_file(pack_nodes, tmp_path, caplog):
    import av

    from spdinv_pack.nodes import example_inputs

    copied = example_inputs.install_example_inputs(tmp_path)
    assert copied == [tmp_path / name for name in (example_inputs.EXAMPLE_PHOTO, example_inputs.EXAMPLE_REFERENCE,
                                                   example_inputs.EXAMPLE_CLIP)]
    with Image.open(copied[0]) as photo, Image.open(copied[1]) as reference:
        assert photo.size == (451, 300)
        assert reference.size == (450, 300)
    with av.open(str(copied[2])) as clip:
        assert sum(1 for _ in clip.decode(video=0)) == 17  # 1 + 4k frames, as Wan takes them
    assert example_inputs.install_example_inputs(tmp_path) == [], "a second load copies nothing"
    users = tmp_path / "mine"
    users.mkdir()
    (users / example_inputs.EXAMPLE_PHOTO).write_bytes(b"the user's own file")
    assert example_inputs.install_example_inputs(users) == [users / example_inputs.EXAMPLE_REFERENCE,
                                                            users / example_inputs.EXAMPLE_CLIP]
    assert (users / example_inputs.EXAMPLE_PHOTO).read_bytes() == b"the user's own file"
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING):
        assert example_inputs.install_example_inputs(blocked) == []
    assert "could not copy the example spdinv_example_cat.png" in caplog.text
