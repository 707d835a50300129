"""Shared helpers for the interop tests: a real `cosnap serve` per test module.

Each module gets its own server on a free loopback port, with a fresh data directory, an
export root, and a user added through the CLI (`cosnap user add NAME --password-stdin`).
The binary comes from $COSNAP_BIN (./scripts/test sets it); a missing binary is a failure,
not a skip.
"""

import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import pywbem

ROOT = pathlib.Path(__file__).resolve().parents[2]
NS = "root/virtualization/v2"
USER = "admin"
PASSWORD = "interop pw: 1"
SERVICES = [
    "Msvm_CollectionManagementService",
    "Msvm_CollectionSnapshotService",
    "Msvm_CollectionReferencePointService",
    "Msvm_VirtualSystemManagementService",
]
# Terminal JobStates (7 Completed, 32768 CompletedWithWarnings, 8 Terminated, 9 Killed, 10 Exception).
TERMINAL = {7, 8, 9, 10, 32768}


def cosnap_bin():
    b = os.environ.get("COSNAP_BIN") or str(ROOT / "target" / "release" / "cosnap")
    if not os.access(b, os.X_OK):
        pytest.fail(f"cosnap binary {b} not found: build it or set COSNAP_BIN")
    return b


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CosnapServer:
    """One `cosnap serve` process over its own data directory."""

    def __init__(self, base: pathlib.Path, https=False, extra_args=()):
        self.extra_args = list(extra_args)
        self.base = base
        self.data = base / "data"
        self.export_root = base / "exports"
        self.export_root.mkdir(parents=True, exist_ok=True)
        # Where disk images named over the API (DefineSystem) may lie.
        self.storage_root = base / "storage"
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.https_port = free_port() if https else None
        self.proc = None
        self.log = base / "serve.log"

    # -- CLI -------------------------------------------------------------------------
    def cli(self, *args, input=None, check=True, timeout=300):
        r = subprocess.run(
            [cosnap_bin(), "--data-dir", str(self.data), *map(str, args)],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"cosnap {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")
        return r

    # -- lifecycle -------------------------------------------------------------------
    def start(self):
        self.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        cmd = [cosnap_bin(), "--data-dir", str(self.data), "serve",
               "--listen", f"127.0.0.1:{self.port}", "--export-root", str(self.export_root),
               "--storage-root", str(self.storage_root)]
        if self.https_port:
            cmd += ["--https-listen", f"127.0.0.1:{self.https_port}"]
        cmd += self.extra_args
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"cosnap serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("cosnap serve did not accept connections within 60 s")

    def stop(self, timeout=90):
        """SIGTERM, then wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"cosnap serve did not stop within {timeout}s after SIGTERM")
        finally:
            self._logf.close()
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    # -- clients ---------------------------------------------------------------------
    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def conn(self, creds=(USER, PASSWORD), url=None, **kw):
        kw.setdefault("timeout", 60)
        return pywbem.WBEMConnection(url or self.url, creds, default_namespace=NS, **kw)


class Raw:
    """A minimal HTTP/1.1 client over a fresh socket per request (no client-side checks)."""

    def __init__(self, port):
        self.port = port

    def send(self, body, headers, method="POST", path="/cimom", declared_length=None, timeout=30, chunked=False):
        body = body.encode() if isinstance(body, str) else body
        length = len(body) if declared_length is None else declared_length
        if chunked:
            size = 64 * 1024
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)) + b"0\r\n\r\n"
            framing = "Transfer-Encoding: chunked"
        else:
            framing = f"Content-Length: {length}"
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            try:
                s.sendall(head.encode("latin-1") + body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early (e.g. 413) and closed; read its answer
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        assert data, "no response at all"
        head, _, payload = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        return status, hdrs, payload


def serving(s):
    """Body of a server fixture: starts `s`, yields it, and checks that it exits 0 on SIGTERM."""
    s.start()
    yield s
    rc = s.stop()
    assert rc == 0, f"cosnap serve exited {rc} on SIGTERM: {s.log.read_text()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(CosnapServer(tmp_path_factory.mktemp("cosnap")))


@pytest.fixture(scope="module")
def conn(server):
    return server.conn()


def poll_job(get, job_path, timeout=300):
    """Calls get(job_path) until the job ends; returns what get returned last. `get` is a CIM-XML
    GetInstance or a WS-Man client's get (JobState as text there, hence int())."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(job_path)
        if int(job["JobState"]) in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_path} still in state {job['JobState']} after {timeout}s")
        time.sleep(0.1)


def wait_job(conn, job_path, timeout=300):
    """Polls a job until it ends; returns the job instance."""
    return poll_job(conn.GetInstance, job_path, timeout)


def run_method(conn, method, target, params, result=None, result_class=None, timeout=300):
    """InvokeMethod; on 4096 waits for the job (which must complete). Returns (rv, out, produced)
    where `produced` is the path in out[result] or, for a job, the element the job created of
    `result_class` (through Msvm_AffectedJobElement)."""
    rv, out = conn.InvokeMethod(method, target, params)
    assert rv in (0, 4096), f"{method} returned {rv}"
    produced = out.get(result) if result else None
    if rv == 4096:
        job_path = out["Job"]
        assert isinstance(job_path, pywbem.CIMInstanceName)
        assert job_path.classname.lower().endswith("job")
        job = wait_job(conn, job_path, timeout)
        assert job["JobState"] in (7, 32768), (method, job["JobState"], job["ErrorCode"], job["ErrorDescription"])
        assert job["PercentComplete"] == 100
        if result_class and produced is None:
            found = conn.AssociatorNames(job_path, AssocClass="Msvm_AffectedJobElement", ResultClass=result_class)
            assert len(found) == 1, (method, found)
            produced = found[0]
    return rv, out, produced


def service(conn, cls):
    names = conn.EnumerateInstanceNames(cls)
    assert len(names) == 1, names
    return names[0]


def wmi_path(host, path):
    """WMI object-path text of an instance path: \\\\HOST\\root\\virtualization\\v2:Class.K="v",…"""
    def q(v):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    keys = ",".join(f"{k}={q(v)}" for k, v in path.keybindings.items())
    return f"\\\\{host}\\root\\virtualization\\v2:{path.classname}.{keys}"
