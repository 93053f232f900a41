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
* ``clip_vision_path -> Path`` -- the random CLIP ViT-L/14 vision file (``CLIPVisionLoader`` lists it).
* ``elite_mapper_path_global -> Path``, ``elite_mapper_path_safetensors -> Path`` -- random ELITE
  global mappers (``torch.save`` .pt, and the same layout as safetensors).
* ``sd15 -> (ModelPatcher, CLIP, VAE)`` -- loaded by ``CheckpointLoaderSimple`` in inference mode.
* ``sd15_lora -> (ModelPatcher, CLIP)`` -- ``sd15`` patched by ``LoraLoader`` (strength 1, 1).
* ``run_node -> RunNode`` -- ``run_node(node_cls, **inputs)`` runs a V3 or V1 node like the
  executor does (see :class:`RunNode`).
* ``server -> ComfyServer`` -- one real ``main.py --cpu`` server with the pack, the random models and
  ``server_elite_folder`` registered, and the test-only text-encoder stand-in (``text_encoder_stand_in/``),
  shared by every server test of the session.
* ``server_elite_folder -> Path`` -- an extra ``models/elite`` folder of that server where tests may
  write mapper files (ComfyUI lists new files in a registered folder on the next request).
* ``photo_file -> Path`` -- a smooth 96x96 PNG photo to upload.

``sd15`` and ``sd15_lora`` share one ``nn.Module``; ComfyUI patches/unpatches LoRA weights when a
clone is loaded (``comfy.model_management.load_models_gpu``), which every sampler does. Tests that
call ``model.model.apply_model`` directly must load their patcher first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from spdinv_pack.tests.host import factory
from spdinv_pack.tools.comfy_inprocess import (
    ComfyEnv,
    RunNode,
    bootstrap_sys_path,
    find_comfyui,
    import_comfy,
    load_extra_nodes,
)
from spdinv_pack.tools.comfy_server import ComfyServer

HOST_DIR = Path(__file__).resolve().parent
NOT_SET_REASON = "COMFYUI_PATH not set: host tests need a ComfyUI checkout (see README)"

COMFYUI_ROOT, SKIP_REASON = find_comfyui(os.environ.get("COMFYUI_PATH"))
if COMFYUI_ROOT is None:
    _unset = not os.environ.get("COMFYUI_PATH", "").strip()
    SKIP_REASON = NOT_SET_REASON if _unset else f"{SKIP_REASON}; host tests skipped"
else:
    # ComfyUI first on sys.path, CPU mode, its utils package (see tools/comfy_inprocess.py).
    bootstrap_sys_path(COMFYUI_ROOT, cpu=True)


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


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout named by ``COMFYUI_PATH``."""
    if COMFYUI_ROOT is None:  # only reachable if a host test is collected some other way
        pytest.skip(SKIP_REASON)
    return COMFYUI_ROOT


@pytest.fixture(scope="session")
def comfy_env(comfyui_path: Path) -> ComfyEnv:
    """Import ComfyUI as a library: CPU mode, its own ``nodes``, test cache as model folder."""
    return import_comfy(comfyui_path, factory.cache_dir(), kinds=("checkpoints", "loras", "clip_vision"))


@pytest.fixture(scope="session")
def pack_nodes(comfy_env: ComfyEnv) -> Any:
    """The pack's ``nodes`` package, imported once ComfyUI is importable."""
    from spdinv_pack import nodes

    return nodes


@pytest.fixture(scope="session")
def comfy_extra_nodes(comfy_env: ComfyEnv) -> dict[str, type]:
    """``NODE_CLASS_MAPPINGS`` including built-in ``comfy_extras`` nodes (no custom/API nodes).

    Modules needing missing optional dependencies (e.g. torchaudio) fail to import; ComfyUI only
    logs that, as the server would.
    """
    return load_extra_nodes(comfy_env)


# --------------------------------------------------------------------------------------------
# Running nodes like the executor
# --------------------------------------------------------------------------------------------

# RunNode lives in tools/comfy_inprocess.py (the benchmark uses it too).


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
def sd3_checkpoint_path() -> Path:
    """The random SD3-class checkpoint (built into the cache on first use)."""
    return factory.sd3_checkpoint_path()


@pytest.fixture(scope="session")
def lora_path() -> Path:
    """The random kohya-format LoRA matching ``sd15_checkpoint_path``."""
    return factory.lora_path()


@pytest.fixture(scope="session")
def clip_vision_path() -> Path:
    """The random CLIP ViT-L/14 vision tower, 224 px, HF layout (built into the cache on first use)."""
    return factory.clip_vision_vitl_path()


@pytest.fixture(scope="session")
def elite_mapper_path_global() -> Path:
    """The random ELITE global mapper as the published ``torch.save`` state dict (.pt)."""
    return factory.elite_mapper_path("global", "pt")


@pytest.fixture(scope="session")
def elite_mapper_path_safetensors() -> Path:
    """The random ELITE global mapper, same tensors as ``elite_mapper_path_global``, as safetensors."""
    return factory.elite_mapper_path("global", "safetensors")


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
def sdxl_checkpoint_path() -> Path:
    """The random SDXL-class checkpoint (Segmind Vega layout; built into the cache on first use)."""
    return factory.sdxl_checkpoint_path()


FAMILY_CHECKPOINTS = {"sdxl": factory.sdxl_checkpoint_path, "sd2-v": factory.sd2_checkpoint_path}
"""Random checkpoints of the families beyond SD1.x: an SDXL-class (Segmind Vega layout) and an SD2.x 768-v."""


@pytest.fixture(scope="module", params=sorted(FAMILY_CHECKPOINTS))
def family(request: pytest.FixtureRequest, comfy_env: ComfyEnv, run_node: RunNode) -> Iterator[tuple[str, tuple]]:
    """``(name, (MODEL, CLIP, VAE))`` of each family's random checkpoint as ``CheckpointLoaderSimple`` loads it
    (built into the cache on first use); one family at a time, unloaded before the next (SDXL-class needs
    about 7 GiB in fp32)."""
    path = FAMILY_CHECKPOINTS[request.param]()
    t0 = time.perf_counter()
    with _KeyWarnings.forbid(f"loading the random {request.param} checkpoint"):
        loaded = run_node(comfy_env.nodes.CheckpointLoaderSimple, ckpt_name=path.name)
    print(f"\n[host] random {request.param} checkpoint loaded in {time.perf_counter() - t0:.1f} s")
    yield request.param, tuple(loaded)
    import comfy.model_management

    del loaded
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


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


# --------------------------------------------------------------------------------------------
# A real server
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def photo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smooth synthetic 96x96 RGB PNG."""
    y, x = np.mgrid[0:96, 0:96] / 95.0
    img = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y)], -1)
    path = tmp_path_factory.mktemp("input") / "photo.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def server_elite_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder registered as a ``models/elite`` folder of ``server`` (tests add mapper files)."""
    return tmp_path_factory.mktemp("server_elite")


TEXT_ENCODER_STAND_IN = HOST_DIR / "text_encoder_stand_in"
"""Test-only node folder loaded next to the pack: CONDITIONING in the real text encoders' shapes (Flux, Qwen-Image)."""


@pytest.fixture(scope="session")
def server(comfyui_path: Path, sd15_checkpoint_path: Path, clip_vision_path: Path, elite_mapper_path_global: Path,
           server_elite_folder: Path) -> Iterator[ComfyServer]:
    """``main.py --cpu`` with the pack, the random SD1.5, CLIP vision and ELITE mapper, the model cache also as the
    ``diffusion_models`` and ``vae`` folders (random flow models and VAEs), and the test-only text-encoder stand-in;
    one per session."""
    cache = sd15_checkpoint_path.parent
    with ComfyServer(comfyui_path, python=sys.executable, checkpoints=[cache],
                     clip_vision=[clip_vision_path.parent],
                     extra_folders={"elite": [elite_mapper_path_global.parent, server_elite_folder],
                                    "diffusion_models": [cache], "vae": [cache]},
                     extra_packs={"spdinv-test-text-encoders": TEXT_ENCODER_STAND_IN},
                     require_nodes=["SPDInvTestTextEncoderStandIn", "SPDInvInvert", "SPDInvEditSampler",
                                    "SPDInvResidualPlot", "P2PAttentionControl", "SPDInvAttentionPreview",
                                    "MasaCtrlMutualAttention", "MMDiTMutualAttention", "PNPInjection",
                                    "SPDInvWaveletColorFix", "ELITEMapperLoader", "ELITEMapper"]) as srv:
        yield srv
    assert not srv.running
