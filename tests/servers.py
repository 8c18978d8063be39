"""Local servers for tests: moto_server (S3), a pausable TCP proxy (an S3 outage without losing the bucket), and
a real ``prefect server``; all bound to 127.0.0.1 on free ports and stopped by the tests that start them.

Used by test_s3.py, test_deployments.py and test_failures.py. Only the standard library (plus boto3/s3fs
for the bucket helpers).
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent

#: Credentials for moto: any value works; the secret is distinctive so tests can grep for leaks.
TEST_KEY = "AKIALATENTDATESTKEY01"
TEST_SECRET = "latentda-Secret-DoNotLeak-7f3a9c1e"
TEST_REGION = "us-east-1"
BUCKET_PREFIX = "latentda-test"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers (any HTTP status), or raise naming the url (and the process output)."""
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
            return
        except urllib.error.HTTPError:
            return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s (last error: {last})")


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ---------------------------------------------------------------------------------------------------- moto
class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT`` in its own process group. State lives in memory: ``stop()`` loses it
    (use :class:`PausableProxy` to simulate an outage that keeps the bucket)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> "MotoServer":
        exe = VENV_BIN / "moto_server"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        # moto logs every request: a log file, never an unread pipe (a full pipe blocks the server)
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([*cmd, "-H", HOST, "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.endpoint_url + "/moto-api/", timeout, self.proc)
        except Exception as e:
            self._log.seek(0)
            out = self._log.read().decode(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"moto_server did not start: {e}\n{out}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
            self._log.close()

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as m:
        yield m


def s3_env(endpoint_url: str, key: str = TEST_KEY, secret: str = TEST_SECRET) -> dict[str, str]:
    """The standard AWS variables pointing s3fs/botocore at ``endpoint_url`` (no config files read)."""
    return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_S3": endpoint_url,
            "AWS_DEFAULT_REGION": TEST_REGION, "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


def make_bucket(endpoint_url: str, bucket: str, key: str = TEST_KEY, secret: str = TEST_SECRET) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret,
                      region_name=TEST_REGION)
    s3.create_bucket(Bucket=bucket)


def list_objects(endpoint_url: str, bucket: str, prefix: str = "", key: str = TEST_KEY,
                 secret: str = TEST_SECRET) -> dict[str, bytes]:
    """{key: bytes} of every object under ``prefix`` (for byte comparisons and secret greps)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret,
                      region_name=TEST_REGION)
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


# --------------------------------------------------------------------------------------------------- proxy
class PausableProxy:
    """A TCP forwarder ``127.0.0.1:port -> 127.0.0.1:target_port`` that can be taken down and brought back on
    the same port: ``pause()`` closes the listener and every open connection (clients see connection refused /
    reset, exactly like a stopped server), ``resume()`` listens again. The server behind keeps its state."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._running = False
        self.paused = False
        self.resets = 0  # client connections cut by pause()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> "PausableProxy":
        self._listen()
        return self

    def _listen(self) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, self.port))
        ls.listen(64)
        ls.settimeout(0.2)
        self._listener = ls
        self._running = True
        self.paused = False
        self._thread = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True)
        self._thread.start()

    def _accept_loop(self, ls: socket.socket) -> None:
        while self._running and self._listener is ls:
            try:
                client, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        socks = [a, b]
        try:
            while True:
                r, _, _ = select.select(socks, [], [], 0.5)
                if not r and (a.fileno() < 0 or b.fileno() < 0):
                    return
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.difference_update(socks)

    def pause(self) -> None:
        """Stop listening and reset every open connection."""
        self._running = False
        ls, self._listener = self._listener, None
        if ls is not None:
            ls.close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        self.resets += len(conns) // 2
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        if self._thread is not None:
            self._thread.join(2)
        self.paused = True

    def resume(self) -> None:
        self._listen()

    def stop(self) -> None:
        self.pause()

    def __enter__(self) -> "PausableProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------- prefect
def prefect_env(home: str | os.PathLike, api_url: str | None = None) -> dict[str, str]:
    """Environment for a Prefect subprocess with its own PREFECT_HOME (and API url if given)."""
    env = dict(os.environ)
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_CLI_PROMPT": "false", "PREFECT_LOGGING_LEVEL": "INFO", "MPLBACKEND": "Agg"})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


class PrefectServer:
    """``prefect server start --host 127.0.0.1 --port N`` with a temporary PREFECT_HOME (SQLite inside it)."""

    def __init__(self, home: str | os.PathLike, port: int | None = None):
        self.home = Path(home)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def env(self) -> dict[str, str]:
        return prefect_env(self.home, self.api_url)

    def start(self, timeout: float = 120.0) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        env = prefect_env(self.home)
        env["PREFECT_SERVER_API_HOST"] = HOST
        env["PREFECT_UI_ENABLED"] = "false"
        prefect = shutil.which("prefect", path=str(VENV_BIN)) or str(VENV_BIN / "prefect")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([prefect, "server", "start", "--host", HOST, "--port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_http(self.api_url + "/health", timeout, None)
        except TimeoutError as e:
            self.stop()
            raise TimeoutError(f"{e}\n{self.log_path.read_text(errors='replace')[-3000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 20)
            self.proc = None
            self._log.close()

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_cli(args: list[str], env: dict[str, str], cwd: str | os.PathLike | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (``prefect ...`` / ``python -m ...``) and return the completed process (text output)."""
    exe = args[0]
    if exe == "prefect":
        exe = str(VENV_BIN / "prefect")
    elif exe == "python":
        exe = sys.executable
    r = subprocess.run([exe, *args[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}\nstdout:\n{r.stdout[-4000:]}\n"
                             f"stderr:\n{r.stderr[-4000:]}")
    return r
