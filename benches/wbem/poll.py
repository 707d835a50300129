#!/usr/bin/env python3
"""Load benchmark: job polling over CIM-XML while exports run.

Sets up a data directory with one VM on a qcow2 disk full of data, snapshots it, starts
`cosnap serve` (release build), starts an ExportSnapshot job through pywbem and then, for
--seconds, keeps exports running back to back (each into a fresh directory) while
--procs client processes poll `GetInstance` of the first export's Msvm_ConcreteJob over
keep-alive HTTP with pre-built request bytes (so that the Python client is cheap per
request). Prints requests/s and latency percentiles.

    .venv/bin/python benches/wbem/poll.py --bin target/release/cosnap --procs 4 --seconds 10

Target (issue 5): >= 2,000 requests/s with p99 < 5 ms on 2 cores.
"""

import argparse
import base64
import contextlib
import multiprocessing as mp
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pywbem
from pywbem import CIMInstance, CIMProperty, Uint16

NS = "root/virtualization/v2"
USER, PASSWORD = "bench", "bench-pw"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_instance_request(job_id):
    body = ('<?xml version="1.0" encoding="utf-8" ?><CIM CIMVERSION="2.0" DTDVERSION="2.0">'
            '<MESSAGE ID="1001" PROTOCOLVERSION="1.0"><SIMPLEREQ><IMETHODCALL NAME="GetInstance">'
            '<LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/>'
            '</LOCALNAMESPACEPATH><IPARAMVALUE NAME="InstanceName"><INSTANCENAME CLASSNAME="Msvm_ConcreteJob">'
            f'<KEYBINDING NAME="InstanceID"><KEYVALUE VALUETYPE="string" TYPE="string">{job_id}</KEYVALUE>'
            '</KEYBINDING></INSTANCENAME></IPARAMVALUE></IMETHODCALL></SIMPLEREQ></MESSAGE></CIM>').encode()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    head = ("POST /cimom HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/xml; charset=\"utf-8\"\r\n"
            "CIMOperation: MethodCall\r\nCIMMethod: GetInstance\r\nCIMObject: root/virtualization/v2\r\n"
            f"Authorization: Basic {auth}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return status, rest[:length], rest[length:]


def worker(port, request, seconds, start_at, out_q):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while time.time() < start_at:
        time.sleep(0.001)
    end = time.time() + seconds
    lat = []
    buf = b""
    errors = 0
    while time.time() < end:
        t0 = time.perf_counter()
        sock.sendall(request)
        status, body, buf = read_response(sock, buf)
        lat.append(time.perf_counter() - t0)
        if status != 200 or b"<INSTANCE " not in body:
            errors += 1
    sock.close()
    out_q.put((lat, errors))


@contextlib.contextmanager
def exporting_server(cosnap, disk_mib):
    """A data directory with one VM on a qcow2 disk of `disk_mib` MiB full of data and a snapshot
    of it, served by `cosnap serve`; yields (port, conn, start_export, exports_started) where
    start_export() starts an ExportSnapshot into a fresh directory and returns its job, and
    exports_started() counts them. Shared with the WS-Man benchmark."""
    with tempfile.TemporaryDirectory(prefix="cosnap-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        data, exports = tmp / "data", tmp / "exports"
        exports.mkdir()

        def cli(*a, **kw):
            return subprocess.run([cosnap, "--data-dir", str(data), *map(str, a)], check=True,
                                  capture_output=True, text=True, **kw).stdout.strip()

        disk = tmp / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{disk_mib}M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {disk_mib}M", str(disk)],
                       check=True, capture_output=True)
        vm = cli("vm", "define", "--name", "bench", "--disk", disk)
        coll = cli("collection", "define", "bench-group")
        cli("collection", "add-member", coll, vm)
        snap = cli("snapshot", "create", coll, "--type", "recovery")
        cli("user", "add", USER, "--password-stdin", input=PASSWORD)

        port = free_port()
        server = subprocess.Popen([cosnap, "--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{port}",
                                   "--export-root", str(exports)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            conn = pywbem.WBEMConnection(f"http://127.0.0.1:{port}", (USER, PASSWORD), default_namespace=NS)
            svc = conn.EnumerateInstanceNames("Msvm_CollectionSnapshotService")[0]
            sc = pywbem.CIMInstanceName("Msvm_SnapshotCollection", {"CollectionID": snap}, namespace=NS)
            esd = CIMInstance("Msvm_CollectionSnapshotExportSettingData",
                              properties=[CIMProperty("CopyVmStorage", True), CIMProperty("BackupIntent", Uint16(1))])
            n_exports = [0]

            def start_export():
                d = exports / f"e{n_exports[0]}"
                d.mkdir()
                n_exports[0] += 1
                rv, out = conn.InvokeMethod("ExportSnapshot", svc, [("SnapshotCollection", sc),
                                                                   ("ExportDirectory", str(d)), ("ExportSettingData", esd)])
                assert rv == 4096, rv
                return out["Job"]

            yield port, conn, start_export, lambda: n_exports[0]
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/cosnap")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--disk-mib", type=int, default=1024)
    ap.add_argument("--no-export", action="store_true", help="poll a finished job with no export running (baseline)")
    args = ap.parse_args()
    cosnap = str(pathlib.Path(args.bin).resolve())

    with exporting_server(cosnap, args.disk_mib) as (port, conn, start_export, exports_started):
        job = start_export()
        if args.no_export:
            while conn.GetInstance(job)["JobState"] in (3, 4):
                time.sleep(0.1)
        request = get_instance_request(job["InstanceID"])
        q = mp.Queue()
        start_at = time.time() + 0.5
        procs = [mp.Process(target=worker, args=(port, request, args.seconds, start_at, q)) for _ in range(args.procs)]
        for p in procs:
            p.start()
        # Keep exports running for the whole measurement.
        current = job
        running_samples = 0
        polls = 0
        deadline = start_at + args.seconds
        while time.time() < deadline:
            state = conn.GetInstance(current)["JobState"]
            polls += 1
            if state in (3, 4):
                running_samples += 1
            elif not args.no_export:
                assert state == 7, state
                current = start_export()
            time.sleep(0.05)
        results = [q.get() for _ in procs]
        for p in procs:
            p.join()
        lat = sorted(x for r in results for x in r[0])
        errors = sum(r[1] for r in results)
        n = len(lat)
        pct = lambda p: lat[min(n - 1, int(p * n))] * 1000
        print(f"clients: {args.procs} processes, keep-alive, {args.seconds:.0f} s; exports started: {exports_started()}; "
              f"export running in {running_samples}/{polls} samples")
        print(f"requests: {n}  errors: {errors}  throughput: {n / args.seconds:.0f} req/s")
        print(f"latency ms: p50 {pct(0.50):.2f}  p90 {pct(0.90):.2f}  p99 {pct(0.99):.2f}  max {lat[-1] * 1000:.2f}")


if __name__ == "__main__":
    main()
