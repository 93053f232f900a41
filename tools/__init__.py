"""Headless tooling shared by tests and benchmarks: a throw-away ComfyUI server, UI->API workflow
conversion, API prompts built node by node (``api_graph``), a command-line workflow runner, and ComfyUI imported
in-process (``comfy_inprocess``). Command lines run from the repository root as ``python -m tools.run_workflow``
and ``python -m tools.layout_workflows``. Standard library only at import time; not imported by the node pack."""
