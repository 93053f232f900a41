"""Run a ComfyUI workflow headlessly with this node pack loaded, and collect its output images.

    python -m tools.run_workflow "workflows/api/SPDInv edit with Prompt to Prompt.json" --comfyui ~/ComfyUI \\
        --checkpoint ~/models/sd15.safetensors --image cat.png \\
        --source-prompt "a cat" --target-prompt "a tiger" --set "KSampler.steps=20" --out out/

Starts a private ComfyUI server (``tools/comfy_server.py``) with the checkpoint's folder registered,
copies the image into its input directory (without ``--image`` the shipped workflows use the pack's example
photo), applies the overrides, runs it, and copies the images into ``--out`` (same file names; existing files
are overwritten). Exits non-zero with the error on failure. API-format files run as they are; a UI-format
workflow is converted by comfy-cli (``pip install comfy-cli``; see ``tools/workflow_api.py``).

Also usable as a library: :func:`build_prompt` and :func:`run_workflow`. Standard library only, apart from
comfy-cli for UI-format files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comfy_server import REPO_ROOT, ComfyServer, ComfyServerError
from .workflow_api import (
    Conversion,
    OverrideError,
    WorkflowError,
    api_titles,
    apply_overrides,
    is_ui_workflow,
    parse_overrides,
    set_input_where,
    to_api,
    ui_converter,
)


@dataclass
class RunResult:
    """What one run produced: copied images, the prompt that ran, its history entry and timings."""

    images: list[Path]
    prompt: dict[str, Any]
    prompt_id: str
    history: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def load_workflow(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a workflow JSON file (UI or API format)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise WorkflowError(f"workflow {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise WorkflowError(f"workflow {path} is not a JSON object")
    return data


def _require(changed: list[str], what: str, prompt: Mapping[str, Any], class_type: str) -> None:
    if changed:
        return
    present = [f"{i} {t!r}" for i, t in api_titles(prompt).items() if prompt[i].get("class_type") == class_type]
    raise OverrideError(
        f"{what}: no matching {class_type} node in the workflow"
        + (f" (its {class_type} nodes: {', '.join(present)})" if present else "")
    )


def _set_prompt_text(prompt: dict[str, Any], word: str, text: str) -> list[str]:
    """Set a prompt wherever the workflow types it: the ``text`` of CLIPTextEncode nodes and the ``value`` of
    String primitives whose title contains ``word``, and ``<word>_text`` inputs of engine nodes. Inputs fed by a
    link are left alone (they receive the text from the node that is set)."""
    titles = api_titles(prompt)
    targets = {"CLIPTextEncode": "text", "PrimitiveString": "value", "PrimitiveStringMultiline": "value"}
    changed = []
    for node_id, entry in prompt.items():
        inputs = entry.setdefault("inputs", {})
        name = targets.get(entry.get("class_type"))
        names = [name] if name and word.casefold() in titles[node_id].casefold() else []
        names.append(f"{word}_text")
        for name in names:
            if isinstance(inputs.get(name), str):
                inputs[name] = text
                changed.append(node_id)
    return changed


def build_prompt(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any] | None,
    *,
    checkpoint_name: str | None = None,
    image_name: str | None = None,
    clip_vision_name: str | None = None,
    source_prompt: str | None = None,
    target_prompt: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Conversion:
    """Convert ``workflow`` to an API prompt and apply the runner's overrides.

    Convenience settings (each must match at least one node, else :class:`OverrideError`):
    ``checkpoint_name`` -> ``ckpt_name`` of every CheckpointLoaderSimple; ``image_name`` -> ``image`` of
    every LoadImage; ``clip_vision_name`` -> ``clip_name`` of every CLIPVisionLoader;
    ``source_prompt`` / ``target_prompt`` -> ``text`` of the CLIPTextEncode nodes and ``value`` of the String
    primitives whose title contains "source" / "target" (case-insensitive), and the ``source_text`` /
    ``target_text`` inputs of engine nodes that encode both prompts (P2P); linked inputs are left to their
    link. ``overrides`` (``{"NODE.INPUT": value}``) come last.
    """
    conv = to_api(workflow, object_info)
    prompt = conv.prompt
    if checkpoint_name is not None:
        changed = set_input_where(prompt, "ckpt_name", checkpoint_name, class_type="CheckpointLoaderSimple")
        _require(changed, "--checkpoint", prompt, "CheckpointLoaderSimple")
    if image_name is not None:
        _require(set_input_where(prompt, "image", image_name, class_type="LoadImage"), "--image", prompt, "LoadImage")
    if clip_vision_name is not None:
        changed = set_input_where(prompt, "clip_name", clip_vision_name, class_type="CLIPVisionLoader")
        _require(changed, "--clip-vision", prompt, "CLIPVisionLoader")
    for flag, word, text in (
        ("--source-prompt", "source", source_prompt),
        ("--target-prompt", "target", target_prompt),
    ):
        if text is not None:
            changed = _set_prompt_text(prompt, word, text)
            _require(changed, f"{flag} (a CLIPTextEncode or String primitive titled with {word!r}, or a {word}_text "
                     "input)", prompt, "CLIPTextEncode")
    if overrides:
        apply_overrides(prompt, overrides, object_info)
    conv.titles = api_titles(prompt)
    return conv


def copy_outputs(paths: Sequence[Path], server: ComfyServer, out_dir: Path) -> list[Path]:
    """Copy output files into ``out_dir``, keeping their sub-folders relative to the server's output dir."""
    copied = []
    for src in paths:
        try:
            rel = src.relative_to(server.output_dir)
        except ValueError:
            rel = Path(src.name)
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(dst)
    return copied


def run_workflow(
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    comfyui_path: str | os.PathLike[str] | None = None,
    *,
    python: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    image: str | os.PathLike[str] | None = None,
    clip_vision: str | os.PathLike[str] | None = None,
    source_prompt: str | None = None,
    target_prompt: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] = "out",
    gpu: bool = False,
    timeout: float = 3600.0,
    load_pack: bool = True,
    only_this_pack: bool = False,
    extra_args: Sequence[str] = (),
    dump_prompt: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Start a server, run one workflow, copy its images to ``out_dir``; raise on any failure.

    ``checkpoint`` / ``clip_vision``: a file (its folder is registered with ComfyUI and its name set on
    the loader nodes) or a bare name ComfyUI already knows. ``image``: a file copied into the input dir.
    """
    t0 = time.monotonic()
    data = load_workflow(workflow) if isinstance(workflow, (str, os.PathLike)) else dict(workflow)
    if is_ui_workflow(data):
        ui_converter()  # refuse before a server starts when comfy-cli is missing
    folders: dict[str, list[str]] = {}

    def model_name(value: str | os.PathLike[str] | None, kind: str) -> str | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        if p.is_file():
            folders.setdefault(kind, []).append(str(p.resolve().parent))
            return p.name
        if p.exists() or os.sep in str(value):
            raise ComfyServerError(f"{kind} file {value} not found (or not a file)")
        return str(value)  # a name from ComfyUI's own model folders

    ckpt_name = model_name(checkpoint, "checkpoints")
    cv_name = model_name(clip_vision, "clip_vision")
    if image is not None and not Path(image).expanduser().is_file():
        raise ComfyServerError(f"image {image} does not exist")

    server = ComfyServer(
        comfyui_path,
        python=python,
        gpu=gpu,
        pack_dir=REPO_ROOT if load_pack else None,
        only_this_pack=only_this_pack,
        extra_folders=folders,
        extra_args=extra_args,
    )
    with server:
        t_ready = time.monotonic()
        image_name = server.upload_image(Path(image).expanduser()) if image is not None else None
        object_info = server.object_info() if is_ui_workflow(data) else None
        conv = build_prompt(
            data,
            object_info,
            checkpoint_name=ckpt_name,
            image_name=image_name,
            clip_vision_name=cv_name,
            source_prompt=source_prompt,
            target_prompt=target_prompt,
            overrides=overrides,
        )
        if dump_prompt is not None:
            Path(dump_prompt).write_text(json.dumps(conv.prompt, indent=2), encoding="utf-8")
        t_submit = time.monotonic()
        prompt_id = server.submit(conv.prompt)
        history = server.wait(prompt_id, timeout=timeout)
        t_done = time.monotonic()
        images = copy_outputs(server.output_images(history), server, Path(out_dir))
    timings = {"server_start_s": t_ready - t0, "run_s": t_done - t_submit, "total_s": time.monotonic() - t0}
    return RunResult(images, conv.prompt, prompt_id, history, timings)


def make_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="run_workflow",
        description="Run a ComfyUI workflow (UI or API JSON) headlessly with this node pack loaded.",
    )
    p.add_argument("workflow", help="workflow JSON (UI format as saved by the frontend, or API format)")
    p.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (default: $COMFYUI_PATH)"
    )
    p.add_argument(
        "--python",
        default=os.environ.get("COMFYUI_PYTHON"),
        help="Python that runs ComfyUI (default: $COMFYUI_PYTHON or this interpreter)",
    )
    p.add_argument("--checkpoint", help="checkpoint file (or a name ComfyUI knows) for every CheckpointLoaderSimple")
    p.add_argument("--image", help="input image for every LoadImage node")
    p.add_argument("--clip-vision", help="CLIP vision file (or known name) for every CLIPVisionLoader")
    p.add_argument("--source-prompt", help='text of the CLIPTextEncode nodes whose title contains "source"')
    p.add_argument("--target-prompt", help='text of the CLIPTextEncode nodes whose title contains "target"')
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set an input; NODE is a node id, title or class type; VALUE is JSON or a string "
        "(repeatable, applied last)",
    )
    p.add_argument("--out", default="out", help="folder for the output images (default: ./out)")
    p.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for the run (default 3600)")
    p.add_argument("--no-pack", action="store_true", help="do not load this node pack (core nodes only)")
    p.add_argument("--only-this-pack", action="store_true", help="load no other custom node packs")
    p.add_argument("--dump-prompt", metavar="FILE", help="also write the API prompt that is submitted")
    p.add_argument(
        "--comfy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra ComfyUI argument, e.g. --comfy-arg=--force-fp32 (repeatable)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = make_parser().parse_args(argv)
    try:
        result = run_workflow(
            args.workflow,
            args.comfyui,
            python=args.python,
            checkpoint=args.checkpoint,
            image=args.image,
            clip_vision=args.clip_vision,
            source_prompt=args.source_prompt,
            target_prompt=args.target_prompt,
            overrides=parse_overrides(args.overrides),
            out_dir=args.out,
            gpu=args.gpu,
            timeout=args.timeout,
            load_pack=not args.no_pack,
            only_this_pack=args.only_this_pack,
            extra_args=args.comfy_arg,
            dump_prompt=args.dump_prompt,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ComfyServerError, WorkflowError, OverrideError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in result.images:
        print(path)
    if not result.images:
        print("(the workflow produced no output images)", file=sys.stderr)
    t = result.timings
    print(f"wall time: {t['total_s']:.1f} s (server start {t['server_start_s']:.1f} s, run {t['run_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
