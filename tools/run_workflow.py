"""Run a ComfyUI workflow headlessly with this node pack loaded, and collect its output images.

    python -m tools.run_workflow "workflows/api/SPDInv edit with Prompt to Prompt.json" --comfyui ~/ComfyUI \\
        --checkpoint ~/models/sd15.safetensors --image cat.png \\
        --source-prompt "a cat" --target-prompt "a tiger" --set "KSampler.steps=20" --out out/

Uses the GPU when the interpreter that runs ComfyUI (``--python``) has torch with CUDA or MPS, else the CPU
(``--gpu`` / ``--cpu`` force it) and says which. On the CPU the quick preset is on (``--full`` turns it off): the
"Resize" image at most 256 pixels a side and at most 20 steps (see :data:`QUICK`), each change printed; ``--set``
values win over it. While the prompt runs, a progress line (node, step i/n, elapsed, time left) follows
ComfyUI's websocket messages. The time limit scales with the work (:func:`default_timeout`; ``--timeout``).

Starts a private ComfyUI server (``tools/comfy_server.py``) with the checkpoint's folder registered,
copies the image into its input directory (without ``--image`` the shipped workflows use the pack's example
photo), applies the overrides, runs it, and copies the images into ``--out`` (same file names; existing files
are overwritten). Exits non-zero with the error on failure. API-format files run as they are; a UI-format
workflow is converted by comfy-cli (``pip install comfy-cli``; see ``tools/workflow_api.py``).

Also usable as a library: :func:`build_prompt` and :func:`run_workflow`. Standard library only, apart from
comfy-cli for UI-format files.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .comfy_server import REPO_ROOT, ComfyServer, ComfyServerError, PromptTimeout
from .workflow_api import (
    Conversion,
    OverrideError,
    WorkflowError,
    api_titles,
    apply_overrides,
    find_nodes,
    is_ui_workflow,
    parse_overrides,
    set_input_where,
    to_api,
    ui_converter,
)


@dataclass
class RunResult:
    """What one run produced: copied images, the prompt that ran, its history entry and timings."""

    images: list[Path]
    prompt: dict[str, Any]
    prompt_id: str
    history: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    preset: list[PresetChange] = field(default_factory=list)
    gpu: bool = False
    timeout: float = 0.0


def load_workflow(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a workflow JSON file (UI or API format)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise WorkflowError(f"workflow {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise WorkflowError(f"workflow {path} is not a JSON object")
    return data


def _require(changed: list[str], what: str, prompt: Mapping[str, Any], class_type: str) -> None:
    if changed:
        return
    present = [f"{i} {t!r}" for i, t in api_titles(prompt).items() if prompt[i].get("class_type") == class_type]
    raise OverrideError(
        f"{what}: no matching {class_type} node in the workflow"
        + (f" (its {class_type} nodes: {', '.join(present)})" if present else "")
    )


def _set_prompt_text(prompt: dict[str, Any], word: str, text: str) -> list[str]:
    """Set a prompt wherever the workflow types it: the ``text`` of CLIPTextEncode nodes and the ``value`` of
    String primitives whose title contains ``word``, and ``<word>_text`` inputs of engine nodes. Inputs fed by a
    link are left alone (they receive the text from the node that is set)."""
    titles = api_titles(prompt)
    targets = {"CLIPTextEncode": "text", "PrimitiveString": "value", "PrimitiveStringMultiline": "value"}
    changed = []
    for node_id, entry in prompt.items():
        inputs = entry.setdefault("inputs", {})
        name = targets.get(entry.get("class_type"))
        names = [name] if name and word.casefold() in titles[node_id].casefold() else []
        names.append(f"{word}_text")
        for name in names:
            if isinstance(inputs.get(name), str):
                inputs[name] = text
                changed.append(node_id)
    return changed


def build_prompt(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any] | None,
    *,
    checkpoint_name: str | None = None,
    image_name: str | None = None,
    clip_vision_name: str | None = None,
    source_prompt: str | None = None,
    target_prompt: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    quick: Quick | None = None,
) -> BuiltPrompt:
    """Convert ``workflow`` to an API prompt and apply the runner's overrides.

    Convenience settings (each must match at least one node, else :class:`OverrideError`):
    ``checkpoint_name`` -> ``ckpt_name`` of every CheckpointLoaderSimple; ``image_name`` -> ``image`` of
    every LoadImage; ``clip_vision_name`` -> ``clip_name`` of every CLIPVisionLoader;
    ``source_prompt`` / ``target_prompt`` -> ``text`` of the CLIPTextEncode nodes and ``value`` of the String
    primitives whose title contains "source" / "target" (case-insensitive), and the ``source_text`` /
    ``target_text`` inputs of engine nodes that encode both prompts (P2P); linked inputs are left to their
    link. ``quick`` applies that preset (:func:`quick_changes`; what it changed is in ``conv.preset``);
    ``overrides`` (``{"NODE.INPUT": value}``) come last and win over the preset.
    """
    conv = to_api(workflow, object_info)
    prompt = conv.prompt
    if checkpoint_name is not None:
        changed = set_input_where(prompt, "ckpt_name", checkpoint_name, class_type="CheckpointLoaderSimple")
        _require(changed, "--checkpoint", prompt, "CheckpointLoaderSimple")
    if image_name is not None:
        _require(set_input_where(prompt, "image", image_name, class_type="LoadImage"), "--image", prompt, "LoadImage")
    if clip_vision_name is not None:
        changed = set_input_where(prompt, "clip_name", clip_vision_name, class_type="CLIPVisionLoader")
        _require(changed, "--clip-vision", prompt, "CLIPVisionLoader")
    for flag, word, text in (
        ("--source-prompt", "source", source_prompt),
        ("--target-prompt", "target", target_prompt),
    ):
        if text is not None:
            changed = _set_prompt_text(prompt, word, text)
            _require(changed, f"{flag} (a CLIPTextEncode or String primitive titled with {word!r}, or a {word}_text "
                     "input)", prompt, "CLIPTextEncode")
    preset = quick_changes(prompt, quick, overrides) if quick is not None else []
    for change in preset:
        prompt[change.node_id]["inputs"][change.input] = change.new
    if overrides:
        apply_overrides(prompt, overrides, object_info)
    return BuiltPrompt(prompt, api_titles(prompt), preset)


@dataclass
class BuiltPrompt(Conversion):
    """:func:`build_prompt`'s result: the API prompt, its titles and what the quick preset changed."""

    preset: list[PresetChange] = field(default_factory=list)


# ---------------------------------------------------------------------------- device

_DEVICE_PROBE = (
    "import torch\n"
    "mps = getattr(torch.backends, 'mps', None)\n"
    "print('cuda' if torch.cuda.is_available() else 'mps' if mps is not None and mps.is_available() else 'cpu')\n"
)


@dataclass(frozen=True)
class Device:
    """Where ComfyUI runs and why, for the one-line notice."""

    gpu: bool
    reason: str

    @property
    def notice(self) -> str:
        """The line shown before the run."""
        return f"device: {'GPU' if self.gpu else 'CPU'} ({self.reason})"


def detect_device(python: str | None, timeout: float = 120.0) -> Device:
    """Ask the interpreter that runs ComfyUI whether its torch sees a CUDA or MPS GPU.

    The runner itself never imports torch: it may run outside ComfyUI's environment. Any failure means CPU,
    with the reason in the notice.
    """
    py = python or os.environ.get("COMFYUI_PYTHON") or sys.executable
    try:
        done = subprocess.run([py, "-c", _DEVICE_PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Device(False, f"could not ask {py} which devices torch sees: {e}; --gpu forces the GPU")
    answer = done.stdout.split()[-1:] if done.returncode == 0 else []
    if not answer:
        last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return Device(False, f"torch in {py} did not answer: {last}; --gpu forces the GPU")
    if answer[0] == "cpu":
        return Device(False, f"torch in {py} sees no CUDA or MPS GPU; --gpu forces the GPU")
    return Device(True, f"torch in {py} sees a {answer[0].upper()} GPU; --cpu forces the CPU")


# ---------------------------------------------------------------------------- quick preset


@dataclass(frozen=True)
class Quick:
    """The quick preset: the longest side of the "Resize" image and the most sampling steps."""

    size: int = 256
    steps: int = 20


QUICK = Quick()
"""Default quick preset, on by default on the CPU: a 512x512, 50-step edit becomes 256x256, 20 steps."""

STEP_INPUTS = {"SPDInvInvert": "steps", "KSampler": "steps"}
"""Step counts the quick preset lowers; SPDInvEditSampler takes its steps from its inversion, so they agree."""


@dataclass(frozen=True)
class PresetChange:
    """One input the quick preset changes."""

    node_id: str
    title: str
    input: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.title}.{self.input} {self.old} -> {self.new}"


def _set_by_user(prompt: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    """``(node id, input)`` pairs that the user's ``--set`` overrides name."""
    named = set()
    for key in overrides or {}:
        ref, _, name = key.rpartition(".")
        named.update((node_id, name) for node_id in find_nodes(prompt, ref))
    return named


def quick_changes(
    prompt: Mapping[str, Any], quick: Quick = QUICK, overrides: Mapping[str, Any] | None = None
) -> list[PresetChange]:
    """What the quick preset changes in an API prompt.

    Every ImageScale titled "Resize" is scaled to at most ``quick.size`` on its longer side (aspect kept,
    multiples of 8), and every step count of :data:`STEP_INPUTS` is lowered to ``quick.steps``. It never
    raises a value, leaves linked inputs alone, and skips the inputs the user's ``overrides`` set (they win).
    """
    titles = api_titles(prompt)
    user = _set_by_user(prompt, overrides)
    changes: list[PresetChange] = []

    def lower(node_id: str, name: str, new: int) -> None:
        old = prompt[node_id].get("inputs", {}).get(name)
        if isinstance(old, int) and not isinstance(old, bool) and new < old and (node_id, name) not in user:
            changes.append(PresetChange(node_id, titles[node_id], name, old, new))

    for node_id, entry in prompt.items():
        inputs = entry.get("inputs") or {}
        if entry.get("class_type") == "ImageScale" and titles[node_id].casefold() == "resize":
            w, h = inputs.get("width"), inputs.get("height")
            if isinstance(w, int) and isinstance(h, int) and max(w, h) > quick.size:
                scale = quick.size / max(w, h)
                lower(node_id, "width", max(8, round(w * scale / 8) * 8))
                lower(node_id, "height", max(8, round(h * scale / 8) * 8))
        name = STEP_INPUTS.get(entry.get("class_type", ""))
        if name is not None:
            lower(node_id, name, quick.steps)
    return changes


# ---------------------------------------------------------------------------- time limit

TIMEOUT_BASE_S = 600.0
"""Fixed part of the default time limit: server start-up, model loading, decoding, saving."""

SECONDS_PER_STEP = {False: 120.0, True: 12.0}
"""Allowance per sampling step of a 512x512 image, on the CPU (False) and a GPU (True). Measured on two busy CPU
cores with SD1.5 at 256x256: about 20 s an SPDInv inversion step (fixed-point iterations included) and 12 s a P2P
edit step, i.e. about 60 s a step at 512x512; twice that leaves room for slower machines and larger models."""


def step_plan(prompt: Mapping[str, Any]) -> dict[str, int]:
    """Sampling steps each node will run: the ``steps`` of :data:`STEP_INPUTS` nodes, and an SPDInvEditSampler's
    from the SPDInvInvert its ``inversion`` input links to."""
    plan = {}
    for node_id, entry in prompt.items():
        name = STEP_INPUTS.get(entry.get("class_type", ""))
        steps = (entry.get("inputs") or {}).get(name) if name else None
        if isinstance(steps, int):
            plan[node_id] = steps
    for node_id, entry in prompt.items():
        link = (entry.get("inputs") or {}).get("inversion")
        if entry.get("class_type") == "SPDInvEditSampler" and isinstance(link, list) and str(link[0]) in plan:
            plan[node_id] = plan[str(link[0])]
    return plan


def image_pixels(prompt: Mapping[str, Any]) -> int:
    """Pixels of the largest image the workflow samples: its ImageScale / EmptyLatentImage sizes, else 512x512."""
    sizes = [
        inputs["width"] * inputs["height"]
        for entry in prompt.values()
        if entry.get("class_type") in ("ImageScale", "EmptyLatentImage")
        for inputs in [entry.get("inputs") or {}]
        if isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int)
    ]
    return max(sizes, default=512 * 512)


def default_timeout(prompt: Mapping[str, Any], gpu: bool) -> float:
    """The run's default time limit in seconds:
    ``600 + total steps x (pixels / 512²) x (120 on the CPU, 12 on a GPU)``, the steps summed over
    :func:`step_plan` (the inversion and the edit count apiece). The shipped 512x512, 50-step edit gets
    3.5 h on the CPU and 30 min on a GPU; the quick preset's 256x256, 20 steps 30 min."""
    steps = sum(step_plan(prompt).values())
    return TIMEOUT_BASE_S + steps * image_pixels(prompt) / (512 * 512) * SECONDS_PER_STEP[gpu]


# ---------------------------------------------------------------------------- progress


class WebSocketError(ConnectionError):
    """The websocket handshake or a frame was not what RFC 6455 prescribes."""


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocket:
    """A minimal RFC 6455 client, enough to follow ComfyUI's ``/ws``: it yields text messages, skips binary ones
    (previews), answers pings and sends nothing else. Standard library only, like the rest of the runner."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = buffered

    @classmethod
    def connect(cls, host: str, port: int, path: str, timeout: float = 10.0) -> WebSocket:
        """Open the connection and do the opening handshake."""
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise WebSocketError("connection closed during the websocket handshake")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            status, *lines = head.decode("latin-1").split("\r\n")
            if status.split()[1:2] != ["101"]:
                raise WebSocketError(f"websocket handshake refused: {status}")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                raise WebSocketError("websocket handshake: wrong Sec-WebSocket-Accept")
        except BaseException:
            sock.close()
            raise
        return cls(sock, rest)

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)  # client frames are always masked
        n = len(payload)
        size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        self.sock.sendall(bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def messages(self, idle: float = 1.0) -> Iterator[str | None]:
        """Text messages as they arrive, and None after each ``idle`` seconds without data (to refresh a
        clock); ends when the server closes the connection."""
        self.sock.settimeout(60.0)
        parts: list[bytes] = []
        kind = 1
        try:
            while True:
                if not self._buf and not select.select([self.sock], [], [], idle)[0]:
                    yield None
                    continue
                b0, b1 = self._read(2)
                length = b1 & 0x7F
                if length >= 126:
                    length = struct.unpack("!H" if length == 126 else "!Q", self._read(2 if length == 126 else 8))[0]
                mask = self._read(4) if b1 & 0x80 else b""
                payload = self._read(length)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                opcode = b0 & 0x0F
                if opcode == 8:
                    return
                if opcode == 9:
                    self._send(10, payload)
                elif opcode in (0, 1, 2):
                    if opcode:
                        kind, parts = opcode, []
                    parts.append(payload)
                    if b0 & 0x80 and kind == 1:
                        yield b"".join(parts).decode("utf-8", errors="replace")
        except EOFError:
            return

    def close(self) -> None:
        """Drop the connection (a reader blocked in :meth:`messages` then ends)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def format_duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class ProgressTracker:
    """Follows ComfyUI's websocket messages for one prompt (``executing``: which node runs; ``progress``: its
    step value/max; ``execution_cached``: nodes that will not run) and renders the progress line.

    Time left is the running node's remaining steps at its own pace so far, plus the steps of the
    :func:`step_plan` nodes not yet run at the mean pace of all steps so far.
    """

    titles: Mapping[str, str]
    plan: Mapping[str, int]
    start: float
    prompt_id: str | None = None
    node: str | None = None
    node_start: float = 0.0
    value: int = 0
    maximum: int = 0
    finished: dict[str, tuple[int, float]] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)
    ran: bool = False

    def feed(self, message: Mapping[str, Any], now: float) -> str | None:
        """Take one message; return "node" when another node started, "step" on progress, else None."""
        data = message.get("data")
        if not isinstance(data, dict):
            return None
        if self.prompt_id is not None and data.get("prompt_id") not in (None, self.prompt_id):
            return None
        kind = message.get("type")
        if kind == "execution_cached":
            self.cached.update(str(n) for n in data.get("nodes") or [])
            return None
        node = data.get("node")
        switched = kind == "executing" or (kind == "progress" and node is not None and str(node) != self.node)
        if switched:
            if self.node is not None and self.value:
                self.finished[self.node] = (self.value, now - self.node_start)
            self.node, self.node_start, self.value, self.maximum = (None if node is None else str(node)), now, 0, 0
            self.ran = self.ran or node is not None
        if kind == "progress":
            self.value, self.maximum = int(data.get("value") or 0), int(data.get("max") or 0)
        return "node" if switched else "step" if kind == "progress" else None

    def seconds_left(self, now: float) -> float | None:
        """Estimated seconds left; None before the first step and once no planned step is left."""
        running = now - self.node_start if self.value else 0.0
        steps = sum(n for n, _ in self.finished.values()) + self.value
        if not steps:
            return None
        mean = (sum(t for _, t in self.finished.values()) + running) / steps
        if self.value:
            here = (self.maximum - self.value) * running / self.value
        else:  # a node that has not reported a step yet: its planned steps at the mean pace
            here = mean * self.plan.get(self.node or "", 0)
        skip = {*self.finished, *self.cached, self.node}
        left = here + mean * sum(n for node_id, n in self.plan.items() if node_id not in skip)
        return left or None

    def line(self, now: float) -> str:
        """``title | step i/n | elapsed | ~left``, the parts known so far."""
        idle = "done, collecting the images" if self.ran else "waiting for ComfyUI"
        parts = [self.titles.get(self.node, self.node) if self.node is not None else idle]
        if self.maximum:
            parts.append(f"step {self.value}/{self.maximum}")
        parts.append(f"{format_duration(now - self.start)} elapsed")
        left = self.seconds_left(now)
        if left is not None:
            parts.append(f"~{format_duration(left)} left")
        return " | ".join(parts)


class ProgressDisplay:
    """Writes progress lines: rewritten in place on a terminal, else a plain line when a node starts or ends its
    steps and at most every ``every`` seconds otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO, tty: bool, every: float = 15.0, columns: int | None = None) -> None:
        self.stream, self.tty, self.every = stream, tty, every
        self.columns = columns or shutil.get_terminal_size().columns  # a wrapped line cannot be rewritten
        self._width = 0
        self._last: float | None = None

    def show(self, line: str, now: float, milestone: bool = False) -> None:
        """Show ``line`` if this display shows it now (a ``milestone`` always shows)."""
        if self.tty:
            line = line[: self.columns - 1]
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif milestone or self._last is None or now - self._last >= self.every:
            self.stream.write(line + "\n")
            self._last = now
        else:
            return
        self.stream.flush()

    def close(self) -> None:
        """End the line being rewritten."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class ProgressWatcher:
    """Follows the server's websocket in a thread and keeps a :class:`ProgressDisplay` current.

    It never fails the run: when the websocket cannot be opened it says so, and the run goes on without progress.
    """

    def __init__(self, server: ComfyServer, prompt: Mapping[str, Any], stream: TextIO, tty: bool) -> None:
        self.server = server
        self.tracker = ProgressTracker(api_titles(prompt), step_plan(prompt), time.monotonic())
        self.display = ProgressDisplay(stream, tty)
        self.stream = stream
        self._ws: WebSocket | None = None
        self._thread = threading.Thread(target=self._follow, name="comfyui-progress", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Connect as the server's client (ComfyUI sends a prompt's progress to the client that queued it)."""
        try:
            self._ws = WebSocket.connect(self.server.host, int(self.server.port or 0),
                                         f"/ws?clientId={self.server.client_id}")
        except (OSError, WebSocketError) as e:
            self.stream.write(f"(no progress display: {e})\n")
            return
        self._thread.start()

    def set_prompt_id(self, prompt_id: str) -> None:
        """Ignore messages about other prompts from now on."""
        with self._lock:
            self.tracker.prompt_id = prompt_id

    def _follow(self) -> None:
        assert self._ws is not None
        try:
            for text in self._ws.messages():
                now = time.monotonic()
                with self._lock:
                    changed = None
                    if text is not None:
                        try:
                            message = json.loads(text)
                        except json.JSONDecodeError:
                            continue
                        changed = self.tracker.feed(message, now) if isinstance(message, dict) else None
                    if changed or self.display.tty:
                        last_step = changed == "step" and self.tracker.value == self.tracker.maximum
                        self.display.show(self.tracker.line(now), now, milestone=changed == "node" or last_step)
        except (OSError, ValueError):
            pass  # the connection was closed under the reader: the run is over

    def stop(self) -> None:
        """Close the websocket, wait for the reader, end the line."""
        if self._ws is not None:
            self._ws.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            self.display.close()


def copy_outputs(paths: Sequence[Path], server: ComfyServer, out_dir: Path) -> list[Path]:
    """Copy output files into ``out_dir``, keeping their sub-folders relative to the server's output dir."""
    copied = []
    for src in paths:
        try:
            rel = src.relative_to(server.output_dir)
        except ValueError:
            rel = Path(src.name)
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(dst)
    return copied


def run_workflow(
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    comfyui_path: str | os.PathLike[str] | None = None,
    *,
    python: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    image: str | os.PathLike[str] | None = None,
    clip_vision: str | os.PathLike[str] | None = None,
    source_prompt: str | None = None,
    target_prompt: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] = "out",
    gpu: bool | None = None,
    quick: bool | Quick | None = None,
    timeout: float | None = None,
    load_pack: bool = True,
    only_this_pack: bool = False,
    extra_args: Sequence[str] = (),
    dump_prompt: str | os.PathLike[str] | None = None,
    report: TextIO | None = None,
) -> RunResult:
    """Start a server, run one workflow, copy its images to ``out_dir``; raise on any failure.

    ``checkpoint`` / ``clip_vision``: a file (its folder is registered with ComfyUI and its name set on
    the loader nodes) or a bare name ComfyUI already knows. ``image``: a file copied into the input dir.
    ``gpu``: None asks ``python``'s torch (:func:`detect_device`). ``quick``: None means :data:`QUICK` on the
    CPU only; True that preset, or a :class:`Quick`. ``timeout``: None means :func:`default_timeout`.
    ``report``: where the device notice, the preset's changes and the progress line go (None: silent).
    """
    t0 = time.monotonic()
    data = load_workflow(workflow) if isinstance(workflow, (str, os.PathLike)) else dict(workflow)
    if is_ui_workflow(data):
        ui_converter()  # refuse before a server starts when comfy-cli is missing
    folders: dict[str, list[str]] = {}

    def model_name(value: str | os.PathLike[str] | None, kind: str) -> str | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        if p.is_file():
            folders.setdefault(kind, []).append(str(p.resolve().parent))
            return p.name
        if p.exists() or os.sep in str(value):
            raise ComfyServerError(f"{kind} file {value} not found (or not a file)")
        return str(value)  # a name from ComfyUI's own model folders

    ckpt_name = model_name(checkpoint, "checkpoints")
    cv_name = model_name(clip_vision, "clip_vision")
    if image is not None and not Path(image).expanduser().is_file():
        raise ComfyServerError(f"image {image} does not exist")

    def say(line: str) -> None:
        if report is not None:
            report.write(line + "\n")
            report.flush()

    device = Device(gpu, "--gpu") if gpu is True else Device(False, "--cpu") if gpu is False else detect_device(python)
    say(device.notice)
    preset = quick if isinstance(quick, Quick) else QUICK if quick or (quick is None and not device.gpu) else None
    server = ComfyServer(
        comfyui_path,
        python=python,
        gpu=device.gpu,
        pack_dir=REPO_ROOT if load_pack else None,
        only_this_pack=only_this_pack,
        extra_folders=folders,
        extra_args=extra_args,
    )
    say("starting ComfyUI...")
    with server:
        t_ready = time.monotonic()
        say(f"ComfyUI ready after {t_ready - t0:.0f} s")
        image_name = server.upload_image(Path(image).expanduser()) if image is not None else None
        object_info = server.object_info() if is_ui_workflow(data) else None
        conv = build_prompt(
            data,
            object_info,
            checkpoint_name=ckpt_name,
            image_name=image_name,
            clip_vision_name=cv_name,
            source_prompt=source_prompt,
            target_prompt=target_prompt,
            overrides=overrides,
            quick=preset,
        )
        changes = conv.preset
        if preset is not None:
            why = "on the CPU by default; --full" if quick is None else "--quick; --full"
            say(f"quick preset ({why} runs the workflow's own settings, --set overrides any): "
                + ("; ".join(map(str, changes)) if changes else "nothing to lower"))
        limit = timeout if timeout is not None else default_timeout(conv.prompt, device.gpu)
        say(f"time limit {format_duration(limit)}" + ("" if timeout is not None else " (from steps, image size and "
                                                          "device; --timeout SECONDS to change)"))
        if dump_prompt is not None:
            Path(dump_prompt).write_text(json.dumps(conv.prompt, indent=2), encoding="utf-8")
        t_submit = time.monotonic()
        watcher = ProgressWatcher(server, conv.prompt, report, report.isatty()) if report is not None else None
        if watcher is not None:
            watcher.start()
        try:
            prompt_id = server.submit(conv.prompt)
            if watcher is not None:
                watcher.set_prompt_id(prompt_id)
            history = server.wait(prompt_id, timeout=limit)
        finally:
            if watcher is not None:
                watcher.stop()
        t_done = time.monotonic()
        images = copy_outputs(server.output_images(history), server, Path(out_dir))
    timings = {"server_start_s": t_ready - t0, "run_s": t_done - t_submit, "total_s": time.monotonic() - t0}
    return RunResult(images, conv.prompt, prompt_id, history, timings, changes, device.gpu, limit)


def make_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="run_workflow",
        description="Run a ComfyUI workflow (UI or API JSON) headlessly with this node pack loaded.",
    )
    p.add_argument("workflow", help="workflow JSON (UI format as saved by the frontend, or API format)")
    p.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (default: $COMFYUI_PATH)"
    )
    p.add_argument(
        "--python",
        default=os.environ.get("COMFYUI_PYTHON"),
        help="Python that runs ComfyUI (default: $COMFYUI_PYTHON or this interpreter)",
    )
    p.add_argument("--checkpoint", help="checkpoint file (or a name ComfyUI knows) for every CheckpointLoaderSimple")
    p.add_argument("--image", help="input image for every LoadImage node")
    p.add_argument("--clip-vision", help="CLIP vision file (or known name) for every CLIPVisionLoader")
    p.add_argument("--source-prompt", help='text of the CLIPTextEncode nodes whose title contains "source"')
    p.add_argument("--target-prompt", help='text of the CLIPTextEncode nodes whose title contains "target"')
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set an input; NODE is a node id, title or class type; VALUE is JSON or a string "
        "(repeatable, applied last)",
    )
    p.add_argument("--out", default="out", help="folder for the output images (default: ./out)")
    device = p.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="gpu", action="store_const", const=True, default=None,
                        help="run ComfyUI on the GPU (default: the GPU when --python's torch sees one, else the CPU)")
    device.add_argument("--cpu", dest="gpu", action="store_const", const=False, help="run ComfyUI on the CPU")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="quick", action="store_const", const=True, default=None,
                        help=f"quick preset: image at most {QUICK.size} px a side, at most {QUICK.steps} steps "
                        "(default on the CPU; --set values win)")
    preset.add_argument("--full", dest="quick", action="store_const", const=False,
                        help="the workflow's own settings, also on the CPU")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds allowed for the run (default: 600 + steps x pixels/512² x 120 on the CPU, x 12 on "
                   "a GPU)")
    p.add_argument("--no-pack", action="store_true", help="do not load this node pack (core nodes only)")
    p.add_argument("--only-this-pack", action="store_true", help="load no other custom node packs")
    p.add_argument("--dump-prompt", metavar="FILE", help="also write the API prompt that is submitted")
    p.add_argument(
        "--comfy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra ComfyUI argument, e.g. --comfy-arg=--force-fp32 (repeatable)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = make_parser().parse_args(argv)
    try:
        result = run_workflow(
            args.workflow,
            args.comfyui,
            python=args.python,
            checkpoint=args.checkpoint,
            image=args.image,
            clip_vision=args.clip_vision,
            source_prompt=args.source_prompt,
            target_prompt=args.target_prompt,
            overrides=parse_overrides(args.overrides),
            out_dir=args.out,
            gpu=args.gpu,
            quick=args.quick,
            timeout=args.timeout,
            load_pack=not args.no_pack,
            only_this_pack=args.only_this_pack,
            extra_args=args.comfy_arg,
            dump_prompt=args.dump_prompt,
            report=sys.stderr,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ComfyServerError, WorkflowError, OverrideError) as e:
        hint = " (--timeout SECONDS allows more)" if isinstance(e, PromptTimeout) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    for path in result.images:
        print(path)
    if not result.images:
        print("(the workflow produced no output images)", file=sys.stderr)
    t = result.timings
    print(f"wall time: {t['total_s']:.1f} s (server start {t['server_start_s']:.1f} s, run {t['run_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
