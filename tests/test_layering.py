"""SPEC §2: the inner layers import without ComfyUI, and never import it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_layers_import_without_comfyui():
    code = f"""
import importlib, importlib.util, pkgutil, sys
spec = importlib.util.spec_from_file_location("spdinv_pack", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["spdinv_pack"] = pack; spec.loader.exec_module(pack)
for layer in ("spdinv", "attention_patches"):
    package = importlib.import_module("spdinv_pack." + layer)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"spdinv_pack.{{layer}}.{{info.name}}")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "nodes"))
assert not bad, bad
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
