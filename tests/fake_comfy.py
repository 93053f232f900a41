"""An in-process stand-in for a ComfyUI server's HTTP API, for testing the PIE harness's dispatcher without ComfyUI.

It answers what the harness asks: ``/object_info`` (the nodes the PIE graphs use, no defaults), ``/system_stats``
(with ``argv``), ``/upload/image``, ``/prompt``, ``/history/<id>``, ``/queue``, ``/view`` and ``/interrupt``.
Prompts run one at a time in a thread, ``seconds`` each; the "edit" saved is a few bytes naming the server and the
prompt's ``filename_prefix``, so a test can tell who made which file. ``die_after=k``: once its k-th prompt has
started (and the edits it finished have been fetched), the server stops answering (its socket closed, so
connections are refused) without finishing that prompt.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NODES = ("CheckpointLoaderSimple", "LoadImage", "ImageScale", "VAEEncode", "CLIPTextEncode", "P2PAttentionControl",
         "MasaCtrlMutualAttention", "PNPInjection", "SPDInvInvert", "SPDInvEditSampler", "VAEDecode", "SaveImage")


class FakeComfy:
    """One fake server on a free loopback port; ``url`` once started. Records what it was sent."""

    def __init__(self, name: str, *, seconds: float = 0.05, die_after: int | None = None,
                 nodes: tuple[str, ...] = NODES, checkpoints: tuple[str, ...] = ("x.safetensors",),
                 argv: tuple[str, ...] = ("main.py", "--force-fp32"), defaults: dict[str, Any] | None = None) -> None:
        self.name = name
        self.seconds = seconds
        self.die_after = die_after
        self.info = {n: {"input": {"required": {}}} for n in nodes}
        if "CheckpointLoaderSimple" in self.info:
            self.info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] = [list(checkpoints), {}]
        for class_type, inputs in (defaults or {}).items():
            self.info[class_type]["input"]["optional"] = {k: ["FLOAT", {"default": v}] for k, v in inputs.items()}
        self.argv = list(argv)
        self.uploads: dict[str, bytes] = {}
        self.upload_count = 0
        self.prompts: list[dict[str, Any]] = []
        self.finished: list[str] = []
        self.viewed: set[tuple[str, str]] = set()
        self.history: dict[str, Any] = {}
        self.pending: list[str] = []
        self.running: str | None = None
        self.files: dict[tuple[str, str], bytes] = {}
        self.dead = threading.Event()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeComfy:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._execute, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.die()

    def die(self) -> None:
        """Stop answering: requests from now on are closed unanswered, and once the socket is closed (within half a
        second) connections are refused."""
        if not self.dead.is_set():
            self.dead.set()
            with self._work:
                self._work.notify_all()
            threading.Thread(target=self._close, daemon=True).start()

    def _close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _execute(self) -> None:
        started = 0
        while not self.dead.is_set():
            with self._work:
                while not self.pending and not self.dead.is_set():
                    self._work.wait()
                if self.dead.is_set():
                    return
                prompt_id = self.running = self.pending.pop(0)
            started += 1
            if self.die_after is not None and started >= self.die_after:
                deadline = time.monotonic() + 10  # the edits it finished are fetched first: deterministic tests
                while len(self.viewed) < len(self.finished) and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.die()
                return
            t0 = time.time()
            time.sleep(self.seconds)
            prompt = next(p for p in self.prompts if p["id"] == prompt_id)["prompt"]
            prefix = next(n["inputs"]["filename_prefix"] for n in prompt.values() if n["class_type"] == "SaveImage")
            subfolder, _, stem = prefix.rpartition("/")
            filename = f"{stem}_00001_.png"
            with self._work:
                self.files[(subfolder, filename)] = f"{self.name}:{prefix}".encode()
                self.history[prompt_id] = {
                    "outputs": {"9": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}},
                    "status": {"status_str": "success", "completed": True, "messages": [
                        ["execution_start", {"timestamp": int(t0 * 1000)}],
                        ["execution_success", {"timestamp": int(time.time() * 1000)}]]}}
                self.finished.append(prefix)
                self.running = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, payload: Any, status: int = 200) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if fake.dead.is_set():
                    self.close_connection = True
                    return
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                with fake._lock:
                    if url.path == "/object_info":
                        return self._send(fake.info)
                    if url.path.startswith("/object_info/"):
                        node = url.path.rsplit("/", 1)[1]
                        return self._send({node: fake.info[node]} if node in fake.info else {})
                    if url.path == "/system_stats":
                        return self._send({"system": {"argv": fake.argv}, "devices": []})
                    if url.path.startswith("/history/"):
                        prompt_id = url.path.rsplit("/", 1)[1]
                        return self._send({prompt_id: fake.history[prompt_id]} if prompt_id in fake.history else {})
                    if url.path == "/queue":
                        return self._send({"queue_running": [[0, fake.running, {}, {}, []]] if fake.running else [],
                                           "queue_pending": [[0, p, {}, {}, []] for p in fake.pending]})
                    if url.path == "/view":
                        key = (query.get("subfolder", ""), query.get("filename", ""))
                        data = fake.files.get(key)
                        fake.viewed.add(key)
                        return self._send(data) if data is not None else self._send({}, 404)
                return self._send({}, 404)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self._body()
                if fake.dead.is_set():
                    self.close_connection = True
                    return
                if self.path == "/upload/image":
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
                    fields = {part.get_param("name", header="content-disposition"): part
                              for part in message.iter_parts()}
                    image = fields["image"]
                    subfolder = fields["subfolder"].get_content().strip()
                    with fake._lock:
                        fake.uploads[f"{subfolder}/{image.get_filename()}"] = image.get_content()
                        fake.upload_count += 1
                    return self._send({"name": image.get_filename(), "subfolder": subfolder, "type": "input"})
                if self.path == "/prompt":
                    prompt = json.loads(body)["prompt"]
                    images = [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"]
                    with fake._work:
                        if any(name not in fake.uploads for name in images):
                            return self._send({"error": {"message": f"not uploaded: {images}"}}, 400)
                        prompt_id = uuid.uuid4().hex
                        fake.prompts.append({"id": prompt_id, "prompt": prompt})
                        fake.pending.append(prompt_id)
                        fake._work.notify_all()
                    return self._send({"prompt_id": prompt_id, "number": 0, "node_errors": {}})
                if self.path == "/interrupt":
                    return self._send({})
                return self._send({}, 404)

        return Handler
