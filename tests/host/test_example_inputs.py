"""The example photo the shipped workflows load: copied into ComfyUI's input folder, never over a user's file."""

from __future__ import annotations

import logging

from PIL import Image


def test_the_example_photo_is_copied_once_and_never_over_a_users_file(pack_nodes, tmp_path, caplog):
    from spdinv_pack.nodes import example_inputs

    copied = example_inputs.install_example_inputs(tmp_path)
    assert copied == tmp_path / example_inputs.EXAMPLE_PHOTO
    with Image.open(copied) as photo:
        assert photo.size == (451, 300)
    assert example_inputs.install_example_inputs(tmp_path) is None, "a second load copies nothing"
    users = tmp_path / "mine"
    users.mkdir()
    (users / example_inputs.EXAMPLE_PHOTO).write_bytes(b"the user's own file")
    assert example_inputs.install_example_inputs(users) is None
    assert (users / example_inputs.EXAMPLE_PHOTO).read_bytes() == b"the user's own file"
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING):
        assert example_inputs.install_example_inputs(blocked) is None
    assert "could not copy the example photo" in caplog.text
