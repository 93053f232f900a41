"""The headless runner's newcomer defaults without ComfyUI: device choice, the quick preset, the time limit, the
progress line and the websocket client that feeds it (against a local socket server)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from spdinv_pack.tools import run_workflow as rw
from spdinv_pack.tools.workflow_api import WORKFLOWS

P2P = WORKFLOWS / "api" / "SPDInv edit with Prompt to Prompt.json"


def p2p() -> dict[str, Any]:
    return json.loads(P2P.read_text())


def test_quick_preset_shrinks_the_shipped_edit_to_256_pixels_and_20_steps() -> None:
    changes = rw.quick_changes(p2p())
    assert [str(c) for c in changes] == [
        "Resize.width 512 -> 256", "Resize.height 512 -> 256", "SPDInv inversion.steps 50 -> 20"]
    built = rw.build_prompt(p2p(), None, quick=rw.QUICK)
    assert built.preset == changes
    assert built.prompt["3"]["inputs"]["width"] == 256 and built.prompt["8"]["inputs"]["steps"] == 20


def test_user_settings_win_over_the_quick_preset() -> None:
    built = rw.build_prompt(p2p(), None, quick=rw.QUICK, overrides={"SPDInv inversion.steps": 30, "3.width": 384})
    assert [str(c) for c in built.preset] == ["Resize.height 512 -> 256"]
    assert built.prompt["8"]["inputs"]["steps"] == 30 and built.prompt["3"]["inputs"]["width"] == 384


def test_quick_preset_never_raises_a_setting() -> None:
    small = rw.build_prompt(p2p(), None, overrides={"Resize.width": 128, "Resize.height": 128,
                                                    "SPDInv inversion.steps": 8}).prompt
    assert rw.quick_changes(small) == []


def test_quick_preset_keeps_the_aspect_ratio_in_multiples_of_8() -> None:
    wide = rw.build_prompt(p2p(), None, overrides={"Resize.width": 1024, "Resize.height": 600}).prompt
    assert [(c.input, c.new) for c in rw.quick_changes(wide) if c.title == "Resize"] == [("width", 256),
                                                                                          ("height", 152)]


def test_the_edit_sampler_counts_its_inversions_steps() -> None:
    assert rw.step_plan(p2p()) == {"8": 50, "9": 50}


def test_default_timeout_scales_with_steps_pixels_and_device() -> None:
    assert rw.default_timeout(p2p(), gpu=False) == 600 + 100 * 120
    assert rw.default_timeout(p2p(), gpu=True) == 600 + 100 * 12
    quick = rw.build_prompt(p2p(), None, quick=rw.QUICK).prompt
    assert rw.default_timeout(quick, gpu=False) == 600 + 40 * 0.25 * 120


def test_durations_read_as_clock_times() -> None:
    assert [rw.format_duration(s) for s in (0, 59.6, 61, 3600 + 62)] == ["0:00", "1:00", "1:01", "1:01:02"]


def progress(node: str, value: int, maximum: int, prompt_id: str = "p") -> dict[str, Any]:
    return {"type": "progress", "data": {"node": node, "value": value, "max": maximum, "prompt_id": prompt_id}}


def executing(node: str | None, prompt_id: str = "p") -> dict[str, Any]:
    return {"type": "executing", "data": {"node": node, "prompt_id": prompt_id}}


def test_progress_line_names_the_node_step_elapsed_and_time_left() -> None:
    prompt = p2p()
    tracker = rw.ProgressTracker(rw.api_titles(prompt), {"8": 10, "9": 10}, start=0.0, prompt_id="p")
    assert tracker.line(3.0) == "waiting for ComfyUI | 0:03 elapsed"
    assert tracker.feed(executing("8"), 10.0) == "node"
    assert tracker.line(10.0) == "SPDInv inversion | 0:10 elapsed"
    assert tracker.feed(progress("8", 2, 10), 14.0) == "step"
    # 2 s a step: 8 steps left here, and the edit's 10 at the mean pace
    assert tracker.line(14.0) == "SPDInv inversion | step 2/10 | 0:14 elapsed | ~0:36 left"
    tracker.feed(progress("8", 10, 10), 30.0)
    tracker.feed(executing("9"), 30.0)
    assert tracker.line(30.0) == "P2P edit | 0:30 elapsed | ~0:20 left"  # its 10 planned steps at 2 s
    tracker.feed(progress("9", 5, 10), 35.0)
    assert tracker.line(35.0) == "P2P edit | step 5/10 | 0:35 elapsed | ~0:05 left"
    tracker.feed(progress("9", 10, 10), 40.0)
    tracker.feed(executing("10"), 40.0)
    assert tracker.line(41.0) == "Decode edit | 0:41 elapsed"  # no planned step left: no estimate
    tracker.feed(executing(None), 42.0)
    assert tracker.line(42.0) == "done, collecting the images | 0:42 elapsed"


def test_progress_ignores_other_prompts_and_skips_cached_nodes() -> None:
    tracker = rw.ProgressTracker({"8": "Invert", "9": "Edit"}, {"8": 10, "9": 10}, start=0.0, prompt_id="p")
    assert tracker.feed(progress("8", 5, 10, prompt_id="other"), 1.0) is None
    tracker.feed({"type": "execution_cached", "data": {"nodes": ["8"], "prompt_id": "p"}}, 1.0)
    tracker.feed(executing("9"), 1.0)
    tracker.feed(progress("9", 5, 10), 6.0)
    assert tracker.line(6.0).endswith("~0:05 left")


def test_progress_rewrites_one_line_within_the_terminal_width() -> None:
    out = io.StringIO()
    display = rw.ProgressDisplay(out, tty=True, columns=15)
    display.show("Edit | step 10/20", 0.0, milestone=True)
    display.show("Edit | 11/20", 0.1)
    display.close()
    assert out.getvalue() == "\rEdit | step 10\rEdit | 11/20  \n"  # cut to the terminal, the old line blanked


def test_progress_prints_plain_lines_at_milestones_and_every_15_seconds_otherwise() -> None:
    out = io.StringIO()
    display = rw.ProgressDisplay(out, tty=False)
    for now, line, milestone in [(0, "a", True), (5, "a 1", False), (16, "a 2", False), (17, "a 3", False),
                                 (18, "a 3/3", True)]:
        display.show(line, now, milestone)
    display.close()
    assert out.getvalue() == "a\na 2\na 3/3\n"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    size = bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n)
    return bytes([(0x80 if fin else 0) | opcode]) + size + payload


def serve_once(response: bytes, frames: list[bytes], received: list[bytes]) -> tuple[int, threading.Thread]:
    """A one-connection server: answers the handshake (``response`` may use ``{accept}``), sends ``frames``,
    and keeps what the client sends back."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(response.replace(b"{accept}", accept) + b"".join(frames))
            conn.settimeout(5)
            try:
                while chunk := conn.recv(4096):
                    received.append(chunk)
            except OSError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_websocket_reads_fragmented_text_skips_binary_and_answers_pings() -> None:
    ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    long = json.dumps({"type": "progress", "data": {"text": "x" * 300}}).encode()
    frames = [frame(1, b'{"type": ', fin=False), frame(0, b'"status"}'), frame(2, b"\x89PNG"),
              frame(9, b"hi"), frame(1, long), frame(8, b"")]
    received: list[bytes] = []
    port, thread = serve_once(ok, frames, received)
    ws = rw.WebSocket.connect("127.0.0.1", port, "/ws?clientId=x")
    messages = [m for m in ws.messages(idle=0.05) if m is not None]
    ws.close()
    thread.join(5)
    assert messages == ['{"type": "status"}', long.decode()]
    pong = b"".join(received)
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2  # a masked pong with the ping's payload
    assert bytes(b ^ pong[2 + i % 4] for i, b in enumerate(pong[6:8])) == b"hi"


def test_websocket_refused_handshake_is_an_error() -> None:
    port, thread = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", [], [])
    with pytest.raises(rw.WebSocketError, match="404"):
        rw.WebSocket.connect("127.0.0.1", port, "/ws")
    thread.join(5)


@pytest.mark.skipif(os.name != "posix", reason="stand-in interpreters are shell scripts")
@pytest.mark.parametrize("answer,gpu", [("echo cuda", True), ("echo mps", True), ("echo cpu", False),
                                        ("echo 'No module named torch' >&2; exit 1", False)])
def test_the_device_is_what_comfyuis_interpreter_sees(tmp_path: Path, answer: str, gpu: bool) -> None:
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\n{answer}\n")
    python.chmod(0o755)
    device = rw.detect_device(str(python))
    assert device.gpu is gpu
    assert device.notice.startswith("device: GPU (" if gpu else "device: CPU (")
    assert ("--cpu forces" if gpu else "--gpu forces") in device.notice
    if "torch" in answer:
        assert "No module named torch" in device.notice


def test_device_and_preset_flags_default_to_automatic() -> None:
    parse = rw.make_parser().parse_args
    assert (parse(["w.json"]).gpu, parse(["w.json"]).quick, parse(["w.json"]).timeout) == (None, None, None)
    assert (parse(["w.json", "--cpu"]).gpu, parse(["w.json", "--gpu"]).gpu) == (False, True)
    assert (parse(["w.json", "--full"]).quick, parse(["w.json", "--quick"]).quick) == (False, True)
    with pytest.raises(SystemExit):
        parse(["w.json", "--cpu", "--gpu"])


def test_the_runner_imports_no_torch() -> None:
    import subprocess

    code = "import sys, tools.run_workflow; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=P2P.parents[2]).returncode == 0


class LiveProcess:
    returncode = None

    def poll(self) -> None:
        return None


def test_waiting_outlasts_a_poll_that_times_out_while_the_server_is_alive(tmp_path: Path) -> None:
    from spdinv_pack.tools import comfy_server

    (tmp_path / "main.py").write_text("")
    server = comfy_server.ComfyServer(tmp_path)
    server.port, server.proc = 1, LiveProcess()
    answers: list[Any] = [TimeoutError("timed out"), {"status": {"completed": True}}]

    def history(prompt_id: str) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    server.history = history  # type: ignore[method-assign]
    assert server.wait("p", timeout=10, poll=0) == {"status": {"completed": True}}
    answers[:] = [ConnectionRefusedError("refused")]
    with pytest.raises(comfy_server.ComfyServerError, match="cannot reach ComfyUI"):
        server.wait("p", timeout=10, poll=0)
