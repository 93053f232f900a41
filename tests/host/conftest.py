"""Fixtures for host tests: the pack's nodes running inside an in-process ComfyUI on CPU.

ComfyUI is not on PyPI, so these tests need a checkout named by ``COMFYUI_PATH``. Without one,
every test module under ``tests/host/`` is reported as skipped (with the reason; see ``-rs``)
and the core tests in ``tests/`` are unaffected. Test modules here may therefore import
``comfy``/``comfy_api``/``nodes`` at top level: they are only imported when ComfyUI is present.

Fixtures (all session-scoped):

* ``comfyui_path -> Path`` -- the checkout.
* ``comfy_env -> ComfyEnv`` -- ComfyUI imported as a library in CPU mode; ``.nodes`` is ComfyUI's
  own top-level ``nodes`` module (the pack's ``nodes/`` package is ``spdinv_pack.nodes``).
* ``comfy_extra_nodes -> dict[str, type]`` -- ``NODE_CLASS_MAPPINGS`` after also registering the
  built-in ``comfy_extras`` nodes (SamplerCustom, FlipSigmas, ...); slower, so opt-in.
* ``sd15_checkpoint_path -> Path``, ``lora_path -> Path`` -- the random files from ``factory``.
* ``sd15 -> (ModelPatcher, CLIP, VAE)`` -- loaded by ``CheckpointLoaderSimple`` in inference mode.
* ``sd15_lora -> (ModelPatcher, CLIP)`` -- ``sd15`` patched by ``LoraLoader`` (strength 1, 1).
* ``run_node -> RunNode`` -- ``run_node(node_cls, **inputs)`` runs a V3 or V1 node like the
  executor does (see :class:`RunNode`).

``sd15`` and ``sd15_lora`` share one ``nn.Module``; ComfyUI patches/unpatches LoRA weights when a
clone is loaded (``comfy.model_management.load_models_gpu``), which every sampler does. Tests that
call ``model.model.apply_model`` directly must load their patcher first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import factory  # tests/host/factory.py; imported before ComfyUI goes first on sys.path

HOST_DIR = Path(__file__).resolve().parent
NOT_SET_REASON = "COMFYUI_PATH not set: host tests need a ComfyUI checkout (see README)"
_CHECKOUT_FILES = ("nodes.py", "execution.py", "folder_paths.py", "comfy/sd.py", "comfy_api/latest/_io.py")


def _find_comfyui() -> tuple[Path | None, str]:
    """Return (checkout, "") when ``COMFYUI_PATH`` names a ComfyUI checkout, else (None, reason)."""
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if not raw:
        return None, NOT_SET_REASON
    root = Path(raw).expanduser().resolve()
    missing = [f for f in _CHECKOUT_FILES if not (root / f).is_file()]
    if missing:
        return None, f"COMFYUI_PATH={raw} is not a ComfyUI checkout (missing {', '.join(missing)}); host tests skipped"
    return root, ""


COMFYUI_ROOT, SKIP_REASON = _find_comfyui()


def _bootstrap_sys_path(root: Path) -> None:
    """Put the checkout first on sys.path and select CPU mode before ``comfy.model_management`` loads.

    ``python -m pytest`` run from the repository puts the repository on sys.path, where the pack's
    ``nodes/`` package would shadow ComfyUI's ``nodes.py``; ComfyUI must therefore come first.
    ``args.cpu`` must be set before ``comfy.model_management`` is imported, or it probes CUDA.
    ComfyUI does not parse argv when imported as a library, so pytest's arguments are safe.
    """
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    stale = sys.modules.get("nodes")
    if stale is not None and Path(getattr(stale, "__file__", "") or "").resolve() != root / "nodes.py":
        raise RuntimeError(f"a module named 'nodes' ({stale!r}) was imported before ComfyUI's nodes.py")
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = True
    # ComfyUI's nodes.py puts <root>/comfy first on sys.path, after which a plain ``import utils``
    # finds comfy/utils.py instead of the <root>/utils package (server.py and comfy_extras need
    # ``utils.install_util``). main.py imports the package early; do the same.
    utils = importlib.import_module("utils")
    if Path(utils.__file__).resolve() != root / "utils" / "__init__.py":
        raise RuntimeError(f"'utils' resolved to {utils.__file__}, not ComfyUI's utils package")


if COMFYUI_ROOT is not None:
    _bootstrap_sys_path(COMFYUI_ROOT)


class _SkippedHostModule(pytest.File):
    """Stands in for a host test module without importing it: one item, skipped with the reason."""

    def collect(self) -> Iterator[pytest.Item]:
        item = _SkippedHostItem.from_parent(self, name="host-tests")
        item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        yield item


class _SkippedHostItem(pytest.Item):
    """Placeholder item; never runs (it carries a skip mark)."""

    def runtest(self) -> None:
        raise AssertionError("unreachable: this item is always skipped")

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.name


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.File | None:
    """Without ComfyUI, replace test modules under tests/host/ before they import ``comfy``.

    The skip is reported once per module at the module's path (``pytest -rs`` prints the reason).
    """
    if COMFYUI_ROOT is None and HOST_DIR in Path(module_path).resolve().parents:
        return _SkippedHostModule.from_parent(parent, path=Path(module_path))
    return None


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the header whether host tests run and against which checkout."""
    if COMFYUI_ROOT is None:
        return f"host tests: skipped ({SKIP_REASON})"
    return f"host tests: ComfyUI at {COMFYUI_ROOT}, model cache {factory.cache_dir()}"


# --------------------------------------------------------------------------------------------
# ComfyUI bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComfyEnv:
    """ComfyUI imported in-process (CPU mode) with the test model cache registered."""

    root: Path
    version: str
    nodes: ModuleType  # ComfyUI's nodes.py (NODE_CLASS_MAPPINGS, CheckpointLoaderSimple, KSampler, ...)
    folder_paths: ModuleType
    cache_dir: Path


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout named by ``COMFYUI_PATH``."""
    if COMFYUI_ROOT is None:  # only reachable if a host test is collected some other way
        pytest.skip(SKIP_REASON)
    return COMFYUI_ROOT


@pytest.fixture(scope="session")
def comfy_env(comfyui_path: Path) -> ComfyEnv:
    """Import ComfyUI as a library: CPU mode, its own ``nodes``, test cache as model folder."""
    from comfy.cli_args import args

    args.cpu = True  # no-op if model_management is already imported (then _bootstrap_sys_path set it)
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import folder_paths

    cache = factory.cache_dir()
    for kind in ("checkpoints", "loras"):
        folder_paths.add_model_folder_path(kind, str(cache))
    comfy_nodes = importlib.import_module("nodes")
    if Path(comfy_nodes.__file__).resolve() != comfyui_path / "nodes.py":
        raise RuntimeError(f"'nodes' resolved to {comfy_nodes.__file__}, not ComfyUI's nodes.py")
    importlib.import_module("comfy_extras")  # make sure comfy_extras.* is importable from the checkout
    version = importlib.import_module("comfyui_version").__version__
    return ComfyEnv(comfyui_path, version, comfy_nodes, folder_paths, cache)


@pytest.fixture(scope="session")
def comfy_extra_nodes(comfy_env: ComfyEnv) -> dict[str, type]:
    """``NODE_CLASS_MAPPINGS`` including built-in ``comfy_extras`` nodes (no custom/API nodes).

    Modules needing missing optional dependencies (e.g. torchaudio) fail to import; ComfyUI only
    logs that, as the server would.
    """
    mappings = comfy_env.nodes.NODE_CLASS_MAPPINGS
    if "SamplerCustom" not in mappings:
        asyncio.run(comfy_env.nodes.init_builtin_extra_nodes())
    return mappings


# --------------------------------------------------------------------------------------------
# Running nodes like the executor
# --------------------------------------------------------------------------------------------

_HIDDEN_DEFAULTS: dict[str, Any] = {
    "UNIQUE_ID": "1",
    "PROMPT": {},
    "EXTRA_PNGINFO": None,
    "DYNPROMPT": None,
    "AUTH_TOKEN_COMFY_ORG": None,
    "API_KEY_COMFY_ORG": None,
}


class RunNode:
    """Call a node like ComfyUI's executor (``execution.py``) does.

    ``run_node(NodeCls, **inputs)`` passes each input as a single value (no list mapping) through
    ComfyUI's own ``execution._async_map_node_over_list`` under ``torch.inference_mode()``:

    * V3 (``io.ComfyNode``): ``VALIDATE_CLASS``, ``PREPARE_CLASS_CLONE(hidden)`` (fills ``cls.hidden``),
      a locked class clone, then ``EXECUTE_NORMALIZED`` -> ``execute``; returns the ``io.NodeOutput``
      (values in ``.result``, a tuple).
    * V1: instance method ``FUNCTION``; returns what it returns (a tuple, or a dict with "result").

    ``async def execute`` is awaited in the same thread (inference mode stays on, as in the server).
    Before executing, ``validate_inputs``/``VALIDATE_INPUTS`` is called if the node defines it
    (outside inference mode, as during prompt validation) and a failure raises ``ValueError``.

    Options (underscored so they cannot clash with input names): ``_hidden`` maps ``io.Hidden``
    members or their strings ("UNIQUE_ID", "PROMPT", ...) to values; ``_defaults`` (default True)
    fills missing required widget inputs from their declared default like the frontend would;
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
        from comfy_api.internal import _ComfyNodeInternal, first_real_override

        is_v3 = issubclass(node_cls, _ComfyNodeInternal)
        if is_v3:
            node_cls.GET_SCHEMA()  # what registration does; sets SCHEMA used by EXECUTE_NORMALIZED
        if _defaults:
            inputs = {**self._required_defaults(node_cls), **inputs}
        hidden = self._hidden_inputs(node_cls, is_v3, _hidden)
        if not is_v3:  # V1 receives hidden values as ordinary keyword inputs
            inputs = {**hidden, **inputs}

        if _validate:
            name = "validate_inputs" if is_v3 else "VALIDATE_INPUTS"
            fn = first_real_override(node_cls, name) if is_v3 else getattr(node_cls, name, None)
            if fn is not None:
                self._validate(node_cls, name, fn, inputs, hidden if is_v3 else None)

        obj = node_cls()  # the executor instantiates the class (V3 too) and caches the object
        with torch.inference_mode():
            results = self._map(obj, obj.FUNCTION, inputs, hidden if is_v3 else None)
        assert len(results) == 1, results
        return results[0]

    @staticmethod
    def _map(obj: Any, func: str, inputs: dict[str, Any], hidden: dict[Any, Any] | None) -> list[Any]:
        """Run ComfyUI's ``_async_map_node_over_list`` for one input set and resolve async tasks."""
        import execution

        async def go() -> list[Any]:
            data = {k: [v] for k, v in inputs.items()}
            res = await execution._async_map_node_over_list("spdinv-test", "1", obj, data, func, hidden_inputs=hidden)
            return await execution.resolve_map_node_over_list_results(res)

        return asyncio.run(go())

    def _validate(self, node_cls: type, name: str, fn: Any, inputs: dict[str, Any], hidden: Any) -> None:
        spec = inspect.getfullargspec(fn)
        wanted = {k: v for k, v in inputs.items() if spec.varkw is not None or k in spec.args}
        if not wanted:
            return
        (ret,) = self._map(node_cls, name, wanted, hidden)
        if ret is not True:
            raise ValueError(f"{node_cls.__name__}.{name} rejected the inputs: {ret!r}")

    @staticmethod
    def _required_defaults(node_cls: type) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in node_cls.INPUT_TYPES().get("required", {}).items():
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                out[name] = spec[1]["default"]
        return out

    @staticmethod
    def _hidden_inputs(node_cls: type, is_v3: bool, overrides: dict[Any, Any] | None) -> dict[Any, Any]:
        """Hidden values the executor would pass: V3 keyed by ``io.Hidden``, V1 by input name."""
        given = {getattr(k, "value", k): v for k, v in (overrides or {}).items()}
        if is_v3:
            from comfy_api.latest import io

            wanted = node_cls.GET_SCHEMA().hidden or []
            return {io.Hidden(h): given.get(io.Hidden(h).value, _HIDDEN_DEFAULTS[io.Hidden(h).value]) for h in wanted}
        declared = node_cls.INPUT_TYPES().get("hidden", {})
        return {name: given.get(kind, _HIDDEN_DEFAULTS.get(kind)) for name, kind in declared.items()}


@pytest.fixture(scope="session")
def run_node(comfy_env: ComfyEnv) -> RunNode:
    """``run_node(node_cls, **inputs)``: execute a node in inference mode like ComfyUI's executor."""
    return RunNode()


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sd15_checkpoint_path() -> Path:
    """The random SD1.5 checkpoint (built into the cache on first use)."""
    return factory.sd15_checkpoint_path()


@pytest.fixture(scope="session")
def lora_path() -> Path:
    """The random kohya-format LoRA matching ``sd15_checkpoint_path``."""
    return factory.lora_path()


class _KeyWarnings(logging.Handler):
    """Collects ComfyUI's warnings about missing/unexpected/unloaded keys while loading."""

    PATTERNS = ("missing", "unexpected", "not loaded", "left over", "leftover")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if any(p in msg.lower() for p in self.PATTERNS):
            self.messages.append(msg)

    @classmethod
    @contextlib.contextmanager
    def forbid(cls, what: str) -> Iterator[None]:
        """Fail if ComfyUI logs a key warning (it only logs them; loading would go on)."""
        handler, root = cls(), logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
        if handler.messages:
            raise RuntimeError(f"{what}: ComfyUI reported key problems: {handler.messages}")


@pytest.fixture(scope="session")
def sd15(comfy_env: ComfyEnv, sd15_checkpoint_path: Path, run_node: RunNode) -> Iterator[tuple[Any, Any, Any]]:
    """(MODEL ModelPatcher, CLIP, VAE) from ``CheckpointLoaderSimple`` in inference mode.

    Fails if ComfyUI warns about missing/unexpected keys (it would only log them).
    """
    t0 = time.perf_counter()
    with _KeyWarnings.forbid("loading the random SD1.5 checkpoint"):
        model, clip, vae = run_node(comfy_env.nodes.CheckpointLoaderSimple, ckpt_name=sd15_checkpoint_path.name)
    print(f"\n[host] random SD1.5 loaded in {time.perf_counter() - t0:.1f} s")
    yield model, clip, vae
    import comfy.model_management

    comfy.model_management.unload_all_models()


@pytest.fixture(scope="session")
def sd15_lora(comfy_env: ComfyEnv, sd15: tuple[Any, Any, Any], lora_path: Path, run_node: RunNode) -> tuple[Any, Any]:
    """(MODEL, CLIP) clones of ``sd15`` with the random LoRA applied by ``LoraLoader`` (strengths 1).

    Fails if ComfyUI reports a LoRA key it could not map ("lora key not loaded").
    """
    model, clip, _ = sd15
    with _KeyWarnings.forbid("applying the random LoRA"):
        return run_node(
            comfy_env.nodes.LoraLoader,
            model=model,
            clip=clip,
            lora_name=lora_path.name,
            strength_model=1.0,
            strength_clip=1.0,
        )
