"""``python -m benchmarks.pie run|metrics ...`` from the repository root (see :mod:`benchmarks.pie.cli`)."""

from __future__ import annotations

import sys

from benchmarks import register_pack

register_pack()

from spdinv_pack.benchmarks.pie.cli import main  # noqa: E402 - importable once the pack is registered

sys.exit(main())
