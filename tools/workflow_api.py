"""Workflow files for the headless runner: UI to API format, the shipped workflows, and ``--set`` overrides.

A UI-format workflow (what the frontend saves) is converted to API format (what ``POST /prompt`` takes)
with Comfy-Org's ``comfy-cli`` (``comfy_cli.workflow_to_api``, an optional dependency: ``pip install
comfy-cli``), given the server's ``/object_info``. API-format files pass through; every shipped workflow has
its API twin in ``workflows/api/`` (the frontend's own ``graphToPrompt`` output), so no converter is needed
to run those.

``apply_overrides`` then edits an API prompt from ``NODE.INPUT=VALUE`` strings, where NODE is a node
id, a node title or a class type.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
"""The shipped UI workflows (ComfyUI's template browser lists them by file name); API twins in ``api/``."""


def shipped_workflows() -> list[Path]:
    """The shipped UI workflows, sorted by name."""
    return sorted(WORKFLOWS.glob("*.json"))


def api_twin(ui_path: Path) -> Path:
    """Where a shipped UI workflow's API twin lives: ``workflows/api/<same name>``."""
    return ui_path.parent / "api" / ui_path.name


class WorkflowError(ValueError):
    """The workflow cannot be read or converted."""


class OverrideError(ValueError):
    """An override names a node or input that does not exist, or is malformed."""


UI_ONLY = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "GetNode", "SetNode"})
"""Frontend-only node types: never sent to the server."""


@dataclass
class Conversion:
    """Result of a conversion: the API prompt and its node titles."""

    prompt: dict[str, dict[str, Any]]
    titles: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- public API


def is_ui_workflow(data: Any) -> bool:
    """True for a UI-format workflow (it has a ``nodes`` list); API prompts are ``{id: {class_type...}}``."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def ui_converter() -> Any:
    """comfy-cli's ``convert_ui_to_api``; a :class:`WorkflowError` that says what to do when it is missing."""
    try:
        from comfy_cli.workflow_to_api import convert_ui_to_api
    except ImportError as e:
        raise WorkflowError("a UI-format workflow needs comfy-cli to be converted (pip install comfy-cli); or run "
                            "its API format: the shipped workflows' are in workflows/api/, and the frontend "
                            "exports any workflow with File > Export (API)") from e
    return convert_ui_to_api


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> Conversion:
    """Convert a UI-format workflow to an API prompt with comfy-cli, given the server's ``/object_info``."""
    if not is_ui_workflow(workflow):
        raise WorkflowError("not a UI-format workflow (no 'nodes' list)")
    convert = ui_converter()
    unknown = sorted({str(n.get("type")) for n in workflow["nodes"] if n.get("type") not in object_info
                      and n.get("type") not in UI_ONLY and not _is_subgraph(workflow, n.get("type"))})
    if unknown:
        raise WorkflowError(f"node types the server does not know: {', '.join(unknown)} (install the node packs "
                            "that provide them)")
    try:
        prompt = convert(copy.deepcopy(dict(workflow)), dict(object_info))
    except Exception as e:  # comfy-cli's own error types vary between its releases
        raise WorkflowError(f"comfy-cli could not convert the workflow: {e}") from e
    prompt = check_api_prompt(prompt)
    return Conversion(prompt, api_titles(prompt))


def _is_subgraph(workflow: Mapping[str, Any], node_type: Any) -> bool:
    """Whether ``node_type`` is one of the workflow's subgraph definitions (comfy-cli expands those)."""
    definitions = (workflow.get("definitions") or {}).get("subgraphs") or []
    return any(d.get("id") == node_type for d in definitions if isinstance(d, dict))


def api_titles(prompt: Mapping[str, Any]) -> dict[str, str]:
    """Node titles of an API prompt (``_meta.title``, else the class type)."""
    return {str(k): ((v.get("_meta") or {}).get("title") or v.get("class_type", "")) for k, v in prompt.items()}


def check_api_prompt(prompt: Any) -> dict[str, dict[str, Any]]:
    """Validate the shape of an API prompt and return it with string keys."""
    if not isinstance(prompt, dict) or not prompt:
        raise WorkflowError("an API prompt must be a non-empty JSON object {node_id: {class_type, inputs}}")
    out: dict[str, dict[str, Any]] = {}
    for node_id, entry in prompt.items():
        if not isinstance(entry, dict) or "class_type" not in entry:
            raise WorkflowError(f"API prompt entry {node_id!r} has no class_type")
        entry.setdefault("inputs", {})
        out[str(node_id)] = entry
    return out


def to_api(workflow: Any, object_info: Mapping[str, Any] | None = None) -> Conversion:
    """Convert a UI workflow, or pass an API prompt through (a deep copy); titles come along either way."""
    if is_ui_workflow(workflow):
        if object_info is None:
            raise WorkflowError("a UI-format workflow needs /object_info to be converted")
        return ui_to_api(workflow, object_info)
    prompt = check_api_prompt(copy.deepcopy(workflow))
    return Conversion(prompt, api_titles(prompt))


def parse_value(text: str) -> Any:
    """Parse an override value: JSON when it parses (``7``, ``1.5``, ``true``, ``"x"``), else the raw string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["NODE.INPUT=VALUE", ...]`` (CLI ``--set``) into ``{"NODE.INPUT": value}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OverrideError(f"override {item!r} is not NODE.INPUT=VALUE")
        out[key] = parse_value(value)
    return out


def find_nodes(prompt: Mapping[str, Any], ref: str) -> list[str]:
    """Node ids that ``ref`` names: a node id, else an exact title, else a class type (else case-insensitive title)."""
    if ref in prompt:
        return [ref]
    titles = api_titles(prompt)
    for match in (
        lambda i: titles[i] == ref,
        lambda i: prompt[i].get("class_type") == ref,
        lambda i: titles[i].casefold() == ref.casefold(),
    ):
        found = [i for i in prompt if match(i)]
        if found:
            return found
    return []


def _node_list(prompt: Mapping[str, Any]) -> str:
    titles = api_titles(prompt)
    return ", ".join(
        f"{i} {v.get('class_type')}" + (f" {titles[i]!r}" if titles[i] != v.get("class_type") else "")
        for i, v in prompt.items()
    )


def known_inputs(entry: Mapping[str, Any], object_info: Mapping[str, Any] | None = None) -> list[str]:
    """Input names a node accepts: those in the prompt, plus its definition's if ``object_info`` is given."""
    names = list(entry.get("inputs") or {})
    declared = ((object_info or {}).get(entry.get("class_type")) or {}).get("input") or {}
    for group in ("required", "optional"):
        names += [n for n in declared.get(group) or {} if n not in names]
    return names


def apply_overrides(
    prompt: dict[str, Any], overrides: Mapping[str, Any], object_info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Set inputs of an API prompt in place: ``{"NODE.INPUT": value}``; returns the prompt.

    NODE is a node id, a title (``_meta.title``) or a class type; a title or class type may match
    several nodes, and all of them are set. The input name is what follows the last dot (titles may
    contain dots). An input the node does not have (per the prompt, or ``object_info`` when given)
    is an error, so typos do not pass silently.
    """
    for key, value in overrides.items():
        ref, dot, input_name = key.rpartition(".")
        if not dot or not ref or not input_name:
            raise OverrideError(f"override key {key!r} must be NODE.INPUT (NODE: node id, title or class type)")
        ids = find_nodes(prompt, ref)
        if not ids:
            raise OverrideError(
                f"override {key!r}: no node with id, title or class type {ref!r}; nodes: {_node_list(prompt)}"
            )
        for node_id in ids:
            entry = prompt[node_id]
            names = known_inputs(entry, object_info)
            if input_name not in names:
                raise OverrideError(
                    f"override {key!r}: node {node_id} ({entry.get('class_type')}) has no input "
                    f"{input_name!r}; its inputs: {', '.join(names) or '(none)'}"
                )
            entry.setdefault("inputs", {})[input_name] = value
    return prompt


def set_input_where(
    prompt: dict[str, Any],
    input_name: str,
    value: Any,
    *,
    class_type: str | None = None,
    title_contains: str | None = None,
) -> list[str]:
    """Set ``input_name`` on every node of ``class_type`` whose title contains ``title_contains``
    (case-insensitive); return the ids changed. Used by the runner's convenience flags."""
    titles = api_titles(prompt)
    changed = []
    for node_id, entry in prompt.items():
        if class_type is not None and entry.get("class_type") != class_type:
            continue
        if title_contains is not None and title_contains.casefold() not in titles[node_id].casefold():
            continue
        entry.setdefault("inputs", {})[input_name] = value
        changed.append(node_id)
    return changed
