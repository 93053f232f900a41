"""The runner's workflow handling (tools/workflow_api.py) without ComfyUI: UI -> API through comfy-cli (skipped
without it), the errors when it is missing or a node type is unknown, overrides, and the runner's flags.

The node definitions below are trimmed copies of what ComfyUI 0.3.64 serves at ``/object_info``.
"""

from __future__ import annotations

import copy
import json
import sys
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
            mode=4,  # bypassed
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
            [42, "randomize", 3, 7.5, "ddim", "ddim_uniform", 1.0],  # steps: the frontend keeps the primitive's value
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
        node(14, "SaveImage", ["muted"], [sock("images", "IMAGE", 14)], mode=2),  # muted
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


def txt2img_api() -> dict[str, Any]:
    """What the frontend queues for :func:`txt2img` (``graphToPrompt``)."""
    def entry(class_type: str, inputs: dict[str, Any], title: str) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "4": entry("CheckpointLoaderSimple", {"ckpt_name": "a.safetensors"}, "Load Checkpoint"),
        "6": entry("CLIPTextEncode", {"text": "a tiger", "clip": ["4", 1]}, "Target prompt"),
        "7": entry("CLIPTextEncode", {"text": "a cat", "clip": ["4", 1]}, "Source prompt"),
        "5": entry("EmptyLatentImage", {"width": 64, "height": 48, "batch_size": 1}, "EmptyLatentImage"),
        "3": entry("KSampler", {"seed": 42, "steps": 3, "cfg": 7.5, "sampler_name": "ddim",
                                "scheduler": "ddim_uniform", "denoise": 1.0, "model": ["4", 0],
                                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}, "KSampler"),
        "8": entry("VAEDecode", {"samples": ["3", 0], "vae": ["4", 2]}, "VAEDecode"),
        "9": entry("SaveImage", {"filename_prefix": "final", "images": ["8", 0]}, "SaveImage"),
    }


# ----------------------------------------------------------------------------------- conversion


def test_comfy_cli_converts_a_workflow_like_the_frontend() -> None:
    pytest.importorskip("comfy_cli.workflow_to_api", reason="UI-format workflows are converted by comfy-cli")
    conv = wa.ui_to_api(txt2img(), OBJECT_INFO)
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    # no muted/bypassed/virtual nodes; links through the bypassed upscale and two reroutes; the primitive's value
    assert strip(conv.prompt) == strip(txt2img_api())
    assert conv.titles["6"] == "Target prompt" and conv.titles["7"] == "Source prompt"


def test_comfy_cli_missing_is_named_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "comfy_cli.workflow_to_api", None)
    with pytest.raises(wa.WorkflowError, match=r"pip install comfy-cli.*workflows/api/.*Export \(API\)"):
        wa.ui_to_api(txt2img(), OBJECT_INFO)


def test_unknown_node_types_are_named_before_conversion() -> None:
    pytest.importorskip("comfy_cli.workflow_to_api", reason="UI-format workflows are converted by comfy-cli")
    workflow = txt2img()
    workflow["nodes"].append(node(20, "NoSuchNode", [1]))
    with pytest.raises(wa.WorkflowError, match="node types the server does not know: NoSuchNode"):
        wa.ui_to_api(workflow, OBJECT_INFO)


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


def test_every_shipped_workflow_has_its_api_twin_beside_it() -> None:
    shipped = wa.shipped_workflows()
    assert len(shipped) >= 5
    for ui in shipped:
        twin = wa.api_twin(ui)
        assert twin.is_file(), f"{ui.name}: no API twin at {twin}"
        assert wa.is_ui_workflow(json.loads(ui.read_text()))
        assert not wa.is_ui_workflow(json.loads(twin.read_text()))


# ------------------------------------------------------------------------------------ overrides


@pytest.fixture()
def prompt() -> dict[str, Any]:
    return txt2img_api()


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
        txt2img_api(),
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
        run_workflow.build_prompt(txt2img_api(), OBJECT_INFO, image_name="cat.png")
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


# ------------------------------------------------------------------------------------ shipped workflows' metadata

MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
MODEL_FOLDERS = {"checkpoints", "diffusion_models", "text_encoders", "vae", "clip_vision", "elite"}


@pytest.mark.parametrize("ui_path", wa.shipped_workflows(), ids=lambda p: p.stem)
def test_every_loader_of_a_shipped_workflow_names_its_model_file_folder_and_download_url(ui_path: Path) -> None:
    """The frontend offers a missing model's download from the loader's ``properties.models``: each model file a
    loader's widgets name must be listed there with its models folder and an https download URL."""
    loaders = [n for n in json.loads(ui_path.read_text())["nodes"] if n["type"].endswith("Loader")
               or n["type"] == "CheckpointLoaderSimple"]
    for node in loaders:
        files = [v for v in node.get("widgets_values") or [] if isinstance(v, str) and v.endswith(MODEL_EXTENSIONS)]
        assert files, f"{ui_path.stem}: {node['type']} names no model file"
        models = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
        assert set(files) <= set(models), f"{ui_path.stem}: {node['type']} has no download metadata for {files}"
        for name in files:
            assert models[name]["directory"] in MODEL_FOLDERS, models[name]
            assert models[name]["url"].startswith("https://huggingface.co/"), models[name]


def test_inversions_compared_in_one_workflow_take_their_steps_from_one_node() -> None:
    """Two inversions compared side by side (the reconstruction workflows) must run the same steps: both ``steps``
    inputs are linked to one primitive, so changing it changes both."""
    compared = 0
    for ui_path in wa.shipped_workflows():
        twin = json.loads(wa.api_twin(ui_path).read_text())
        steps = [n["inputs"]["steps"] for n in twin.values() if n["class_type"] == "SPDInvInvert"]
        if len(steps) < 2:
            continue
        compared += 1
        assert all(isinstance(s, list) for s in steps), f"{ui_path.stem}: a steps widget is not linked: {steps}"
        assert len({tuple(s) for s in steps}) == 1, f"{ui_path.stem}: {steps}"
        assert twin[steps[0][0]]["class_type"] == "PrimitiveInt", ui_path.stem
    assert compared >= 2, "the two reconstruction workflows compare two inversions"


def test_the_elite_workflow_puts_the_example_cup_into_the_cat_photo() -> None:
    """The reference image is another object than the photo (the cup, shipped with its licence recorded), and the
    target prompt is the source prompt with the subject replaced by the placeholder."""
    twin = json.loads(wa.api_twin(wa.WORKFLOWS / "SPDInv edit with ELITE.json").read_text())
    images = {n["_meta"]["title"].split(" (")[0]: n["inputs"]["image"] for n in twin.values()
              if n["class_type"] == "LoadImage"}
    assert images == {"Photo": "spdinv_example_cat.png", "Reference image": "spdinv_example_cup.png"}
    inputs = wa.WORKFLOWS / "input"
    assert (inputs / "spdinv_example_cup.png").is_file()
    assert "`spdinv_example_cup.png`" in (inputs / "README.md").read_text()
    texts = {n["_meta"]["title"].split(" (")[0]: n["inputs"]["value"] for n in twin.values()
             if n["class_type"] == "PrimitiveStringMultiline"}
    source, target = texts["Source prompt"].split(), texts["Target prompt"].split()
    assert target.count("*") == 1 and source[:-1] == target[:-1] and target[-1] == "*", texts
