"""Imports the repository as the package ``spdinv_pack``, the way ComfyUI imports a node pack.

The pack uses relative imports throughout (its ``nodes/`` package must never shadow ComfyUI's
top-level ``nodes`` module), so tests reach it as ``spdinv_pack.spdinv``, ``spdinv_pack.nodes``...
Importing the package itself needs no ComfyUI: nodes are imported only by ``comfy_entrypoint``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "spdinv_pack"

if PACKAGE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[PACKAGE] = _module
    _spec.loader.exec_module(_module)
