"""Headless tooling shared by tests and benchmarks: a throw-away ComfyUI server, UI->API workflow
conversion, a command-line workflow runner, and ComfyUI imported in-process (``comfy_inprocess``).
Standard library only at import time; not imported by the node pack."""
