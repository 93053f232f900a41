"""ComfyUI imported in-process as a library, and nodes called the way its executor calls them.

Shared by the host tests (``tests/host/conftest.py``) and the benchmark (``benchmarks/``), so both run
the pack under the same conditions. Order matters and is what :func:`bootstrap_sys_path` enforces:

1. the checkout goes first on ``sys.path`` (the pack's ``nodes/`` package must not shadow ComfyUI's
   top-level ``nodes.py``),
2. ``args.cpu`` is chosen before ``comfy.model_management`` is imported (it probes devices at import),
3. ComfyUI's ``utils`` package is imported early, as ``main.py`` does (see the comment there).

Then :func:`import_comfy` registers model folders and imports ``nodes``, and :class:`RunNode` executes
nodes under ``torch.inference_mode()`` through ComfyUI's own ``execution`` helpers.

Standard library only at import time; ComfyUI and torch are imported by the functions that need them.
The pack itself must be importable as ``spdinv_pack`` by the caller (``tests/conftest.py`` does it).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

CHECKOUT_FILES = ("nodes.py", "execution.py", "folder_paths.py", "comfy/sd.py", "comfy_api/latest/_io.py")


def find_comfyui(raw: str | None, name: str = "COMFYUI_PATH") -> tuple[Path | None, str]:
    """Return ``(checkout, "")`` when ``raw`` names a ComfyUI checkout, else ``(None, reason)``.

    ``name`` is how the setting is called in the reason (an environment variable or an option).
    """
    raw = (raw or "").strip()
    if not raw:
        return None, f"{name} not set"
    root = Path(raw).expanduser().resolve()
    missing = [f for f in CHECKOUT_FILES if not (root / f).is_file()]
    if missing:
        return None, f"{name}={raw} is not a ComfyUI checkout (missing {', '.join(missing)})"
    return root, ""


def bootstrap_sys_path(root: Path, cpu: bool = True) -> None:
    """Put the checkout first on sys.path and select the device mode before ``comfy.model_management`` loads.

    A repository on sys.path (``python -m pytest`` adds the working directory) holds the pack's ``nodes/``
    package, which would shadow ComfyUI's ``nodes.py``; ComfyUI must therefore come first. ``args.cpu``
    only has an effect before ``comfy.model_management`` is imported; afterwards the mode is fixed for the
    process. ComfyUI does not parse argv when imported as a library, so the caller's arguments are safe.
    """
    _first_on_sys_path(root)
    stale = sys.modules.get("nodes")
    if stale is not None and Path(getattr(stale, "__file__", "") or "").resolve() != root / "nodes.py":
        raise RuntimeError(f"a module named 'nodes' ({stale!r}) was imported before ComfyUI's nodes.py")
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = cpu
    # ComfyUI's nodes.py puts <root>/comfy first on sys.path, after which a plain ``import utils``
    # finds comfy/utils.py instead of the <root>/utils package (server.py and comfy_extras need
    # ``utils.install_util``). main.py imports the package early; do the same.
    utils = importlib.import_module("utils")
    if Path(utils.__file__).resolve() != root / "utils" / "__init__.py":
        raise RuntimeError(f"'utils' resolved to {utils.__file__}, not ComfyUI's utils package")


def _first_on_sys_path(root: Path) -> None:
    """Put the checkout at the front of ``sys.path`` (again: pytest's collection may insert the repository in front
    of it, which it does for a checkout folder whose name is not an identifier, such as ``spdinv-edit``)."""
    while str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))


@dataclass(frozen=True)
class ComfyEnv:
    """ComfyUI imported in-process with a model folder registered."""

    root: Path
    version: str
    nodes: ModuleType  # ComfyUI's nodes.py (NODE_CLASS_MAPPINGS, CheckpointLoaderSimple, KSampler, ...)
    folder_paths: ModuleType
    cache_dir: Path  # the folder registered for the model kinds given to import_comfy


def import_comfy(root: Path, model_dir: Path, kinds: Iterable[str] = ("checkpoints", "loras")) -> ComfyEnv:
    """Import ComfyUI as a library (after :func:`bootstrap_sys_path`) with ``model_dir`` as a model folder.

    ``model_dir`` is added for each of ``kinds``, so loader nodes list the files in it by name.
    """
    import comfy.model_management  # noqa: F401  (fixes the device mode chosen by bootstrap_sys_path)
    import folder_paths

    for kind in kinds:
        folder_paths.add_model_folder_path(kind, str(model_dir))
    _first_on_sys_path(root)
    comfy_nodes = importlib.import_module("nodes")
    if Path(comfy_nodes.__file__).resolve() != root / "nodes.py":
        raise RuntimeError(f"'nodes' resolved to {comfy_nodes.__file__}, not ComfyUI's nodes.py")
    importlib.import_module("comfy_extras")  # make sure comfy_extras.* is importable from the checkout
    version = importlib.import_module("comfyui_version").__version__
    return ComfyEnv(root, version, comfy_nodes, folder_paths, model_dir)


def load_extra_nodes(env: ComfyEnv) -> dict[str, type]:
    """``NODE_CLASS_MAPPINGS`` after also registering the built-in ``comfy_extras`` nodes (slow; once).

    Modules needing missing optional dependencies (e.g. torchaudio) fail to import; ComfyUI only logs
    that, as the server would.
    """
    mappings = env.nodes.NODE_CLASS_MAPPINGS
    if "SamplerCustom" not in mappings:
        asyncio.run(env.nodes.init_builtin_extra_nodes())
    return mappings


# --------------------------------------------------------------------------------------------
# Running nodes like the executor
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Prompt:
    """What ``get_input_data`` reads of the executor's dynamic prompt (the ``PROMPT`` hidden input)."""

    prompt: dict[str, Any]

    def get_original_prompt(self) -> dict[str, Any]:
        return self.prompt


class RunNode:
    """Call a node like ComfyUI's executor (``execution.py``) does, on every supported ComfyUI.

    ``run_node(NodeCls, **inputs)`` passes each input as a single value (no list mapping) through the
    executor's own ``execution.get_input_data`` (hidden inputs, V3 input finalisation) and
    ``execution._async_map_node_over_list`` under ``torch.inference_mode()``:

    * V3 (``io.ComfyNode``): ``VALIDATE_CLASS``, ``PREPARE_CLASS_CLONE`` (fills ``cls.hidden``), a locked
      class clone, then ``execute``; returns the ``io.NodeOutput`` (values in ``.result``, a tuple).
    * V1: instance method ``FUNCTION``; returns what it returns (a tuple, or a dict with "result").

    The executor's private helpers change between releases (0.3.x passes ``hidden_inputs``, later ones a
    ``v3_data`` dict); :func:`executor_extra_kwarg` is the one place that follows that.

    ``async def execute`` is awaited in the same thread (inference mode stays on, as in the server).
    Before executing, ``validate_inputs``/``VALIDATE_INPUTS`` is called if the node defines it
    (outside inference mode, as during prompt validation) and a failure raises ``ValueError``.

    Options (underscored so they cannot clash with input names): ``_hidden`` maps ``io.Hidden``
    members or their strings ("UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO") to values; ``_defaults`` (default
    True) fills missing required widget inputs from their declared default like the frontend would;
    ``_validate`` (default True) enables the validation step.
    """

    def __call__(
        self,
        node_cls: type,
        _hidden: dict[Any, Any] | None = None,
        _defaults: bool = True,
        _validate: bool = True,
        **inputs: Any,
    ) -> Any:
        import torch
        from comfy_api.internal import _ComfyNodeInternal, first_real_override

        is_v3 = issubclass(node_cls, _ComfyNodeInternal)
        if is_v3:
            node_cls.GET_SCHEMA()  # what registration does; sets SCHEMA used by the V3 class clone
        if _defaults:
            inputs = {**self._required_defaults(node_cls), **inputs}
        context = self._context(_hidden)

        if _validate:
            name = "validate_inputs" if is_v3 else "VALIDATE_INPUTS"
            fn = first_real_override(node_cls, name) if is_v3 else getattr(node_cls, name, None)
            if fn is not None:
                self._validate(node_cls, name, fn, inputs, context)

        obj = node_cls()  # the executor instantiates the class (V3 too) and caches the object
        with torch.inference_mode():
            results = self._map(obj, node_cls, obj.FUNCTION, inputs, context)
        assert len(results) == 1, results
        return results[0]

    @staticmethod
    def _context(overrides: dict[Any, Any] | None) -> dict[str, Any]:
        """``get_input_data``'s arguments that carry the hidden values."""
        given = {getattr(k, "name", k).upper(): v for k, v in (overrides or {}).items()}
        unknown = set(given) - {"UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO"}
        if unknown:
            raise ValueError(f"_hidden: unsupported hidden input(s) {sorted(unknown)}")
        return {
            "unique_id": given.get("UNIQUE_ID", "1"),
            "dynprompt": _Prompt(given["PROMPT"]) if "PROMPT" in given else None,
            "extra_data": {"extra_pnginfo": given.get("EXTRA_PNGINFO")},
        }

    @staticmethod
    def _map(obj: Any, node_cls: type, func: str, inputs: dict[str, Any], context: dict[str, Any]) -> list[Any]:
        """Run the executor's input preparation and ``_async_map_node_over_list`` for one input set."""
        import execution

        data, missing, extra = execution.get_input_data(inputs, node_cls, context["unique_id"], None,
                                                        context["dynprompt"], context["extra_data"])
        if missing:
            raise ValueError(f"{node_cls.__name__}: inputs {sorted(missing)} look like links")

        async def go() -> list[Any]:
            res = await execution._async_map_node_over_list("spdinv-test", context["unique_id"], obj, data, func,
                                                            **executor_extra_kwarg(extra))
            return await execution.resolve_map_node_over_list_results(res)

        return asyncio.run(go())

    def _validate(self, node_cls: type, name: str, fn: Any, inputs: dict[str, Any], context: dict[str, Any]) -> None:
        spec = inspect.getfullargspec(fn)
        wanted = {k: v for k, v in inputs.items() if spec.varkw is not None or k in spec.args}
        if not wanted:
            return
        (ret,) = self._map(node_cls, node_cls, name, wanted, context)
        if ret is not True:
            raise ValueError(f"{node_cls.__name__}.{name} rejected the inputs: {ret!r}")

    @staticmethod
    def _required_defaults(node_cls: type) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in node_cls.INPUT_TYPES().get("required", {}).items():
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                out[name] = spec[1]["default"]
        return out


def executor_extra_kwarg(extra: Any) -> dict[str, Any]:
    """The keyword under which this ComfyUI's ``_async_map_node_over_list`` takes what ``get_input_data``
    returned third: ``hidden_inputs`` (0.3.x) or ``v3_data`` (later releases)."""
    import execution

    params = inspect.signature(execution._async_map_node_over_list).parameters
    for name in ("v3_data", "hidden_inputs"):
        if name in params:
            return {name: extra}
    raise RuntimeError("this ComfyUI's executor takes neither v3_data nor hidden_inputs; update "
                       "tools/comfy_inprocess.py:executor_extra_kwarg")
