"""Headless tooling shared by tests and benchmarks: a throw-away ComfyUI server, UI->API workflow
conversion, and a command-line workflow runner. Standard library only; not imported by the node pack."""
