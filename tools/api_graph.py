"""API-format prompts (what ``POST /prompt`` takes) built node by node, with node defaults from ``/object_info``.

    g = ApiGraph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="model.safetensors")
    text = g.add("CLIPTextEncode", text="a photo of a cat", clip=ckpt[1])   # output 1 of the loader
    inverted = g.add("SPDInvInvert", model=ckpt, source=text, latent=...)  # a node alone is its output 0
    prompt = g.prompt(server.object_info())                                # every widget left out: its default

Only what a caller means is written down; every other widget input is filled from the node's declared default (as
the frontend fills a new node's widgets), so node defaults are stated once, in the node. Standard library only.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeRef:
    """A node of an :class:`ApiGraph`. As an input it links the node's output 0; ``ref[i]`` links output ``i``."""

    id: str

    def __getitem__(self, index: int) -> list[Any]:
        return [self.id, index]


class ApiGraph:
    """An API prompt under construction: :meth:`add` nodes, then :meth:`prompt` for the dict to submit."""

    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def add(self, class_type: str, _id: str | None = None, _title: str | None = None, **inputs: Any) -> NodeRef:
        """Add a node; inputs are widget values or links (a :class:`NodeRef`, ``ref[i]`` or ``[node_id, i]``).

        ``_id`` names the node (default: the next free number), ``_title`` sets its ``_meta.title``; underscored so
        that they cannot clash with input names. Returns the node's reference.
        """
        node_id = str(_id) if _id is not None else next(i for i in map(str, self._ids) if i not in self._nodes)
        if node_id in self._nodes:
            raise ValueError(f"node id {node_id!r} is taken ({self._nodes[node_id]['class_type']})")
        node: dict[str, Any] = {"class_type": class_type, "inputs": dict(inputs)}
        if _title is not None:
            node["_meta"] = {"title": _title}
        self._nodes[node_id] = node
        return NodeRef(node_id)

    def prompt(self, object_info: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """The API prompt (a new dict each call), links as ``[node_id, output]``.

        With ``object_info`` (the server's ``/object_info``), every widget input left out, required or optional, is
        filled with its declared default (a combo without one: its first option), as the frontend fills the widgets
        of a new node; inputs without a default (links, hidden inputs) are left out. A node type it does not list is
        an error.
        """
        out: dict[str, dict[str, Any]] = {}
        for node_id, node in self._nodes.items():
            entry = copy.deepcopy(node)
            entry["inputs"] = {k: v[0] if isinstance(v, NodeRef) else v for k, v in entry["inputs"].items()}
            if object_info is not None:
                entry["inputs"] = {**widget_defaults(object_info, node["class_type"]), **entry["inputs"]}
            out[node_id] = entry
        return out


def widget_defaults(object_info: Mapping[str, Any], class_type: str) -> dict[str, Any]:
    """``{input: default}`` of every widget input of ``class_type`` that declares a default (or is a combo)."""
    if class_type not in object_info:
        raise KeyError(f"{class_type}: not in /object_info (is the node pack that provides it loaded?)")
    declared = object_info[class_type].get("input") or {}
    defaults: dict[str, Any] = {}
    for group in ("required", "optional"):
        for name, spec in (declared.get(group) or {}).items():
            found, value = _default(spec)
            if found:
                defaults[name] = value
    return defaults


def _default(spec: Any) -> tuple[bool, Any]:
    """``(True, default)`` for a widget spec ``[type, options]`` that has one, else ``(False, None)``."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return False, None
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {})
    if options.get("forceInput"):
        return False, None
    if "default" in options:
        return True, options["default"]
    choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
    if choices:
        return True, choices[0]
    return False, None
