"""UI -> API workflow conversion and overrides (tools/workflow_api.py), without ComfyUI.

The node definitions below are trimmed copies of what ComfyUI 0.3.64 serves at ``/object_info``
(V1 list combos, V3 ``"COMBO"`` + ``options``, ``input_order``, ``control_after_generate``,
``image_upload``), so the widget mapping is checked against the real formats.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from spdinv_pack.tools import comfy_server, run_workflow
from spdinv_pack.tools import workflow_api as wa

SAMPLERS = ["euler", "ddim"]
SCHEDULERS = ["normal", "ddim_uniform"]

OBJECT_INFO: dict[str, Any] = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
        "input_order": {"required": ["ckpt_name"]},
        "display_name": "Load Checkpoint",
    },
    "CLIPTextEncode": {
        "input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
        "input_order": {"required": ["text", "clip"]},
        "display_name": "CLIP Text Encode (Prompt)",
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512}],
                "height": ["INT", {"default": 512}],
                "batch_size": ["INT", {"default": 1}],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size"]},
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "control_after_generate": True}],
                "steps": ["INT", {"default": 20}],
                "cfg": ["FLOAT", {"default": 8.0}],
                "sampler_name": [SAMPLERS, {}],
                "scheduler": [SCHEDULERS, {}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {}],
                "denoise": ["FLOAT", {"default": 1.0}],
            }
        },
        "input_order": {
            "required": [
                "model",
                "seed",
                "steps",
                "cfg",
                "sampler_name",
                "scheduler",
                "positive",
                "negative",
                "latent_image",
                "denoise",
            ]
        },
        "display_name": "KSampler",
    },
    "LatentUpscale": {
        "input": {
            "required": {
                "samples": ["LATENT", {}],
                "upscale_method": [["nearest-exact", "bilinear"], {}],
                "width": ["INT", {"default": 512}],
                "height": ["INT", {"default": 512}],
                "crop": [["disabled", "center"], {}],
            }
        },
        "input_order": {"required": ["samples", "upscale_method", "width", "height", "crop"]},
    },
    "VAEDecode": {
        "input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}},
        "input_order": {"required": ["samples", "vae"]},
    },
    "SaveImage": {
        "input": {
            "required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            "hidden": {"prompt": "PROMPT"},
        },
        "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt"]},
    },
    "LoadImage": {
        "input": {"required": {"image": [["cat.png", "dog.png"], {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
    },
    # V3-style node: "COMBO" + options, a combo with control_after_generate (control + filter
    # widgets), a legacy "noise_seed" INT (control widget by name), forceInput, optional widgets.
    # input_order deliberately differs from dict order.
    "V3Node": {
        "input": {
            "required": {
                "mode": ["COMBO", {"options": ["a", "b", "c"], "control_after_generate": True}],
                "noise_seed": ["INT", {"default": 5}],
                "latent": ["LATENT", {}],
                "scale": ["FLOAT", {"default": 1.5, "forceInput": True}],
            },
            "optional": {"flag": ["BOOLEAN", {"default": False}], "note": ["STRING", {"default": "hi"}]},
        },
        "input_order": {"required": ["latent", "noise_seed", "mode", "scale"], "optional": ["note", "flag"]},
        "display_name": "V3 node",
    },
    "ListNode": {
        "input": {"required": {"items": ["COMBO", {"options": ["x", "y"], "multiselect": True}]}},
        "input_order": {"required": ["items"]},
    },
}


def node(
    node_id: int,
    type_: str,
    widgets: Any = None,
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    mode: int = 0,
    title: str | None = None,
) -> dict[str, Any]:
    """A node as the frontend saves it."""
    out: dict[str, Any] = {
        "id": node_id,
        "type": type_,
        "mode": mode,
        "inputs": inputs or [],
        "outputs": outputs or [],
        "properties": {},
    }
    if widgets is not None:
        out["widgets_values"] = widgets
    if title is not None:
        out["title"] = title
    return out


def sock(name: str, type_: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    """An input slot (``widget`` marks a widget converted to / shown as an input)."""
    out: dict[str, Any] = {"name": name, "type": type_, "link": link}
    if widget:
        out["widget"] = {"name": name}
    return out


def out(name: str, type_: str) -> dict[str, Any]:
    return {"name": name, "type": type_, "links": []}


def txt2img() -> dict[str, Any]:
    """Checkpoint -> two prompts -> KSampler -> VAEDecode -> SaveImage, with a reroute, a muted node,
    a bypassed node, a primitive driving a converted widget, and a note."""
    nodes = [
        node(
            4,
            "CheckpointLoaderSimple",
            ["a.safetensors"],
            outputs=[out("MODEL", "MODEL"), out("CLIP", "CLIP"), out("VAE", "VAE")],
        ),
        node(
            6,
            "CLIPTextEncode",
            ["a tiger"],
            [sock("clip", "CLIP", 3)],
            [out("CONDITIONING", "CONDITIONING")],
            title="Target prompt",
        ),
        node(
            7,
            "CLIPTextEncode",
            ["a cat"],
            [sock("clip", "CLIP", 5)],
            [out("CONDITIONING", "CONDITIONING")],
            title="Source prompt",
        ),
        node(5, "EmptyLatentImage", [64, 48, 1], outputs=[out("LATENT", "LATENT")]),
        node(
            10,
            "LatentUpscale",
            ["bilinear", 512, 512, "disabled"],
            [sock("samples", "LATENT", 2)],
            [out("LATENT", "LATENT")],
            mode=wa.MODE_BYPASS,
        ),
        node(
            11,
            "PrimitiveNode",
            [3, "fixed"],
            outputs=[{"name": "INT", "type": "INT", "widget": {"name": "steps"}, "links": [11]}],
        ),
        node(
            3,
            "KSampler",
            [42, "randomize", 20, 7.5, "ddim", "ddim_uniform", 1.0],
            [
                sock("model", "MODEL", 1),
                sock("positive", "CONDITIONING", 4),
                sock("negative", "CONDITIONING", 6),
                sock("latent_image", "LATENT", 10),
                sock("steps", "INT", 11, widget=True),
            ],
            [out("LATENT", "LATENT")],
        ),
        node(12, "Reroute", None, [sock("", "*", 8)], [out("", "VAE")]),
        node(13, "Reroute", None, [sock("", "*", 12)], [out("", "VAE")]),
        node(8, "VAEDecode", None, [sock("samples", "LATENT", 7), sock("vae", "VAE", 13)], [out("IMAGE", "IMAGE")]),
        node(9, "SaveImage", ["final"], [sock("images", "IMAGE", 9)]),
        node(14, "SaveImage", ["muted"], [sock("images", "IMAGE", 14)], mode=wa.MODE_NEVER),
        node(15, "Note", ["remember the milk"]),
        node(16, "MarkdownNote", ["# docs"]),
    ]
    links = [
        [1, 4, 0, 3, 0, "MODEL"],
        [2, 5, 0, 10, 0, "LATENT"],
        [3, 4, 1, 6, 0, "CLIP"],
        [4, 6, 0, 3, 1, "CONDITIONING"],
        [5, 4, 1, 7, 0, "CLIP"],
        [6, 7, 0, 3, 2, "CONDITIONING"],
        [7, 3, 0, 8, 0, "LATENT"],
        [8, 4, 2, 12, 0, "VAE"],
        [12, 12, 0, 13, 0, "VAE"],
        [13, 13, 0, 8, 1, "VAE"],
        [9, 8, 0, 9, 0, "IMAGE"],
        [10, 10, 0, 3, 3, "LATENT"],
        [11, 11, 0, 3, 4, "INT"],
        [14, 8, 0, 14, 0, "IMAGE"],
    ]
    return {"last_node_id": 16, "last_link_id": 14, "nodes": nodes, "links": links, "version": 0.4}


# ----------------------------------------------------------------------------------- conversion


def test_full_workflow_converts_like_the_frontend() -> None:
    conv = wa.ui_to_api(txt2img(), OBJECT_INFO)
    p = conv.prompt
    assert set(p) == {"4", "6", "7", "5", "3", "8", "9"}  # no muted/bypassed/virtual nodes
    assert p["3"]["class_type"] == "KSampler"
    assert p["3"]["inputs"] == {
        "seed": 42,
        "steps": 3,
        "cfg": 7.5,
        "sampler_name": "ddim",
        "scheduler": "ddim_uniform",
        "denoise": 1.0,
        "model": ["4", 0],
        "positive": ["6", 0],
        "negative": ["7", 0],
        "latent_image": ["5", 0],  # through the bypassed LatentUpscale
    }
    assert p["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}  # through two reroutes
    assert p["4"]["inputs"] == {"ckpt_name": "a.safetensors"}
    assert p["5"]["inputs"] == {"width": 64, "height": 48, "batch_size": 1}
    assert p["9"]["inputs"] == {"filename_prefix": "final", "images": ["8", 0]}
    assert conv.titles["6"] == "Target prompt" and p["6"]["_meta"]["title"] == "Target prompt"
    assert conv.titles["4"] == "Load Checkpoint"  # no UI title: the display name
    assert conv.titles["5"] == "EmptyLatentImage"  # no display name either: the class type
    assert conv.warnings == []


def test_control_after_generate_value_is_skipped_only_when_present() -> None:
    info = OBJECT_INFO["KSampler"]
    expected = {"seed": 1, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5}
    for values in (
        [1, "fixed", 2, 3.0, "euler", "normal", 0.5],
        [1, True, 2, 3.0, "euler", "normal", 0.5],  # very old workflows saved a bool there
        [1, 2, 3.0, "euler", "normal", 0.5],  # saved before the control widget existed
    ):
        assert wa.map_widget_values(info, values) == expected, values


def test_v3_combo_control_filter_legacy_seed_force_input_and_input_order() -> None:
    specs = wa.widget_specs(OBJECT_INFO["V3Node"])
    assert [(s.name, s.type, s.controls) for s in specs] == [
        ("noise_seed", "INT", 1),
        ("mode", "COMBO", 2),
        ("note", "STRING", 0),
        ("flag", "BOOLEAN", 0),
    ]  # input_order, not dict order; latent and forceInput scale are sockets
    values = [7, "increment", "b", "randomize", "", "text", True]
    assert wa.map_widget_values(OBJECT_INFO["V3Node"], values) == {
        "noise_seed": 7,
        "mode": "b",
        "note": "text",
        "flag": True,
    }


def test_upload_widget_value_is_not_sent() -> None:
    wf = {
        "nodes": [
            node(1, "LoadImage", ["dog.png", "image"], outputs=[out("IMAGE", "IMAGE"), out("MASK", "MASK")]),
            node(2, "SaveImage", ["x"], [sock("images", "IMAGE", 1)]),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    p = wa.ui_to_api(wf, OBJECT_INFO).prompt
    assert p["1"]["inputs"] == {"image": "dog.png"}
    assert [s.name for s in wa.widget_specs(OBJECT_INFO["LoadImage"])] == ["image", "upload"]


def test_missing_widget_values_get_defaults_with_a_warning() -> None:
    wf = {"nodes": [node(1, "EmptyLatentImage", [64]), node(2, "V3Node", [])], "links": []}
    conv = wa.ui_to_api(wf, OBJECT_INFO)
    assert conv.prompt["1"]["inputs"] == {"width": 64, "height": 512, "batch_size": 1}
    assert conv.prompt["2"]["inputs"] == {"noise_seed": 5, "mode": "a", "note": "hi", "flag": False}
    assert any("'height'" in w and "node 1" in w for w in conv.warnings)


def test_dict_widget_values_and_list_values() -> None:
    wf = {
        "nodes": [
            node(1, "EmptyLatentImage", {"width": 8, "height": 16, "batch_size": 2, "junk": 1}),
            node(2, "ListNode", [["x", "y"]]),
        ],
        "links": [],
    }
    p = wa.ui_to_api(wf, OBJECT_INFO).prompt
    assert p["1"]["inputs"] == {"width": 8, "height": 16, "batch_size": 2}
    assert p["2"]["inputs"] == {"items": {"__value__": ["x", "y"]}}  # a bare list would read as a link


def test_converted_widget_linked_to_a_node_becomes_a_link() -> None:
    wf = {
        "nodes": [
            node(1, "V3Node", [1, "fixed", "a", "fixed", "", "n", False], outputs=[out("INT", "INT")]),
            node(2, "EmptyLatentImage", [8, 8, 1], [sock("width", "INT", 1, widget=True)]),
        ],
        "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT"}],
    }
    p = wa.ui_to_api(wf, OBJECT_INFO).prompt  # object-form links, as subgraph-era frontends save them
    assert p["2"]["inputs"] == {"width": ["1", 0], "height": 8, "batch_size": 1}


def test_links_from_muted_nodes_are_dropped_and_bypass_falls_back_to_type_match() -> None:
    nodes = [
        node(1, "EmptyLatentImage", [8, 8, 1], outputs=[out("LATENT", "LATENT")], mode=wa.MODE_NEVER),
        node(2, "VAEDecode", None, [sock("samples", "LATENT", 1), sock("vae", "VAE", None)], [out("IMAGE", "IMAGE")]),
        node(3, "EmptyLatentImage", [8, 8, 1], outputs=[out("LATENT", "LATENT")]),
        # bypassed node whose output 0 is LATENT but input 0 is MODEL: the first LATENT input is used
        node(
            4,
            "KSampler",
            [1, "fixed", 2, 3.0, "euler", "normal", 1.0],
            [
                sock("model", "MODEL", None),
                sock("positive", "CONDITIONING", None),
                sock("negative", "CONDITIONING", None),
                sock("latent_image", "LATENT", 2),
            ],
            [out("LATENT", "LATENT")],
            mode=wa.MODE_BYPASS,
        ),
        node(5, "VAEDecode", None, [sock("samples", "LATENT", 3), sock("vae", "VAE", None)], [out("IMAGE", "IMAGE")]),
    ]
    links = [[1, 1, 0, 2, 0, "LATENT"], [2, 3, 0, 4, 3, "LATENT"], [3, 4, 0, 5, 0, "LATENT"]]
    p = wa.ui_to_api({"nodes": nodes, "links": links}, OBJECT_INFO).prompt
    assert set(p) == {"2", "3", "5"}
    assert p["2"]["inputs"] == {}
    assert p["5"]["inputs"] == {"samples": ["3", 0]}


def test_subgraph_is_flattened_with_colon_ids() -> None:
    sg_id = "0b0e6c1c-0000-4000-8000-000000000001"
    subgraph = {
        "id": sg_id,
        "name": "encode",
        "inputNode": {"id": -10},
        "outputNode": {"id": -20},
        "inputs": [
            {"name": "clip", "type": "CLIP", "linkIds": [1]},
            {"name": "text", "type": "STRING", "linkIds": [2]},
        ],
        "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [3]}],
        "nodes": [
            node(
                1,
                "CLIPTextEncode",
                ["inner text"],
                [sock("clip", "CLIP", 1), sock("text", "STRING", 2, True)],
                [out("CONDITIONING", "CONDITIONING")],
                title="Inner",
            )
        ],
        "links": [
            {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "CLIP"},
            {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 1, "target_slot": 1, "type": "STRING"},
            {"id": 3, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"},
        ],
    }
    wf = {
        "nodes": [
            node(
                4,
                "CheckpointLoaderSimple",
                ["a.safetensors"],
                outputs=[out("MODEL", "MODEL"), out("CLIP", "CLIP"), out("VAE", "VAE")],
            ),
            node(20, sg_id, ["promoted text"], [sock("clip", "CLIP", 1)], [out("CONDITIONING", "CONDITIONING")]),
            node(
                3,
                "KSampler",
                [1, "fixed", 2, 3.0, "euler", "normal", 1.0],
                [sock("model", "MODEL", 2), sock("positive", "CONDITIONING", 3)],
                [out("LATENT", "LATENT")],
            ),
        ],
        "links": [[1, 4, 1, 20, 0, "CLIP"], [2, 4, 0, 3, 0, "MODEL"], [3, 20, 0, 3, 1, "CONDITIONING"]],
        "definitions": {"subgraphs": [subgraph]},
    }
    conv = wa.ui_to_api(wf, OBJECT_INFO)
    assert set(conv.prompt) == {"4", "20:1", "3"}
    assert conv.prompt["20:1"]["inputs"] == {"text": "promoted text", "clip": ["4", 1]}
    assert conv.prompt["3"]["inputs"]["positive"] == ["20:1", 0]
    assert conv.titles["20:1"] == "Inner"
    wf["nodes"][1]["widgets_values"] = []  # no promoted value saved: the inner widget keeps its own
    assert wa.ui_to_api(wf, OBJECT_INFO).prompt["20:1"]["inputs"]["text"] == "inner text"


def test_unknown_node_types_and_group_nodes_are_reported_together() -> None:
    wf = {
        "nodes": [node(1, "NoSuchNode", [1]), node(2, "workflow>MyGroup", []), node(3, "SaveImage", ["x"])],
        "links": [],
    }
    with pytest.raises(wa.WorkflowError) as err:
        wa.ui_to_api(wf, OBJECT_INFO)
    msg = str(err.value)
    assert "node 1 (NoSuchNode)" in msg and "unknown node type 'NoSuchNode'" in msg
    assert "node 2 (workflow>MyGroup)" in msg and "group node" in msg


def test_dangling_link_is_a_warning() -> None:
    wf = {"nodes": [node(2, "VAEDecode", None, [sock("samples", "LATENT", 99)])], "links": []}
    conv = wa.ui_to_api(wf, OBJECT_INFO)
    assert conv.prompt["2"]["inputs"] == {}
    assert "dangling link 99" in conv.warnings[0]


def test_api_format_passes_through_with_titles() -> None:
    api = {
        "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}, "_meta": {"title": "Keep me"}},
        2: {"class_type": "EmptyLatentImage", "inputs": {"width": 8}},
    }
    assert not wa.is_ui_workflow(api) and wa.is_ui_workflow(txt2img())
    conv = wa.to_api(api)
    assert conv.titles == {"1": "Keep me", "2": "EmptyLatentImage"}
    assert set(conv.prompt) == {"1", "2"}
    conv.prompt["1"]["inputs"]["filename_prefix"] = "changed"
    assert api["1"]["inputs"]["filename_prefix"] == "x"  # a copy
    with pytest.raises(wa.WorkflowError, match="needs /object_info"):
        wa.to_api(txt2img())
    with pytest.raises(wa.WorkflowError, match="no class_type"):
        wa.to_api({"1": {"inputs": {}}})


# ------------------------------------------------------------------------------------ overrides


@pytest.fixture()
def prompt() -> dict[str, Any]:
    return wa.ui_to_api(txt2img(), OBJECT_INFO).prompt


def test_parse_overrides_values() -> None:
    assert wa.parse_overrides(["3.steps=30", "KSampler.cfg=2.5", "a.b=true", "x.text=a cat", 'x.q="7"', "x.e="]) == {
        "3.steps": 30,
        "KSampler.cfg": 2.5,
        "a.b": True,
        "x.text": "a cat",
        "x.q": "7",
        "x.e": "",
    }
    assert wa.parse_overrides(["x.t=a=b"]) == {"x.t": "a=b"}  # only the first '=' splits
    with pytest.raises(wa.OverrideError, match="NODE.INPUT=VALUE"):
        wa.parse_overrides(["3.steps"])


def test_overrides_by_id_title_and_class(prompt: dict[str, Any]) -> None:
    wa.apply_overrides(
        prompt,
        {"3.steps": 9, "Source prompt.text": "a dog", "CLIPTextEncode.clip": ["4", 1], "KSampler.seed": 7},
        OBJECT_INFO,
    )
    assert prompt["3"]["inputs"]["steps"] == 9 and prompt["3"]["inputs"]["seed"] == 7
    assert prompt["7"]["inputs"]["text"] == "a dog" and prompt["6"]["inputs"]["text"] == "a tiger"
    wa.apply_overrides(prompt, {"CLIPTextEncode.text": "both"})  # a class type sets every node of it
    assert prompt["6"]["inputs"]["text"] == prompt["7"]["inputs"]["text"] == "both"
    wa.apply_overrides(prompt, {"target PROMPT.text": "ci"})  # case-insensitive title as a last resort
    assert prompt["6"]["inputs"]["text"] == "ci"


def test_override_on_a_title_with_dots(prompt: dict[str, Any]) -> None:
    prompt["9"]["_meta"]["title"] = "Save v1.5"
    wa.apply_overrides(prompt, {"Save v1.5.filename_prefix": "dotted"})
    assert prompt["9"]["inputs"]["filename_prefix"] == "dotted"


def test_override_of_an_input_known_only_from_object_info(prompt: dict[str, Any]) -> None:
    del prompt["3"]["inputs"]["denoise"]
    with pytest.raises(wa.OverrideError):
        wa.apply_overrides(prompt, {"3.denoise": 0.5})
    wa.apply_overrides(prompt, {"3.denoise": 0.5}, OBJECT_INFO)
    assert prompt["3"]["inputs"]["denoise"] == 0.5


def test_override_errors_name_the_problem(prompt: dict[str, Any]) -> None:
    before = copy.deepcopy(prompt)
    with pytest.raises(wa.OverrideError) as err:
        wa.apply_overrides(prompt, {"Nope.steps": 1})
    assert "no node with id, title or class type 'Nope'" in str(err.value)
    assert "3 KSampler" in str(err.value) and "'Target prompt'" in str(err.value)
    with pytest.raises(wa.OverrideError) as err:
        wa.apply_overrides(prompt, {"KSampler.stepz": 1}, OBJECT_INFO)
    assert "node 3 (KSampler) has no input 'stepz'" in str(err.value) and "steps" in str(err.value)
    with pytest.raises(wa.OverrideError, match="must be NODE.INPUT"):
        wa.apply_overrides(prompt, {"steps": 1})
    assert prompt == before


def test_set_input_where_matches_title_substring(prompt: dict[str, Any]) -> None:
    assert wa.set_input_where(prompt, "text", "x", class_type="CLIPTextEncode", title_contains="SOURCE") == ["7"]
    assert prompt["7"]["inputs"]["text"] == "x"
    assert wa.set_input_where(prompt, "text", "x", class_type="KSampler", title_contains="source") == []


# ----------------------------------------------------------------------- runner and server helpers


def test_runner_build_prompt_convenience_flags() -> None:
    conv = run_workflow.build_prompt(
        txt2img(),
        OBJECT_INFO,
        checkpoint_name="b.safetensors",
        source_prompt="a photo of a cat",
        target_prompt="a photo of a tiger",
        overrides={"KSampler.cfg": 1.0},
    )
    p = conv.prompt
    assert p["4"]["inputs"]["ckpt_name"] == "b.safetensors"
    assert p["7"]["inputs"]["text"] == "a photo of a cat" and p["6"]["inputs"]["text"] == "a photo of a tiger"
    assert p["3"]["inputs"]["cfg"] == 1.0
    with pytest.raises(wa.OverrideError, match="--image: no matching LoadImage"):
        run_workflow.build_prompt(txt2img(), OBJECT_INFO, image_name="cat.png")
    api = copy.deepcopy(p)
    for entry in api.values():
        entry.pop("_meta")
    with pytest.raises(wa.OverrideError, match="'source'.*CLIPTextEncode nodes: 6 'CLIPTextEncode'"):
        run_workflow.build_prompt(api, None, source_prompt="x")  # API input without titles


def test_runner_prompt_flags_also_fill_engine_nodes_that_take_both_texts() -> None:
    api = {"1": {"class_type": "P2PAttentionControl", "inputs": {"source_text": "a", "target_text": "b"},
                 "_meta": {"title": "Prompt-to-Prompt"}}}
    p = run_workflow.build_prompt(api, None, source_prompt="a cat", target_prompt="a dog").prompt
    assert p["1"]["inputs"] == {"source_text": "a cat", "target_text": "a dog"}
    linked = {
        "1": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a"}, "_meta": {"title": "Source prompt"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["1", 0]}, "_meta": {"title": "Source encoding"}},
        "3": {"class_type": "P2PAttentionControl", "inputs": {"source_text": ["1", 0], "target_text": "b"},
              "_meta": {"title": "Prompt-to-Prompt"}},
    }
    p = run_workflow.build_prompt(linked, None, source_prompt="a cat", target_prompt="a dog").prompt
    assert p["1"]["inputs"]["value"] == "a cat" and p["2"]["inputs"]["text"] == ["1", 0]
    assert p["3"]["inputs"] == {"source_text": ["1", 0], "target_text": "a dog"}


def test_runner_cli_reports_errors_without_starting_a_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_workflow.main([str(tmp_path / "missing.json"), "--comfyui", str(tmp_path)]) == 1
    assert "cannot read workflow" in capsys.readouterr().err
    bad = tmp_path / "w.json"
    bad.write_text("{}")
    assert run_workflow.main([str(bad), "--comfyui", str(tmp_path), "--set", "oops"]) == 1
    assert "NODE.INPUT=VALUE" in capsys.readouterr().err


def test_server_helpers(tmp_path: Path) -> None:
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "cli_args.py").write_text(
        'parser.add_argument("--listen", type=str)\nparser.add_argument(\n    "--cpu", action="store_true")\n'
    )
    assert comfy_server.supported_cli_flags(tmp_path) == {"--listen", "--cpu"}
    yaml_path = comfy_server.write_extra_model_paths(
        tmp_path / "x.yaml", {"checkpoints": [tmp_path / "a b", tmp_path], "loras": []}
    )
    text = yaml_path.read_text()
    assert text.startswith("spdinv_runner:\n    checkpoints: |\n")
    assert f"        {(tmp_path / 'a b').resolve()}\n" in text and "loras" not in text
    port = comfy_server.free_port()
    assert 0 < port < 65536
    with pytest.raises(comfy_server.ComfyServerError, match="not a ComfyUI checkout"):
        comfy_server.ComfyServer(tmp_path)
