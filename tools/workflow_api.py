"""Convert ComfyUI UI-format workflows (what the frontend saves) to API format (what ``POST /prompt`` takes).

The frontend does this conversion itself (``graphToPrompt``) when you press *Queue*; a headless runner
has to redo it. Widget values are stored in a UI workflow as a bare list (``widgets_values``), so they
are mapped back onto input names with the node definitions from the server's ``/object_info``, the
same way the frontend creates widgets: inputs in ``input_order`` (required, then optional), widget
types only, plus the frontend's extra widgets (``control_after_generate`` after seeds, a filter list
after combo controls, the ``upload`` button of image/video loaders).

Also handled: links (both the array and the object form), widgets converted to inputs, reroutes,
primitive nodes, muted (mode 2) and bypassed (mode 4) nodes, notes, and subgraphs. Legacy group
nodes are refused with a clear message.

``apply_overrides`` then edits an API prompt from ``NODE.INPUT=VALUE`` strings, where NODE is a node
id, a node title or a class type.

Standard library only.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MODE_NEVER = 2
"""``mode`` of a muted node: not sent to the server; links from it are dropped."""
MODE_BYPASS = 4
"""``mode`` of a bypassed node: not sent; links through it go to its first input of the same type."""

UI_ONLY_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
"""Frontend-only (virtual) node types: never sent to the server."""

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Input types the frontend shows as widgets (a list type is a COMBO too)."""

FRONTEND_WIDGET_TYPES = frozenset(
    {
        "MARKDOWN",
        "IMAGEUPLOAD",
        "FILEUPLOAD",
        "COLOR",
        "IMAGECOMPARE",
        "TREESELECT",
        "MULTISELECT",
        "CHART",
        "GALLERIA",
        "SELECTBUTTON",
        "TEXTAREA",
        "WEBCAM",
        "LOAD_3D",
        "LOAD_3D_ANIMATION",
    }
)
"""Custom frontend widgets that also take one ``widgets_values`` slot and send their value."""

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
"""Values of the frontend's ``control_after_generate`` widget."""

UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


class WorkflowError(ValueError):
    """The workflow cannot be converted (unknown node type, broken link, group node...)."""


class OverrideError(ValueError):
    """An override names a node or input that does not exist, or is malformed."""


@dataclass
class Conversion:
    """Result of a conversion: the API prompt, node titles, and what was guessed on the way."""

    prompt: dict[str, dict[str, Any]]
    titles: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WidgetSpec:
    """One frontend widget of a node, in ``widgets_values`` order.

    ``send`` is False for frontend-only widgets (the upload button); ``controls`` is how many
    control widgets follow it (1 for an INT seed, 2 for a combo: control + filter list).
    """

    name: str
    type: str
    options: Mapping[str, Any]
    send: bool = True
    controls: int = 0

    def default(self) -> Any:
        """The value the frontend gives a fresh widget."""
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO":
            choices = self.options.get("options") or []
            return choices[0] if choices else None
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)


# ---------------------------------------------------------------------------- node definitions


def _input_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    """Split an ``/object_info`` input spec ``[type, options]`` (options optional)."""
    if isinstance(spec, (list, tuple)) and spec:
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return spec[0], dict(opts)
    return spec, {}


def ordered_inputs(node_info: Mapping[str, Any]) -> list[tuple[str, Any, dict[str, Any], bool]]:
    """``(name, type, options, optional)`` of a node's inputs in frontend order.

    ``input_order`` first (required, then optional), then anything it does not list; without
    ``input_order``, dict order (required, then optional). Hidden inputs are left out.
    """
    sections = node_info.get("input") or {}
    order = node_info.get("input_order") or {}
    out: list[tuple[str, Any, dict[str, Any], bool]] = []
    seen: set[str] = set()
    for section in ("required", "optional"):
        defs = sections.get(section) or {}
        for name in order.get(section) or []:
            if name in defs and name not in seen:
                seen.add(name)
                out.append((name, *_input_spec(defs[name]), section == "optional"))
    for section in ("required", "optional"):
        for name, spec in (sections.get(section) or {}).items():
            if name not in seen:
                seen.add(name)
                out.append((name, *_input_spec(spec), section == "optional"))
    return out


def widget_type(type_: Any, options: Mapping[str, Any]) -> str | None:
    """The widget type of an input, or None if it is a plain socket (MODEL, LATENT, forceInput...)."""
    if options.get("forceInput"):
        return None
    wt = options.get("widgetType") or type_
    if isinstance(wt, (list, tuple)):
        return "COMBO"
    if isinstance(wt, str) and (wt in WIDGET_TYPES or wt in FRONTEND_WIDGET_TYPES):
        return wt
    return None


def widget_specs(node_info: Mapping[str, Any]) -> list[WidgetSpec]:
    """The widgets the frontend creates for a node definition, in ``widgets_values`` order."""
    specs: list[WidgetSpec] = []
    upload: WidgetSpec | None = None
    for name, type_, opts, optional in ordered_inputs(node_info):
        wt = widget_type(type_, opts)
        if wt is None:
            continue
        if wt == "COMBO" and isinstance(type_, (list, tuple)) and "options" not in opts:
            opts = {**opts, "options": list(type_)}
        controls = 0
        cag = opts.get("control_after_generate")
        if wt == "INT":
            if cag is None:
                cag = name in ("seed", "noise_seed")  # legacy convention honoured by the frontend
            controls = 1 if cag else 0
        elif wt == "COMBO" and cag:
            controls = 2  # control value + its filter-list text box
        specs.append(WidgetSpec(name, wt, opts, True, controls))
        if not optional and upload is None and wt == "COMBO":
            if any(opts.get(k) is True for k in UPLOAD_OPTIONS):
                upload = WidgetSpec("upload", "IMAGEUPLOAD", {}, send=False)
            elif opts.get("audio_upload") is True and name == "audio":
                upload = WidgetSpec("upload", "AUDIOUPLOAD", {}, send=False)
    if upload is not None:
        if node_info.get("input_order"):
            specs.append(upload)  # not in input_order: the frontend adds it after every input
        else:
            n_required = sum(1 for _, t, o, opt in ordered_inputs(node_info) if not opt and widget_type(t, o))
            specs.insert(n_required, upload)
    return specs


def _is_control_value(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


def map_widget_values(
    node_info: Mapping[str, Any], values: Any, where: str = "node", warnings: list[str] | None = None
) -> dict[str, Any]:
    """Map a node's saved ``widgets_values`` onto input names.

    A dict (some custom nodes save one) is taken by name. Control values are skipped only when they
    look like one ("fixed", "randomize"... or a bool), so workflows saved before a seed got its control
    widget still line up. Widgets with no saved value get their default (as the frontend does).
    """
    specs = widget_specs(node_info)
    out: dict[str, Any] = {}
    if isinstance(values, dict):
        for spec in specs:
            if spec.send and spec.name in values:
                out[spec.name] = values[spec.name]
        return out
    values = list(values or [])
    i = 0
    for spec in specs:
        if i < len(values):
            value = values[i]
            i += 1
            if spec.send:
                out[spec.name] = value
        elif spec.send:
            out[spec.name] = spec.default()
            if warnings is not None:
                warnings.append(f"{where}: no saved value for widget {spec.name!r}, using default {out[spec.name]!r}")
        for k in range(spec.controls):
            if i < len(values) and (k > 0 or _is_control_value(values[i])):
                i += 1
            else:
                break
    return out


# ---------------------------------------------------------------------------- graph walking


@dataclass
class _Link:
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


def _parse_links(raw: Any) -> dict[Any, _Link]:
    """Links keyed by id, from ``[id, from, from_slot, to, to_slot, type]`` arrays or link objects."""
    links: dict[Any, _Link] = {}
    for item in raw or []:
        if isinstance(item, dict):
            links[item["id"]] = _Link(
                item["origin_id"],
                int(item["origin_slot"]),
                item["target_id"],
                int(item["target_slot"]),
                item.get("type"),
            )
        elif isinstance(item, (list, tuple)) and len(item) >= 5:
            links[item[0]] = _Link(item[1], int(item[2]), item[3], int(item[4]), item[5] if len(item) > 5 else None)
        elif item is not None:
            raise WorkflowError(f"malformed link {item!r}")
    return links


@dataclass
class _Graph:
    """One graph level: the root workflow or the inside of a subgraph instance."""

    nodes: dict[Any, dict[str, Any]]
    links: dict[Any, _Link]
    path: tuple[str, ...] = ()
    definition: dict[str, Any] | None = None
    parent: _Graph | None = None
    instance: dict[str, Any] | None = None  # the subgraph node (in parent) this graph is inside

    def exec_id(self, node_id: Any) -> str:
        """Node id as the API sees it: ``outer:inner`` inside subgraphs."""
        return ":".join((*self.path, str(node_id)))

    @property
    def input_node_id(self) -> Any:
        return ((self.definition or {}).get("inputNode") or {}).get("id", -10)

    @property
    def output_node_id(self) -> Any:
        return ((self.definition or {}).get("outputNode") or {}).get("id", -20)


@dataclass(frozen=True)
class _Ref:
    node: str
    slot: int


@dataclass(frozen=True)
class _Value:
    value: Any


_KEEP = object()
"""Resolution result: keep the node's own widget value (unlinked, unpromoted subgraph input)."""


def _wrap(value: Any) -> Any:
    """Wrap a list widget value as ``{"__value__": [...]}``: the server reads bare lists as links."""
    return {"__value__": value} if isinstance(value, list) else value


def _types_match(a: Any, b: Any) -> bool:
    """LiteGraph's ``isValidConnection``: equal, wildcard, or overlapping comma-separated type lists."""
    if not a or not b or a == "*" or b == "*" or a == b:
        return True
    sa = {t.strip().lower() for t in str(a).split(",")}
    sb = {t.strip().lower() for t in str(b).split(",")}
    return bool(sa & sb)


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> None:
        self.workflow = workflow
        self.object_info = object_info
        self.subgraphs: dict[str, dict[str, Any]] = {
            sg["id"]: sg for sg in ((workflow.get("definitions") or {}).get("subgraphs") or [])
        }
        self.prompt: dict[str, dict[str, Any]] = {}
        self.titles: dict[str, str] = {}
        self.warnings: list[str] = []
        self.errors: list[str] = []

    # -- helpers

    @staticmethod
    def _index(nodes: Iterable[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        return {n["id"]: n for n in nodes}

    def _child(self, graph: _Graph, instance: dict[str, Any]) -> _Graph:
        sg = self.subgraphs[instance["type"]]
        return _Graph(
            self._index(sg.get("nodes") or []),
            _parse_links(sg.get("links")),
            (*graph.path, str(instance["id"])),
            sg,
            graph,
            instance,
        )

    def _describe(self, graph: _Graph, node: Mapping[str, Any]) -> str:
        title = node.get("title")
        return f"node {graph.exec_id(node['id'])} ({node.get('type')}{', ' + repr(title) if title else ''})"

    # -- resolution (mirrors the frontend's ExecutableNodeDTO.resolveInput / resolveOutput)

    def resolve_input(self, graph: _Graph, node: Mapping[str, Any], inp: Mapping[str, Any], visited: set[Any]) -> Any:
        """What feeds input ``inp`` of ``node``: a _Ref, a _Value, _KEEP, or None (nothing)."""
        link_id = inp.get("link")
        if link_id is None:
            return None
        key = (graph.path, node["id"], "in", inp.get("name"))
        if key in visited:
            raise WorkflowError(f"link cycle through virtual/bypassed nodes at {self._describe(graph, node)}")
        visited = visited | {key}
        link = graph.links.get(link_id)
        if link is None:
            self.warnings.append(
                f"{self._describe(graph, node)}: input {inp.get('name')!r} has a dangling link {link_id}; ignored"
            )
            return None
        if graph.definition is not None and link.origin_id == graph.input_node_id:
            return self._resolve_subgraph_input(graph, link, visited)
        origin = graph.nodes.get(link.origin_id)
        if origin is None:
            return None
        return self.resolve_output(graph, origin, link.origin_slot, inp.get("type") or link.type, visited)

    def _resolve_subgraph_input(self, graph: _Graph, link: _Link, visited: set[Any]) -> Any:
        assert graph.definition is not None and graph.parent is not None and graph.instance is not None
        sg_inputs = graph.definition.get("inputs") or []
        if link.origin_slot >= len(sg_inputs):
            return None
        sg_input = sg_inputs[link.origin_slot]
        outer = graph.instance
        for outer_inp in outer.get("inputs") or []:
            if outer_inp.get("name") == sg_input.get("name") and outer_inp.get("link") is not None:
                return self.resolve_input(graph.parent, outer, outer_inp, visited)
        # unlinked: the value of the subgraph node's promoted widget, if it saved one
        widget_inputs = [s for s in sg_inputs if self._feeds_widget(graph, s)]
        values = outer.get("widgets_values")
        if sg_input in widget_inputs and isinstance(values, list):
            k = widget_inputs.index(sg_input)
            if k < len(values):
                return _Value(values[k])
        return _KEEP

    @staticmethod
    def _feeds_widget(graph: _Graph, sg_input: Mapping[str, Any]) -> bool:
        for link_id in sg_input.get("linkIds") or []:
            link = graph.links.get(link_id)
            target = graph.nodes.get(link.target_id) if link else None
            for inp in (target or {}).get("inputs") or []:
                if inp.get("link") == link_id and inp.get("widget"):
                    return True
        return False

    def resolve_output(self, graph: _Graph, node: Mapping[str, Any], slot: int, type_: Any, visited: set[Any]) -> Any:
        """What output ``slot`` of ``node`` really is once bypassed/virtual/subgraph nodes are seen through."""
        key = (graph.path, node["id"], "out", slot)
        if key in visited:
            raise WorkflowError(f"link cycle through virtual/bypassed nodes at {self._describe(graph, node)}")
        visited = visited | {key}
        inputs = node.get("inputs") or []
        if node.get("mode") == MODE_BYPASS:
            idx = self._bypass_slot(node, slot, type_)
            return None if idx < 0 else self.resolve_input(graph, node, inputs[idx], visited)
        ntype = node.get("type")
        if ntype in self.subgraphs:
            inner = self._child(graph, node)
            for link in inner.links.values():
                if link.target_id == inner.output_node_id and link.target_slot == slot:
                    origin = inner.nodes.get(link.origin_id)
                    if origin is None:
                        return None
                    return self.resolve_output(inner, origin, link.origin_slot, type_, visited)
            return None
        if ntype == "PrimitiveNode":
            values = node.get("widgets_values")
            return _Value(values[0]) if isinstance(values, list) and values else None
        if ntype in UI_ONLY_NODE_TYPES:
            return self.resolve_input(graph, node, inputs[slot], visited) if slot < len(inputs) else None
        return _Ref(graph.exec_id(node["id"]), slot)

    @staticmethod
    def _bypass_slot(node: Mapping[str, Any], slot: int, type_: Any) -> int:
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else type_
        if type_ in ("*", "", None):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        if (
            slot < len(inputs)
            and _types_match(inputs[slot].get("type"), out_type)
            and _types_match(inputs[slot].get("type"), type_)
        ):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == type_:
                return i
        for i, inp in enumerate(inputs):
            if _types_match(inp.get("type"), out_type) and _types_match(inp.get("type"), type_):
                return i
        return -1

    # -- emission

    def emit(self, graph: _Graph) -> None:
        nodes = sorted(graph.nodes.values(), key=lambda n: (n.get("order", 0), str(n["id"])))
        for node in nodes:
            ntype = node.get("type")
            if node.get("mode") in (MODE_NEVER, MODE_BYPASS):
                continue
            if ntype in self.subgraphs:
                self.emit(self._child(graph, node))
                continue
            if ntype in UI_ONLY_NODE_TYPES:
                continue
            if isinstance(ntype, str) and (ntype.startswith("workflow>") or ntype.startswith("workflow/")):
                self.errors.append(
                    f"{self._describe(graph, node)} is a legacy group node; "
                    "convert it to nodes (or a subgraph) in the UI first"
                )
                continue
            info = self.object_info.get(ntype) if isinstance(ntype, str) else None
            if info is None:
                self.errors.append(
                    f"{self._describe(graph, node)}: unknown node type {ntype!r} "
                    "(not in /object_info: is its pack installed and did it import?)"
                )
                continue
            self.emit_node(graph, node, info)

    def emit_node(self, graph: _Graph, node: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        where = self._describe(graph, node)
        inputs = {
            k: _wrap(v) for k, v in map_widget_values(info, node.get("widgets_values"), where, self.warnings).items()
        }
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            if name is None or inp.get("link") is None:
                continue
            resolved = self.resolve_input(graph, node, inp, set())
            if resolved is _KEEP:
                continue
            if isinstance(resolved, _Ref):
                inputs[name] = [resolved.node, resolved.slot]
            elif isinstance(resolved, _Value):
                inputs[name] = _wrap(resolved.value)
            else:
                inputs.pop(name, None)  # linked to nothing that runs: the frontend drops the input too
        node_id = graph.exec_id(node["id"])
        title = node.get("title") or info.get("display_name") or node.get("type")
        self.prompt[node_id] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
        self.titles[node_id] = title

    def run(self) -> Conversion:
        root = _Graph(self._index(self.workflow.get("nodes") or []), _parse_links(self.workflow.get("links")))
        self.emit(root)
        if self.errors:
            raise WorkflowError("cannot convert workflow:\n  " + "\n  ".join(self.errors))
        for entry in self.prompt.values():  # inputs linked to nodes that are not sent
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in self.prompt:
                    del entry["inputs"][name]
        return Conversion(self.prompt, self.titles, self.warnings)


# ---------------------------------------------------------------------------- public API


def is_ui_workflow(data: Any) -> bool:
    """True for a UI-format workflow (it has a ``nodes`` list); API prompts are ``{id: {class_type...}}``."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> Conversion:
    """Convert a UI-format workflow to an API prompt using the server's ``/object_info``."""
    if not is_ui_workflow(workflow):
        raise WorkflowError("not a UI-format workflow (no 'nodes' list)")
    return _Converter(workflow, object_info).run()


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
    return Conversion(prompt, api_titles(prompt), [])


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
    info = (object_info or {}).get(entry.get("class_type"))
    if info:
        names += [n for n, *_ in ordered_inputs(info) if n not in names]
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
