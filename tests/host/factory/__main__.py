"""``python -m tests.host.factory`` (from the repository root): build the cached SD1.5 checkpoint and LoRA."""

from __future__ import annotations

import time

from .sd import lora_path, sd15_checkpoint_path

t0 = time.perf_counter()
ckpt = sd15_checkpoint_path()
print(f"{ckpt} ({ckpt.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
print(lora_path())
