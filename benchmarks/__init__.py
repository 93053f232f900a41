"""Benchmarks of the pack: the scripts here (``bench_*.py``, each run as a script) and the PIE-Bench harness
(``benchmarks.pie``, run as ``python -m benchmarks.pie`` from the repository root). Not imported by the pack."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "spdinv_pack"


def register_pack() -> None:
    """Import the repository as the package ``spdinv_pack`` (as ComfyUI imports a node pack, and as
    ``tests/conftest.py`` does), so that a command line started as ``python -m benchmarks.<name>`` runs its modules
    as ``spdinv_pack.benchmarks.<name>``, with the same relative imports as under the tests."""
    if PACKAGE in sys.modules:
        return
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
