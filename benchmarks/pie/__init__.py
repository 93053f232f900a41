"""PIE-Bench through the pack: the data (``data``), the edits in a headless ComfyUI (``run``), the metrics
(``metrics``) and the command line (``cli``; ``python -m benchmarks.pie run|metrics ...`` from the repository
root). Import it as ``spdinv_pack.benchmarks.pie``."""
