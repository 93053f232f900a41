"""A throw-away ComfyUI server for one run, shared by the headless runner, host tests and benchmarks.

``ComfyServer`` starts ``<python> <ComfyUI>/main.py`` on a free loopback port with its own temporary
input/output/temp/user directories, loads this repository as a custom node pack through an
extra-model-paths YAML (so the ComfyUI checkout is never modified), waits until the HTTP API answers,
checks that the pack imported, and always stops the process on exit.

Standard library only, so it runs under whatever Python the ComfyUI install uses.

Example::

    with ComfyServer("/opt/ComfyUI", require_nodes=["SPDInvInvert"]) as srv:
        name = srv.upload_image("cat.png")
        history = srv.run(api_prompt, timeout=600)
        print(srv.output_images(history))
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK_NAME = "spdinv-edit"
"""Folder name under which the pack is linked into ``custom_nodes`` (also its module name in ComfyUI)."""

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""URL opener that ignores ``http_proxy`` & co.: the server is always on loopback."""


class ComfyServerError(RuntimeError):
    """Base class for every failure reported by :class:`ComfyServer`."""


class ServerStartError(ComfyServerError):
    """The server process died or did not answer before the start-up timeout."""


class PackImportError(ComfyServerError):
    """ComfyUI started but the pack (or one of the required nodes) did not load."""


class PromptValidationError(ComfyServerError):
    """``POST /prompt`` rejected the prompt; ``node_errors`` holds the server's per-node details."""

    def __init__(self, message: str, error: Any = None, node_errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.node_errors: dict[str, Any] = dict(node_errors or {})


class ExecutionError(ComfyServerError):
    """The prompt ran and failed; ``details`` is the ``execution_error`` message from the history."""

    def __init__(
        self, message: str, details: Mapping[str, Any] | None = None, history: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})
        self.history: dict[str, Any] = dict(history or {})


class ExecutionInterrupted(ExecutionError):
    """The prompt was interrupted (``POST /interrupt``) before it finished."""


class PromptTimeout(ComfyServerError, TimeoutError):
    """The prompt did not finish within the timeout given to :meth:`ComfyServer.wait`."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def supported_cli_flags(comfyui_path: str | os.PathLike[str]) -> set[str]:
    """The ``--flags`` declared in the checkout's ``comfy/cli_args.py``.

    Used to pass optional flags (``--database-url``, ``--user-directory``...) only to ComfyUI
    versions that know them, since an unknown flag makes ``main.py`` exit at once.
    """
    path = Path(comfyui_path) / "comfy" / "cli_args.py"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return set()
    return set(re.findall(r"""add_argument\(\s*["'](--[A-Za-z0-9][A-Za-z0-9-]*)["']""", text))


def write_extra_model_paths(
    path: Path, folders: Mapping[str, Sequence[str | os.PathLike[str]]], section: str = "spdinv_runner"
) -> Path:
    """Write an ``extra_model_paths.yaml`` registering ``folders`` (folder kind -> absolute paths).

    Written by hand (ComfyUI parses it with PyYAML; we do not need it): every kind is a literal block
    scalar with one absolute path per line, which is exactly how ComfyUI splits multi-path entries.
    """
    lines = [f"{section}:"]
    for kind, paths in folders.items():
        resolved = [str(Path(p).resolve()) for p in paths]
        if not resolved:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_]+", kind):
            raise ValueError(f"invalid model folder kind {kind!r}")
        for p in resolved:
            if "\n" in p or "\r" in p:
                raise ValueError(f"path contains a newline: {p!r}")
        lines.append(f"    {kind}: |")
        lines.extend(f"        {p}" for p in resolved)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def format_node_errors(node_errors: Mapping[str, Any], prompt: Mapping[str, Any] | None = None) -> str:
    """Render ``node_errors`` from ``POST /prompt`` as readable lines (one per error)."""
    out: list[str] = []
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type") if isinstance(entry, dict) else None
        if not class_type and prompt and node_id in prompt:
            class_type = prompt[node_id].get("class_type")
        title = None
        if prompt and node_id in prompt:
            title = (prompt[node_id].get("_meta") or {}).get("title")
        label = f"node {node_id} ({class_type}{', ' + repr(title) if title and title != class_type else ''})"
        errors = entry.get("errors", []) if isinstance(entry, dict) else []
        if not errors:
            out.append(f"  {label}: {entry}")
        for err in errors:
            msg = err.get("message", "")
            details = err.get("details", "")
            out.append(f"  {label}: {msg}" + (f": {details}" if details else ""))
    return "\n".join(out)


class ComfyServer:
    """One ComfyUI server process with private directories; use it as a context manager.

    Args:
        comfyui_path: ComfyUI checkout (the folder holding ``main.py``); defaults to ``$COMFYUI_PATH``.
        python: interpreter that runs ComfyUI; defaults to ``$COMFYUI_PYTHON`` or this interpreter.
        pack_dir: node pack to load (linked into a private ``custom_nodes`` folder); ``None`` loads none.
        pack_name: folder/module name of that link.
        extra_packs: more node folders to link next to it (``{folder name: path}``; tests load test-only nodes).
        gpu: if False (default) ComfyUI runs with ``--cpu``.
        checkpoints / loras / clip_vision: extra model folders to register.
        extra_folders: any other ``{kind: [folders]}`` to register (``vae``, ``embeddings``...).
        require_nodes: node ids that must be registered after start (checked with ``/object_info``).
        only_this_pack: skip every other custom node pack (``--disable-all-custom-nodes`` + whitelist).
        workdir: where to put the YAML, log and directories; a fresh temp dir by default.
        output_dir / input_dir: override the private output / input directories.
        keep_workdir: keep the temp dir after stop; ``None`` (default) keeps it only after a
            server-side failure (start-up, pack import, crash), whose message names the log file.
        startup_timeout: seconds to wait for ``/system_stats``.
        extra_args: more ComfyUI command-line arguments (e.g. ``["--force-fp32"]``).
        env: extra environment variables for the server process.
    """

    def __init__(
        self,
        comfyui_path: str | os.PathLike[str] | None = None,
        *,
        python: str | os.PathLike[str] | None = None,
        pack_dir: str | os.PathLike[str] | None = REPO_ROOT,
        pack_name: str = DEFAULT_PACK_NAME,
        extra_packs: Mapping[str, str | os.PathLike[str]] | None = None,
        gpu: bool = False,
        checkpoints: Iterable[str | os.PathLike[str]] = (),
        loras: Iterable[str | os.PathLike[str]] = (),
        clip_vision: Iterable[str | os.PathLike[str]] = (),
        extra_folders: Mapping[str, Iterable[str | os.PathLike[str]]] | None = None,
        require_nodes: Iterable[str] = (),
        only_this_pack: bool = False,
        workdir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        keep_workdir: bool | None = None,
        startup_timeout: float = 300.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        path = comfyui_path if comfyui_path is not None else os.environ.get("COMFYUI_PATH")
        if not path:
            raise ComfyServerError("no ComfyUI checkout given (argument or $COMFYUI_PATH)")
        self.comfyui_path = Path(path).expanduser().resolve()
        if not (self.comfyui_path / "main.py").is_file():
            raise ComfyServerError(f"{self.comfyui_path} is not a ComfyUI checkout (no main.py)")
        py = str(python or os.environ.get("COMFYUI_PYTHON") or sys.executable)
        # a relative interpreter path would be looked up from ComfyUI's folder (the child's cwd);
        # abspath, not resolve(): a venv's python is a symlink that must not be followed
        self.python = os.path.abspath(py) if os.sep in py or (os.altsep and os.altsep in py) else py
        self.pack_dir = Path(pack_dir).resolve() if pack_dir is not None else None
        self.pack_name = pack_name
        self.extra_packs = {name: Path(p).resolve() for name, p in (extra_packs or {}).items()}
        self.gpu = gpu
        self.folders: dict[str, list[str]] = {}
        for kind, paths in (
            ("checkpoints", checkpoints),
            ("loras", loras),
            ("clip_vision", clip_vision),
            *((extra_folders or {}).items()),
        ):
            for p in paths:
                if not Path(p).is_dir():
                    raise ComfyServerError(f"{kind} folder {p} does not exist")
                self.folders.setdefault(kind, []).append(str(Path(p).resolve()))
        self.require_nodes = list(require_nodes)
        self.only_this_pack = only_this_pack
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._given_output = Path(output_dir) if output_dir is not None else None
        self._given_input = Path(input_dir) if input_dir is not None else None
        self.keep_workdir = keep_workdir
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.client_id = uuid.uuid4().hex
        self._log_file: Any = None
        self.start_time = 0.0
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # keep the log for server-side trouble (start-up, crash); prompt errors carry their own details
        server_trouble = isinstance(exc, ComfyServerError) and not isinstance(
            exc, (PromptValidationError, ExecutionError, PromptTimeout)
        )
        self.stop(failed=server_trouble)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        if self.port is None:
            raise ComfyServerError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """File that receives the server's stdout and stderr."""
        return self._dir() / "comfyui.log"

    @property
    def output_dir(self) -> Path:
        """ComfyUI's ``--output-directory`` for this run."""
        return self._given_output or self._dir() / "output"

    @property
    def input_dir(self) -> Path:
        """ComfyUI's ``--input-directory`` for this run."""
        return self._given_input or self._dir() / "input"

    @property
    def temp_dir(self) -> Path:
        """Where PreviewImage & co. write (ComfyUI appends ``temp`` to ``--temp-directory``)."""
        return self._dir() / "tmp" / "temp"

    def _dir(self) -> Path:
        if self.workdir is None:
            raise ComfyServerError("server not started")
        return self.workdir

    def command(self) -> list[str]:
        """The command line that starts the server (needs :attr:`workdir` and :attr:`port`)."""
        flags = supported_cli_flags(self.comfyui_path)

        def has(flag: str) -> bool:
            return not flags or flag in flags  # unreadable cli_args.py: assume a current ComfyUI

        wd = self._dir()
        cmd = [
            self.python,
            str(self.comfyui_path / "main.py"),
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--extra-model-paths-config",
            str(wd / "extra_model_paths.yaml"),
            "--output-directory",
            str(self.output_dir),
        ]
        if not self.gpu:
            cmd.append("--cpu")
        optional = [
            ("--input-directory", str(self.input_dir)),
            ("--temp-directory", str(wd / "tmp")),
            ("--user-directory", str(wd / "user")),
            ("--database-url", f"sqlite:///{(wd / 'user' / 'comfyui.db').as_posix()}"),
        ]
        for flag, value in optional:
            if has(flag):
                cmd += [flag, value]
        if has("--disable-metadata"):
            cmd.append("--disable-metadata")
        if self.only_this_pack and self.pack_dir is not None:
            cmd += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", self.pack_name]
        cmd += self.extra_args
        return cmd

    def _prepare_workdir(self) -> None:
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._given_workdir.resolve()
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="comfy-run-")).resolve()
        wd = self.workdir
        for d in (self.output_dir, self.input_dir, wd / "tmp", wd / "user"):
            d.mkdir(parents=True, exist_ok=True)
        folders = {k: list(v) for k, v in self.folders.items()}
        packs = {**({self.pack_name: self.pack_dir} if self.pack_dir is not None else {}), **self.extra_packs}
        if packs:
            nodes_dir = wd / "custom_nodes"
            nodes_dir.mkdir(exist_ok=True)
            for name, pack in packs.items():
                if not (pack / "__init__.py").is_file():
                    raise ComfyServerError(f"{pack} is not a node pack (no __init__.py)")
                link = nodes_dir / name
                if not link.exists():
                    link.symlink_to(pack, target_is_directory=True)
            folders.setdefault("custom_nodes", []).append(str(nodes_dir))
        write_extra_model_paths(wd / "extra_model_paths.yaml", folders)

    def start(self) -> None:
        """Start the process, wait until it answers, and check that the pack and nodes loaded."""
        if self.proc is not None:
            raise ComfyServerError("server already started")
        try:
            self._prepare_workdir()
            self._start_process()
            self.check_pack()
        except (ServerStartError, PackImportError):
            self.stop(failed=True)  # keep the log: the message points to it
            raise
        except BaseException:
            self.stop(failed=False)  # never leave a process behind (Ctrl-C during start-up included)
            raise

    def _start_process(self) -> None:
        last_error: ServerStartError | None = None
        for _attempt in range(3):  # a port picked by free_port() can be taken before ComfyUI binds it
            self.port = free_port(self.host)
            try:
                self._launch()
                self._wait_ready()
                return
            except ServerStartError as e:
                last_error = e
                self._kill()
                if "address already in use" not in self.log_text().lower():
                    raise
        assert last_error is not None
        raise last_error

    def _launch(self) -> None:
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
        env.update(self.env)
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # own process group: stop() can signal all of it
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self.start_time = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(self.comfyui_path),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            **kwargs,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerStartError(
                    f"ComfyUI exited with code {code} during start-up\n{self.log_tail()}\n(full log: {self.log_path})"
                )
            try:
                self.get("/system_stats", timeout=5)
                self.startup_seconds = time.monotonic() - self.start_time
                return
            except (OSError, ComfyServerError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"ComfyUI did not answer on {self.url} within {self.startup_timeout:.0f} s\n"
                    f"{self.log_tail()}\n(full log: {self.log_path})"
                )
            time.sleep(0.25)

    def check_pack(self) -> None:
        """Raise :class:`PackImportError` if the pack failed to import or a required node is missing."""
        if self.pack_dir is not None:
            failure = self.pack_import_failure()
            if failure:
                raise PackImportError(
                    f"node pack {self.pack_name} ({self.pack_dir}) failed to import:\n"
                    f"{failure}\n(full log: {self.log_path})"
                )
        missing = [n for n in self.require_nodes if n not in self.object_info(n)]
        if missing:
            raise PackImportError(
                f"nodes not registered: {', '.join(missing)}\n{self.log_tail()}\n(full log: {self.log_path})"
            )

    def pack_import_failure(self) -> str | None:
        """The log lines that report the pack's import failure (with its traceback), or None."""
        lines = self.log_text().splitlines()
        # only our link: a copy of the pack in ComfyUI's own custom_nodes is another matter
        link = re.compile(re.escape(str(self._dir() / "custom_nodes" / self.pack_name)) + r"(?![\w.-])")
        bad = [
            i
            for i, line in enumerate(lines)
            if ("IMPORT FAILED" in line or "Cannot import" in line) and link.search(line)
        ]
        if not bad:
            return None
        first = bad[0]
        start = first
        # the traceback is logged just before "Cannot import ...": walk back to its first line
        for j in range(first - 1, max(-1, first - 200), -1):
            if lines[j].startswith("Traceback (most recent call last)"):
                start = j
                break
        excerpt = lines[start : first + 1]
        excerpt += [lines[i] for i in bad[1:] if i > first]
        return "\n".join(excerpt)

    def stop(self, failed: bool = False) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) and remove the temp dir if wanted."""
        self._kill()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        keep = self.keep_workdir if self.keep_workdir is not None else failed
        if self.workdir is not None and not keep and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            try:
                if os.name == "posix":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, ComfyServerError):
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        """Send one request; return ``(status, parsed JSON or text)``. HTTP errors are returned, not raised."""
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def get(self, path: str, timeout: float = 60.0) -> Any:
        """``GET path`` and return the JSON; raise :class:`ComfyServerError` on a non-200 status."""
        status, payload = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyServerError(f"GET {path} -> HTTP {status}: {payload}")
        return payload

    def object_info(self, node_id: str | None = None) -> dict[str, Any]:
        """``/object_info`` (all nodes) or ``/object_info/<node_id>`` (``{}`` if it is not registered)."""
        if node_id is None:
            return self.get("/object_info", timeout=120)
        return self.get("/object_info/" + urllib.parse.quote(node_id, safe=""))

    def submit(
        self, prompt: Mapping[str, Any], *, strict: bool = True, extra_data: Mapping[str, Any] | None = None
    ) -> str:
        """Queue an API-format prompt and return its ``prompt_id``.

        Raises :class:`PromptValidationError` on HTTP 400, and (with ``strict``) also when the server
        accepted the prompt but dropped some output nodes because of ``node_errors``.
        """
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        status, payload = self.request("POST", "/prompt", body)
        payload = payload if isinstance(payload, dict) else {"error": payload}
        node_errors = payload.get("node_errors") or {}
        if status != 200:
            error = payload.get("error")
            head = error.get("message", error) if isinstance(error, dict) else error
            details = error.get("details") if isinstance(error, dict) else None
            msg = f"prompt rejected (HTTP {status}): {head}" + (f": {details}" if details else "")
            if node_errors:
                msg += "\n" + format_node_errors(node_errors, prompt)
            raise PromptValidationError(msg, error, node_errors)
        if strict and node_errors:
            raise PromptValidationError(
                "prompt accepted, but some outputs were dropped:\n" + format_node_errors(node_errors, prompt),
                None,
                node_errors,
            )
        return str(payload["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of ``prompt_id``, or None while it is queued or running."""
        payload = self.get("/history/" + urllib.parse.quote(prompt_id, safe=""))
        return payload.get(prompt_id) if isinstance(payload, dict) else None

    def wait(self, prompt_id: str, timeout: float = 3600.0, poll: float = 0.25) -> dict[str, Any]:
        """Poll ``/history/<id>`` until the prompt finishes; return its history entry.

        Raises :class:`ExecutionError` (with the node's exception message and traceback) if it failed,
        :class:`ExecutionInterrupted` if interrupted, :class:`PromptTimeout` (after interrupting it) if it
        ran longer than ``timeout``, and :class:`ComfyServerError` if the server died.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                entry = self.history(prompt_id)
            except OSError as e:  # connection refused/reset: find out below whether the server died
                late = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
                if not late and (self.proc is None or self.proc.poll() is None):
                    raise ComfyServerError(f"cannot reach ComfyUI at {self.url}: {e}") from e
                entry = None  # a server busy swapping may answer a poll late: ask again until the deadline
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") == "success":
                    return entry
                if status.get("status_str") == "error":
                    raise self.execution_error(entry)
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self.proc.returncode} while running "
                    f"prompt {prompt_id}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.interrupt()
                raise PromptTimeout(f"prompt {prompt_id} did not finish within {timeout:.0f} s (interrupted)")
            time.sleep(poll)

    @staticmethod
    def execution_error(entry: Mapping[str, Any]) -> ExecutionError:
        messages = (entry.get("status") or {}).get("messages") or []
        for event, data in messages:
            if event == "execution_error":
                where = f"{data.get('node_type')} (node {data.get('node_id')})"
                msg = f"{where} failed: {data.get('exception_type')}: {str(data.get('exception_message')).strip()}"
                tb = "".join(data.get("traceback") or [])
                if tb:
                    msg += "\n" + tb.rstrip()
                return ExecutionError(msg, data, entry)
            if event == "execution_interrupted":
                where = f"{data.get('node_type')} (node {data.get('node_id')})"
                return ExecutionInterrupted(f"execution interrupted at {where}", data, entry)
        return ExecutionError(f"execution failed: {messages}", {}, entry)

    def run(self, prompt: Mapping[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
        """Submit ``prompt``, wait for it, and return its history entry."""
        return self.wait(self.submit(prompt), timeout=timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (``POST /interrupt``; only ``prompt_id`` if given)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self.request("POST", "/interrupt", body, timeout=30)

    # ------------------------------------------------------------------ files

    def output_images(self, history: Mapping[str, Any], include_temp: bool = False) -> list[Path]:
        """Paths of the images listed in a history entry's outputs (output dir; temp dir too if asked)."""
        paths: list[Path] = []
        for node_out in (history.get("outputs") or {}).values():
            for key, items in node_out.items():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if not isinstance(item, dict) or "filename" not in item:
                        continue
                    kind = item.get("type", "output")
                    if kind == "output":
                        base = self.output_dir
                    elif kind == "temp" and include_temp:
                        base = self.temp_dir
                    else:
                        continue
                    path = base / item.get("subfolder", "") / item["filename"]
                    if key == "images" or path.suffix.lower() in _IMAGE_SUFFIXES:
                        paths.append(path)
        return paths

    def upload_image(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Copy an image into the input dir; return the name to give ``LoadImage.image``."""
        src = Path(path)
        if not src.is_file():
            raise ComfyServerError(f"image {src} does not exist")
        name = name or src.name
        shutil.copyfile(src, self.input_dir / name)
        return name
