"""A real S3 HTTP server on 127.0.0.1 for tests: moto's server, with switchable faults.

Jobs reach it only through their `storage:` section (endpoint_url, key, secret, region); nothing
here touches os.environ. The server (ThreadedMotoServer) runs in a spawned child process driven
over a pipe, for one reason: vLLM's CPU engine start scans every module's globals with hasattr(),
which raises on Flask's `request` proxy, so Flask must never be imported where the engine runs.
Moto's backend is global to that child, so the server can be stopped (clients then get "connection
refused") and started again on the same port with every object still there. Faults a stopped
server cannot show (503s, throttling, a PUT whose answer is lost) come from a small WSGI layer in
front of moto's own app.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import socket
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq
import pytest

REGION = "us-east-1"


@dataclass
class Fault:
    """Answer matching requests with an S3 error: the next `count` of them, or all for `seconds`.

    With `after`, the fault arms only once a request whose path contains it has gone through
    (e.g. after="/parts/": the first part is committed, then the store breaks).
    """

    status: int
    code: str
    methods: frozenset[str] | None = None
    count: int | None = None
    seconds: float | None = None
    forward: bool = False  # let moto do the request, then lose its answer (the client must retry)
    after: str | None = None
    until: float | None = None

    def arm(self) -> None:
        self.after = None
        if self.seconds is not None:
            self.until = time.monotonic() + self.seconds

    def matches(self, method: str, path: str) -> bool:
        if self.after is not None:
            if self.after in path:
                self.arm()
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.until is not None:
            return time.monotonic() < self.until
        return self.count is None or self.count > 0


@dataclass
class FaultInjector:
    """WSGI middleware in front of moto: records requests, injects the faults a test asks for."""

    app: Callable | None = None
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, status: int = 503, code: str = "ServiceUnavailable", *, methods: set[str] | None = None,
             count: int | None = None, seconds: float | None = None, forward: bool = False,
             after: str | None = None) -> Fault:
        fault = Fault(status, code, frozenset(methods) if methods else None, count, seconds, forward, after)
        if after is None:
            fault.arm()
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self.lock:
            self.requests.append(f"{method} {path}?{environ.get('QUERY_STRING', '')}")
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                self.injected += 1
                if fault.count is not None:
                    fault.count -= 1
        if fault is None:
            return self.app(environ, start_response)
        if fault.forward:
            for _ in self.app(environ, lambda *a, **k: None):  # moto applies the request; the answer is dropped
                pass
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                f"<Message>injected by the test</Message><RequestId>test</RequestId></Error>").encode()
        start_response(f"{fault.status} Injected", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]


def _moto_server(port: int, faults: FaultInjector) -> Any:
    """A ThreadedMotoServer with the fault layer in front of moto's app. Moto is imported here, not at
    conftest import (it costs over a second), and builds its app inside the server thread."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    class _MotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            faults.app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(self._ip_address, self._port, faults, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return _MotoServer(ip_address="127.0.0.1", port=port, verbose=False)


def _serve(conn: Any, port: int) -> None:
    """The child process: runs the server and the fault layer, answering (op, args) from the pipe."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    faults, server = FaultInjector(), None
    while True:
        op, args, kwargs = conn.recv()
        try:
            value = None
            if op == "start":
                server = _moto_server(port, faults)
                server.start()
            elif op == "stop" and server is not None:
                server.stop()
                server = None
            elif op == "fail":
                faults.fail(*args, **kwargs)
            elif op == "clear":
                faults.clear()
            elif op == "seed":
                _seed(*args)
            elif op in ("injected", "requests"):
                with faults.lock:
                    value = list(faults.requests) if op == "requests" else faults.injected
            elif op == "exit":
                conn.send((True, None))
                return
            conn.send((True, value))
        except Exception as e:  # noqa: BLE001 - reported to the test process
            conn.send((False, repr(e)))


def _seed(bucket: str, objects: dict[str, bytes]) -> None:
    """Objects put straight into moto's backend: thousands in a blink, for tests of listing, not of PUT."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key, data in objects.items():
        backend.put_object(bucket, key, data)


class RemoteFaults:
    """The child's FaultInjector, seen from the test process (same calls)."""

    def __init__(self, server: S3Server):
        self._server = server

    def fail(self, status: int = 503, code: str = "ServiceUnavailable", **kwargs: Any) -> None:
        self._server._call("fail", status, code, **kwargs)

    def clear(self) -> None:
        self._server._call("clear")

    @property
    def injected(self) -> int:
        return self._server._call("injected")

    @property
    def requests(self) -> list[str]:
        return self._server._call("requests")


class S3Server:
    """One loopback S3 endpoint for the test session, with helpers to make buckets and upload data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.key = "AKIABATCHGENTEST0001"
        # Distinctive, so a test can search every output byte and log line for it.
        self.secret = f"bgsecret{uuid.uuid4().hex}"
        self.faults = RemoteFaults(self)
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()  # a watcher thread may stop the server while a test waits
        self._proc = ctx.Process(target=_serve, args=(child, self.port), name="s3-server", daemon=True)
        self._proc.start()

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((op, args, kwargs))
            ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"S3 test server: {op} failed: {value}")
        return value

    def start(self) -> None:
        self._call("start")

    def stop(self) -> None:
        self._call("stop")

    def close(self) -> None:
        self._call("exit")
        self._proc.join(timeout=30)

    @contextmanager
    def down(self) -> Iterator[None]:
        """Connections refused inside the block; the same objects are there after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def storage(self, **extra: Any) -> dict[str, Any]:
        """A job's `storage:` section for this server (fast retries unless a test asks otherwise)."""
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret, "region": REGION,
                "retry_base_seconds": 0.05, "retry_max_seconds": 0.5, **extra}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": REGION})

    def client(self, service: str = "s3", key: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret)

    def make_bucket(self) -> str:
        name = f"bg-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, local: Path, url: str) -> str:
        """Copy a local file or folder to `url` (s3://bucket/prefix); returns `url`."""
        fs = self.fs()
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        base = local if local.is_dir() else local.parent
        fs.pipe({f"{url.removeprefix('s3://').rstrip('/')}/{p.relative_to(base).as_posix()}": p.read_bytes() for p in files})
        return url

    def seed(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Create many objects at once, bypassing HTTP (for listing tests)."""
        self._call("seed", bucket, objects)

    def objects(self, url: str) -> dict[str, bytes]:
        """Every object under `url`, by key relative to it."""
        fs = self.fs()
        root = url.removeprefix("s3://").rstrip("/")
        return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}

    def read_parts(self, url: str) -> list[dict]:
        rows: list[dict] = []
        for key, data in sorted(self.objects(url).items()):
            if key.startswith("parts/") and key.endswith(".parquet"):
                rows += pq.read_table(io.BytesIO(data)).to_pylist()
        return rows

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Moto checks signatures and IAM policies inside the block (its own /moto-api/reset-auth switch)."""
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        # text/plain: with urllib's default (a form), Flask takes the body as form fields and moto reads nothing.
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["status"] == "ok"

    def iam_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed only `actions` on every S3 resource; returns its (key, secret)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=name)["AccessKey"]
        return k["AccessKeyId"], k["SecretAccessKey"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1:<free port> for the whole session."""
    server = S3Server()
    server.start()
    yield server
    server.close()


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    """The session's server with no faults left over from another test."""
    s3_server.faults.clear()
    yield s3_server
    s3_server.faults.clear()
