"""ComfyUI servers that the PIE harness hands edits to, and the dispatcher that keeps them busy.

:class:`ComfyClient` talks to one running ComfyUI over HTTP: it checks that the server can run the edits (the
nodes, the checkpoint, float32 where asked), uploads each photo once (``/upload/image``; not for a server
started on the PIE folder itself), queues a prompt and fetches the image it saved (``/view``), so a server on
another machine works as well as the one a run starts. :func:`dispatch` runs jobs on several servers with
``in_flight`` prompts queued on each (the next one is queued while one runs, so a server never waits for the
harness between edits). A server that goes away (connection refused or reset, no answer for ``unreachable_s``,
or a prompt it forgot) is dropped for the rest of the run and its jobs in flight go back to the queue for the
servers left; when none is left the run stops with :class:`AllServersGone`. There is no other scheduling.

Standard library only.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...tools.comfy_server import (
    ComfyServer,
    ComfyServerError,
    PromptTimeout,
    PromptValidationError,
    format_node_errors,
)

UPLOAD_FOLDER = "pie-bench"
"""Subfolder of a server's input folder that the photos are uploaded under (their PIE path below it)."""
FP32_FLAG = "--force-fp32"
"""The flag a server must have been started with for ``--precision fp32``."""

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""URL opener that ignores ``http_proxy`` & co.: the servers are on the cluster's own network."""


class ServerGone(ComfyServerError):
    """A server stopped answering: connection refused or reset, no answer for a while, or a forgotten prompt."""


class ServerLate(ComfyServerError):
    """One request to a server timed out (it may still be busy; :meth:`ComfyClient.wait` asks again)."""


class AllServersGone(ComfyServerError):
    """Every server went away before the jobs were done."""


@dataclass
class Edit:
    """One finished prompt: the saved image's bytes and the seconds the server spent on it."""

    png: bytes
    seconds: float


class ComfyClient:
    """A running ComfyUI at ``url`` (``http://host:port``), named ``label`` in logs and records.

    ``upload``: photos are uploaded (False for a server whose input folder is the PIE folder's
    ``annotation_images``). ``request_timeout``: seconds for one HTTP request; ``unreachable_s``: how long polls
    may go unanswered before the server counts as gone; ``poll``: seconds between polls.
    """

    def __init__(self, url: str, *, label: str | None = None, upload: bool = True, request_timeout: float = 60.0,
                 unreachable_s: float = 120.0, poll: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.label = label or self.url
        self.upload = upload
        self.request_timeout = request_timeout
        self.unreachable_s = unreachable_s
        self.poll = poll
        self.client_id = uuid.uuid4().hex
        self._uploaded: dict[Path, str] = {}
        self._upload_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ComfyClient({self.label})"

    # ------------------------------------------------------------------ HTTP

    def request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        """``(status, body)`` of one request; HTTP errors are returned. Raises :class:`ServerLate` on a timeout and
        :class:`ServerGone` when the connection fails (refused, reset, closed mid-answer)."""
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=timeout or self.request_timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except TimeoutError as e:
            raise ServerLate(f"{self.label}: no answer to {method} {path} in {timeout or self.request_timeout:.0f} s")\
                from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ServerLate(f"{self.label}: no answer to {method} {path}") from e
            raise ServerGone(f"{self.label}: {e.reason}") from e
        except (OSError, http.client.HTTPException) as e:
            raise ServerGone(f"{self.label}: {type(e).__name__}: {e}") from e

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        """``GET path`` as JSON; a status other than 200, or a body that is not JSON, is a :class:`ComfyServerError`."""
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyServerError(f"{self.label}: GET {path} -> HTTP {status}: {body[:300]!r}")
        try:
            return json.loads(body)
        except json.JSONDecodeError as e:
            raise ComfyServerError(f"{self.label}: GET {path} did not answer JSON: {body[:300]!r}") from e

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        """``POST path`` with a JSON body; ``(status, parsed JSON or text)``."""
        status, body = self.request("POST", path, json.dumps(payload).encode("utf-8"), "application/json")
        text = body.decode("utf-8", errors="replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    # ------------------------------------------------------------------ start-up checks

    def check(self, nodes: Iterable[str], checkpoint: str, precision: str) -> dict[str, Any]:
        """The server's ``/object_info``, once it is known to run the edits: it answers, has every node in
        ``nodes`` (the pack's among them), lists ``checkpoint``, and for ``precision`` fp32 was started with
        ``--force-fp32``. Each failure names the server."""
        try:
            info = self.get_json("/object_info", timeout=max(self.request_timeout, 120.0))
            argv = (self.get_json("/system_stats").get("system") or {}).get("argv")
        except (ServerGone, ServerLate) as e:
            raise ComfyServerError(f"server {self.label} does not answer ({e}); is it running, and is the URL "
                                   "right?") from e
        missing = sorted(n for n in set(nodes) if n not in info)
        if missing:
            raise ComfyServerError(f"server {self.label} lacks the nodes {', '.join(missing)}: install the SPDInv "
                                   "pack in its custom_nodes (and check its log for an import failure)")
        checkpoints = combo_options(info, "CheckpointLoaderSimple", "ckpt_name")
        if checkpoint not in checkpoints:
            listed = ", ".join(checkpoints[:8]) + (" …" if len(checkpoints) > 8 else "")
            raise ComfyServerError(f"server {self.label} does not list the checkpoint {checkpoint!r} (it lists: "
                                   f"{listed or 'none'}); give --checkpoint as the servers name it")
        if precision == "fp32" and isinstance(argv, list) and FP32_FLAG not in argv:
            raise ComfyServerError(f"server {self.label} was started without {FP32_FLAG}: --precision fp32 needs "
                                   "every model in float32 (start it with --force-fp32 --fp32-vae --fp32-text-enc), "
                                   "or pass --precision auto")
        return info

    # ------------------------------------------------------------------ one edit

    def image_name(self, photo: Path, relative_path: str) -> str:
        """What ``LoadImage.image`` is given for a PIE photo on this server: its path under the input folder
        (``relative_path``, ``upload`` off) or the name of an upload under :data:`UPLOAD_FOLDER`, uploaded once.

        Uploads never overwrite: ComfyUI keeps an existing file with the same content and gives another upload of
        the same name another name, so photos that another worker is reading are never rewritten.
        """
        if not self.upload:
            return relative_path
        with self._upload_lock:
            if photo not in self._uploaded:
                folder, name = relative_path.rpartition("/")[::2]
                subfolder = f"{UPLOAD_FOLDER}/{folder}".rstrip("/")
                body, content_type = multipart({"subfolder": subfolder, "type": "input"}, "image", name,
                                               photo.read_bytes())
                try:
                    status, raw = self.request("POST", "/upload/image", body, content_type)
                except ServerLate as e:
                    raise ServerGone(str(e)) from e
                if status != 200:
                    raise ComfyServerError(f"{self.label}: uploading {photo} -> HTTP {status}: {raw[:300]!r}")
                answer = json.loads(raw)
                sub = answer.get("subfolder") or ""
                self._uploaded[photo] = f"{sub}/{answer['name']}" if sub else answer["name"]
            return self._uploaded[photo]

    def submit(self, prompt: Mapping[str, Any]) -> str:
        """Queue an API prompt; its ``prompt_id``. A prompt the server rejects, or accepts with node errors, is a
        :class:`PromptValidationError` (the edit's fault, not the server's)."""
        status, payload = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        payload = payload if isinstance(payload, dict) else {"error": payload}
        node_errors = payload.get("node_errors") or {}
        if status != 200 or node_errors or "prompt_id" not in payload:
            error = payload.get("error")
            head = error.get("message", error) if isinstance(error, dict) else error
            msg = f"{self.label}: prompt rejected (HTTP {status}): {head}"
            if node_errors:
                msg += "\n" + format_node_errors(node_errors, prompt)
            raise PromptValidationError(msg, error, node_errors)
        return str(payload["prompt_id"])

    def wait(self, prompt_id: str, timeout: float) -> dict[str, Any]:
        """Poll until the prompt finishes; its history entry.

        ``timeout`` counts from when the prompt leaves the server's pending queue (with prompts queued ahead of it,
        its wait for them is not its own time); past it the prompt is interrupted and :class:`PromptTimeout`
        raised. Raises :class:`ServerGone` when polls go unanswered for ``unreachable_s`` or the server no longer
        knows the prompt (restarted), an :class:`ExecutionError` when the prompt failed.
        """
        answered = time.monotonic()
        started: float | None = None
        unknown = 0
        while True:
            now = time.monotonic()
            try:
                entry = (self.get_json(f"/history/{urllib.parse.quote(prompt_id, safe='')}") or {}).get(prompt_id)
                queued = running = False
                if entry is None:
                    queue = self.get_json("/queue")
                    queued = any(_prompt_id(q) == prompt_id for q in queue.get("queue_pending") or [])
                    running = any(_prompt_id(q) == prompt_id for q in queue.get("queue_running") or [])
                answered = now
            except ServerLate as e:
                if now - answered > self.unreachable_s:
                    raise ServerGone(f"{self.label}: no answer for {self.unreachable_s:.0f} s") from e
                time.sleep(self.poll)
                continue
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise ComfyServer.execution_error(entry)
                if status.get("completed") or status.get("status_str") == "success":
                    return entry
            unknown = unknown + 1 if entry is None and not queued and not running else 0
            if unknown >= 3:
                raise ServerGone(f"{self.label}: the server no longer knows prompt {prompt_id} (restarted?)")
            if not queued and started is None:
                started = now
            if started is not None and now - started > timeout:
                self.post_json("/interrupt", {"prompt_id": prompt_id})
                raise PromptTimeout(f"{self.label}: prompt {prompt_id} did not finish within {timeout:.0f} s "
                                    "(interrupted)")
            time.sleep(self.poll)

    def saved_image(self, entry: Mapping[str, Any]) -> bytes:
        """The one image a finished prompt saved (``/view``); another count is a :class:`ComfyServerError`."""
        images = [image for node in (entry.get("outputs") or {}).values() for image in node.get("images") or []
                  if isinstance(image, dict) and image.get("type", "output") == "output"]
        if len(images) != 1:
            raise ComfyServerError(f"{self.label}: expected one saved edit, the server listed {len(images)}")
        query = urllib.parse.urlencode({"filename": images[0]["filename"], "subfolder": images[0].get("subfolder", ""),
                                        "type": "output"})
        status, body = self.request("GET", f"/view?{query}")
        if status != 200:
            raise ComfyServerError(f"{self.label}: GET /view?{query} -> HTTP {status}")
        return body

    def edit(self, prompt: Mapping[str, Any], timeout: float) -> Edit:
        """Run one edit's prompt: the saved image and the server's execution time (from its history's
        timestamps; the wall time since it started where they are missing). A request other than a poll that
        goes unanswered (``request_timeout``) counts as the server gone."""
        t0 = time.monotonic()
        try:
            entry = self.wait(self.submit(prompt), timeout)
            png = self.saved_image(entry)
        except ServerLate as e:
            raise ServerGone(str(e)) from e
        return Edit(png, execution_seconds(entry) or time.monotonic() - t0)


def _prompt_id(queue_item: Any) -> Any:
    """The prompt id of a ``/queue`` entry (``[number, prompt_id, prompt, ...]``)."""
    return queue_item[1] if isinstance(queue_item, list) and len(queue_item) > 1 else None


def execution_seconds(entry: Mapping[str, Any]) -> float | None:
    """Seconds from ``execution_start`` to ``execution_success`` in a history entry's messages, or None."""
    stamps = {event: data.get("timestamp") for event, data in (entry.get("status") or {}).get("messages") or []
              if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000.0 if isinstance(start, (int, float)) and isinstance(end, (int, float)) else None


def combo_options(object_info: Mapping[str, Any], class_type: str, name: str) -> list[Any]:
    """The options of a combo input (the old ``[[options], {...}]`` form and ``["COMBO", {"options": ...}]``)."""
    inputs = (object_info.get(class_type) or {}).get("input") or {}
    spec = (inputs.get("required") or {}).get(name) or (inputs.get("optional") or {}).get(name) or []
    if spec and isinstance(spec[0], list):
        return list(spec[0])
    if len(spec) > 1 and isinstance(spec[1], Mapping):
        return list(spec[1].get("options") or [])
    return []


def multipart(fields: Mapping[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with text ``fields`` and one file; ``(body, content type)``."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ---------------------------------------------------------------------------------------------- the dispatcher


@dataclass
class Job:
    """One unit of work; ``lost_on`` lists the servers that went away while running it."""

    key: Any
    payload: Any = None
    lost_on: list[str] = field(default_factory=list)


class _Pool:
    """The shared queue: pending jobs, the servers still up, and why the others went."""

    def __init__(self, jobs: Iterable[Job], clients: Sequence[ComfyClient], log: Callable[[str], None]) -> None:
        self.pending: deque[Job] = deque(jobs)
        self.unfinished = len(self.pending)
        self.alive = set(clients)
        self.gone: dict[str, str] = {}
        self.fatal: BaseException | None = None
        self.log = log
        self.cond = threading.Condition()

    def take(self, client: ComfyClient) -> Job | None:
        """The next job for ``client``, waiting while others' jobs are in flight (one may come back); None when
        all are done, the client is gone, or the run stops."""
        with self.cond:
            while True:
                if self.fatal is not None or client not in self.alive or self.unfinished == 0:
                    return None
                if self.pending:
                    return self.pending.popleft()
                self.cond.wait()

    def finish(self) -> None:
        with self.cond:
            self.unfinished -= 1
            self.cond.notify_all()

    def lose(self, client: ComfyClient, job: Job, reason: str) -> None:
        """``client`` went away while running ``job``: drop the client, put the job back at the queue's head."""
        with self.cond:
            job.lost_on.append(client.label)
            self.pending.appendleft(job)
            if client in self.alive:
                self.alive.discard(client)
                self.gone[client.label] = reason
                left = ", ".join(sorted(c.label for c in self.alive)) or "none"
                self.log(f"server {client.label} is gone ({reason}); its edits in flight go back to the queue "
                         f"(servers left: {left})")
            self.cond.notify_all()

    def stop(self, error: BaseException) -> None:
        with self.cond:
            if self.fatal is None:
                self.fatal = error
            self.cond.notify_all()


def _worker(pool: _Pool, client: ComfyClient, run_job: Callable[[ComfyClient, Job], None]) -> None:
    while (job := pool.take(client)) is not None:
        try:
            run_job(client, job)
        except ServerGone as e:
            pool.lose(client, job, str(e).removeprefix(f"{client.label}: "))
            continue
        except BaseException as e:  # noqa: B036 - a bug in run_job stops the run, and is raised by dispatch
            pool.stop(e)
            return
        pool.finish()


def dispatch(clients: Sequence[ComfyClient], jobs: Iterable[Job], run_job: Callable[[ComfyClient, Job], None],
             in_flight: int = 2, log: Callable[[str], None] = print) -> None:
    """Run every job on the servers, ``in_flight`` at a time on each.

    ``run_job(client, job)`` does one job on one server, in a worker thread; it raises :class:`ServerGone` when the
    server went away (the job goes back to the queue, the server is dropped) and handles the job's own failures
    itself (any other exception stops the run and is raised here). Raises :class:`AllServersGone` when every
    server went away with jobs left.
    """
    if not clients:
        raise ValueError("dispatch: no servers")
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, not {in_flight}")
    pool = _Pool(jobs, clients, log)
    threads = [threading.Thread(target=_worker, args=(pool, c, run_job), daemon=True, name=f"pie {c.label} {n}")
               for c in clients for n in range(in_flight)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except BaseException as e:  # Ctrl-C: hand out nothing more, leave what is in flight
        pool.stop(e)
        raise
    if pool.fatal is not None:
        raise pool.fatal
    if pool.unfinished:
        why = "; ".join(f"{label}: {reason}" for label, reason in pool.gone.items())
        raise AllServersGone(f"all {len(clients)} servers are gone with {pool.unfinished} edits not made ({why}); "
                             "restart them and rerun: finished edits are kept")
