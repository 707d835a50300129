#!/usr/bin/env python3
"""Scale harness (issue 13): how cosnap's CIM-XML face costs grow with the size of the host.

For each size N (default 20, 200 and 2,000 VMs) it builds a host with the library
(`scale_host` example: N VMs with a 1 MiB raw disk each, one collection per ten VMs, one
recovery snapshot of each collection), starts `cosnap serve`, and times through pywbem:

* EnumerateInstances of the classes a backup application reads (median of 3, ms, with the
  instance count; --all-classes: every Msvm_ class with instances);
* Associators(VM, Msvm_SnapshotOfVirtualSystem) and Associators(VM, Msvm_SettingsDefineState)
  per call (mean of 300 calls over up to 50 VMs spread over the host, ms);
* the backup walk: every VM → its snapshots and its settings (both Associators above),
  in seconds — stopped after --walk-budget seconds and extrapolated to all VMs if slower;
* ExecQuery("SELECT * FROM Msvm_ComputerSystem") (median of 3, ms, with the count);
* server RSS: idle, peak during a pull enumeration of every Msvm_ComputerSystem
  (IterEnumerateInstances, MaxObjectCount 100), peak during each large answer
  (EnumerateInstances of Msvm_ComputerSystem, of the VSSDs and of the disks' resource
  settings, the ExecQuery of every VM), and peak during the WS-Man enumeration of every VM
  (pypsrp: Enumerate, then Pulls of 100 items).

and prints the figures side by side, with the 2,000/20 ratio for the per-call costs.

    .venv/bin/python benches/scale/scale.py [--sizes 20,200,2000] [--bin target/release/cosnap]

Targets: per-call association cost flat within ±25 % from 20 to 2,000 VMs; EnumerateInstances
of 2,000 Msvm_ComputerSystem < 150 ms; full walk at 2,000 VMs < 30 s; RSS during a
2,000-instance pull within 20 % of idle.
"""

import argparse
import base64
import http.client
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import pywbem
from pypsrp.wsman import WSMan

ROOT = pathlib.Path(__file__).resolve().parents[2]
NS = "root/virtualization/v2"
USER, PASSWORD = "bench", "bench pw 13"
ASSOCS = ["Msvm_SnapshotOfVirtualSystem", "Msvm_SettingsDefineState"]
SAMPLE_VMS = 50
CALLS = 300
CLASSES = ["Msvm_ComputerSystem", "Msvm_VirtualSystemSettingData", "Msvm_VirtualSystemCollection",
           "Msvm_SnapshotCollection", "Msvm_SnapshotOfVirtualSystem", "Msvm_SettingsDefineState",
           "Msvm_ProcessorSettingData", "Msvm_MemorySettingData", "Msvm_StorageAllocationSettingData"]
ALL_VMS_QUERY = "SELECT * FROM Msvm_ComputerSystem"
# The large answers whose server RSS peak is sampled (besides the pull enumeration).
RSS_CALLS = [
    ("enumerate", "EnumerateInstances Msvm_ComputerSystem", lambda c: c.EnumerateInstances("Msvm_ComputerSystem")),
    ("vssd", "EnumerateInstances VSSD", lambda c: c.EnumerateInstances("Msvm_VirtualSystemSettingData")),
    ("rasd", "EnumerateInstances StorageAllocationSD",
     lambda c: c.EnumerateInstances("Msvm_StorageAllocationSettingData")),
    ("query", "ExecQuery all VMs", lambda c: c.ExecQuery("WQL", ALL_VMS_QUERY)),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Samples a process's RSS every 2 ms while the block runs; .peak is the largest (kB)."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.002)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kb(self.pid))


def build_host(args, work, n):
    data, disks = work / "data", work / "disks"
    t0 = time.monotonic()
    subprocess.run([args.builder, str(data), str(disks), str(n)], check=True)
    subprocess.run([args.bin, "--data-dir", str(data), "user", "add", USER, "--password-stdin"],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    return data, time.monotonic() - t0


def start_server(args, work, data):
    port = free_port()
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([args.bin, "--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"cosnap serve exited {proc.returncode}: {(work / 'serve.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("cosnap serve did not start")


SERVER_PID = None


def server_cpu_s():
    """CPU seconds (user + system) the server has used so far."""
    fields = pathlib.Path(f"/proc/{SERVER_PID}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, *a, **kw):
    """(wall seconds, server CPU seconds, result) of one call."""
    c0, t0 = server_cpu_s(), time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t0, server_cpu_s() - c0, r


def enumerations(conn, all_classes):
    """{class: (median ms, count)} for CLASSES (or every Msvm_ class with instances)."""
    out = {}
    classes = CLASSES
    if all_classes:
        classes = [c for c in sorted(conn.EnumerateClassNames(DeepInheritance=True)) if c.startswith("Msvm_")]
    for cls in classes:
        runs = [timed(conn.EnumerateInstances, cls) for _ in range(3)]
        count = len(runs[0][2])
        if count or cls == "Msvm_ComputerSystem":
            wall = statistics.median(t for t, _, _ in runs) * 1000
            cpu = statistics.mean(c for _, c, _ in runs) * 1000  # CPU ticks are 10 ms: average them
            out[cls] = (wall, cpu, count)
    return out


ENUM_BODY = """<?xml version="1.0" encoding="utf-8" ?>
<CIM CIMVERSION="2.0" DTDVERSION="2.0"><MESSAGE ID="1001" PROTOCOLVERSION="1.0"><SIMPLEREQ>
<IMETHODCALL NAME="EnumerateInstances"><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/>
<NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH>
<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="Msvm_ComputerSystem"/></IPARAMVALUE>
</IMETHODCALL></SIMPLEREQ></MESSAGE></CIM>"""


def raw_enumerate_ms(port):
    """Median ms of 5 EnumerateInstances(Msvm_ComputerSystem) over a keep-alive HTTP
    connection, the whole body read but not parsed: the server's side of the call, which
    pywbem's own XML parsing (about 0.3 ms per instance here) would otherwise hide."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Content-Type": 'application/xml; charset="utf-8"', "CIMOperation": "MethodCall",
               "CIMMethod": "EnumerateInstances", "CIMObject": "root%2Fvirtualization%2Fv2",
               "Authorization": f"Basic {auth}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    runs = []
    for _ in range(6):
        t0 = time.perf_counter()
        conn.request("POST", "/cimom", body=ENUM_BODY.encode(), headers=headers)
        response = conn.getresponse()
        body = response.read()
        runs.append(time.perf_counter() - t0)
        assert response.status == 200 and b"<IRETURNVALUE>" in body, body[:300]
    conn.close()
    return statistics.median(runs[1:]) * 1000, body.count(b"<VALUE.NAMEDINSTANCE>")


def query_all_vms(conn):
    """(median wall ms, mean server CPU ms, count) of 3 ExecQuery of every VM."""
    runs = [timed(conn.ExecQuery, "WQL", ALL_VMS_QUERY) for _ in range(3)]
    wall = statistics.median(t for t, _, _ in runs) * 1000
    return wall, statistics.mean(c for _, c, _ in runs) * 1000, len(runs[0][2])


def association_costs(conn, vms, sample_size):
    """{assoc: (mean wall ms, mean server CPU ms) per Associators call} over up to
    SAMPLE_VMS VMs spread over the host."""
    step = max(1, len(vms) // sample_size)
    sample = vms[::step][:sample_size]
    out = {}
    for assoc in ASSOCS:
        conn.Associators(sample[0], AssocClass=assoc)  # warm
        # CPU ticks are 10 ms and a call costs about 1 ms: average over CALLS calls.
        runs = [timed(conn.Associators, sample[i % len(sample)], AssocClass=assoc) for i in range(CALLS)]
        out[assoc] = (statistics.mean(t for t, _, _ in runs) * 1000, statistics.mean(c for _, c, _ in runs) * 1000)
    return out


def backup_walk(conn, budget):
    """Seconds for every VM → Associators for its snapshots and its settings; (wall seconds,
    server CPU seconds, VMs walked, extrapolated?)."""
    c0, t0 = server_cpu_s(), time.perf_counter()
    vms = conn.EnumerateInstanceNames("Msvm_ComputerSystem")
    done = 0
    for vm in vms:
        for assoc in ASSOCS:
            conn.Associators(vm, AssocClass=assoc)
        done += 1
        if time.perf_counter() - t0 > budget:
            break
    elapsed, cpu = time.perf_counter() - t0, server_cpu_s() - c0
    if done < len(vms):
        scale = len(vms) / done
        return elapsed * scale, cpu * scale, done, True
    return elapsed, cpu, done, False


WSEN = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
CS_URI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/Msvm_ComputerSystem"


def wsman_enumerate(port, batch=100):
    """Every Msvm_ComputerSystem through WS-Man (pypsrp: Enumerate, then Pulls of `batch`);
    returns how many items came."""
    w = WSMan("127.0.0.1", port=port, username=USER, password=PASSWORD, ssl=False, auth="basic",
              encryption="never", operation_timeout=60)
    body = w.enumerate(CS_URI, ET.Element(f"{{{WSEN}}}Enumerate"))
    ctx, count = body.find(f".//{{{WSEN}}}EnumerationContext"), 0
    while ctx is not None and (ctx.text or "").strip():
        pull = ET.Element(f"{{{WSEN}}}Pull")
        ET.SubElement(pull, f"{{{WSEN}}}EnumerationContext").text = ctx.text.strip()
        ET.SubElement(pull, f"{{{WSEN}}}MaxElements").text = str(batch)
        body = w.pull(CS_URI, pull)
        count += len(body.find(f".//{{{WSEN}}}Items"))
        ctx = body.find(f".//{{{WSEN}}}EnumerationContext")
    return count


def memory(conn, pull_conn, pid, port):
    """RSS in kB: idle, peak during a pull enumeration of Msvm_ComputerSystem, peak during
    each of RSS_CALLS, and peak during the WS-Man enumeration of every VM (each after the
    server has gone idle again)."""
    time.sleep(2.5)  # the server trims its heap once idle after activity
    idle = rss_kb(pid)
    with PeakRss(pid) as pulled:
        n = sum(1 for _ in pull_conn.IterEnumerateInstances("Msvm_ComputerSystem", MaxObjectCount=100))
    assert pull_conn._use_enum_inst_pull_operations is True, "the pull path was not taken"
    out = {"idle": idle, "pull": pulled.peak, "pulled": n}
    for key, _, call in RSS_CALLS:
        time.sleep(2.5)
        with PeakRss(pid) as peak:
            call(conn)
        out[key] = peak.peak
    time.sleep(2.5)
    with PeakRss(pid) as ws:
        ws_count = wsman_enumerate(port)
    assert ws_count == n, f"WS-Man gave {ws_count} VMs, the pull enumeration {n}"
    out["wsman"] = ws.peak
    return out


def measure(args, n):
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"cosnap-scale-{n}-"))
    try:
        data, build_s = build_host(args, work, n)
        proc, port = start_server(args, work, data)
        global SERVER_PID
        SERVER_PID = proc.pid
        try:
            url = f"http://127.0.0.1:{port}"
            conn = pywbem.WBEMConnection(url, (USER, PASSWORD), default_namespace=NS, timeout=600)
            pull_conn = pywbem.WBEMConnection(url, (USER, PASSWORD), default_namespace=NS, timeout=600,
                                              use_pull_operations=None)
            vms = conn.EnumerateInstanceNames("Msvm_ComputerSystem")
            result = {
                "build_s": build_s,
                "enum": enumerations(conn, args.all_classes),
                "raw_enum": raw_enumerate_ms(port),
                "query": query_all_vms(conn),
                "assoc": association_costs(conn, vms, args.sample),
                "walk": backup_walk(conn, args.walk_budget),
                "rss": memory(conn, pull_conn, proc.pid, port),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(sizes, results):
    col = 24
    head = "(wall / server CPU)".ljust(56) + "".join(f"N={n}".rjust(col) for n in sizes)
    print(head)
    print("-" * len(head))

    def row(label, cells):
        print(label.ljust(56) + "".join(c.rjust(col) for c in cells))

    row("host built (s)", [f"{results[n]['build_s']:.1f}" for n in sizes])
    classes = sorted({c for n in sizes for c in results[n]["enum"]})
    for cls in classes:
        cells = []
        for n in sizes:
            ms, cpu, count = results[n]["enum"].get(cls, (float("nan"), float("nan"), 0))
            cells.append(f"{ms:.0f} / {cpu:.0f} ms ({count})")
        row(f"EnumerateInstances {cls}", cells)
    row("EnumerateInstances Msvm_ComputerSystem, raw HTTP", [
        f"{results[n]['raw_enum'][0]:.0f} ms ({results[n]['raw_enum'][1]})" for n in sizes])
    row(f"ExecQuery {ALL_VMS_QUERY}", [
        f"{results[n]['query'][0]:.0f} / {results[n]['query'][1]:.0f} ms ({results[n]['query'][2]})" for n in sizes])
    first, last = sizes[0], sizes[-1]
    for assoc in ASSOCS:
        cells = [f"{results[n]['assoc'][assoc][0]:.1f} / {results[n]['assoc'][assoc][1]:.1f} ms" for n in sizes]
        wall = results[last]["assoc"][assoc][0] / results[first]["assoc"][assoc][0]
        cpu = results[last]["assoc"][assoc][1] / max(results[first]["assoc"][assoc][1], 1e-9)
        row(f"Associators(VM, {assoc})", cells)
        row(f"  ratio N={last} / N={first}", [""] * (len(sizes) - 1) + [f"{wall:.2f}x / {cpu:.2f}x"])
    cells = []
    for n in sizes:
        s, cpu, done, extrapolated = results[n]["walk"]
        cells.append(f"{s:.1f} / {cpu:.1f} s" + (f" (est.{done})" if extrapolated else ""))
    row("backup walk (every VM: snapshots, settings)", cells)
    peaks = [("idle", "server RSS idle"), ("pull", "RSS peak, pull enum of all VMs")]
    peaks += [(key, f"RSS peak, {label}") for key, label, _ in RSS_CALLS]
    peaks += [("wsman", "RSS peak, WS-Man enum of all VMs")]
    for key, label in peaks:
        row(f"{label} (MiB)", [f"{results[n]['rss'][key] / 1024:.1f}" for n in sizes])
    row("  pull peak / idle", [f"{results[n]['rss']['pull'] / results[n]['rss']['idle']:.2f}x" for n in sizes])
    row("  WS-Man peak / idle", [f"{results[n]['rss']['wsman'] / results[n]['rss']['idle']:.2f}x" for n in sizes])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="20,200,2000")
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    p.add_argument("--bin", default=str(target / "cosnap"))
    p.add_argument("--builder", default=str(target / "examples" / "scale_host"),
                   help="the scale_host example (cargo build --release -p cosnap-host --example scale_host)")
    p.add_argument("--walk-budget", type=float, default=120.0,
                   help="seconds after which the walk stops and is extrapolated")
    p.add_argument("--sample", type=int, default=SAMPLE_VMS, help="VMs whose Associators calls are timed")
    p.add_argument("--all-classes", action="store_true", help="enumerate every Msvm_ class, not only CLASSES")
    args = p.parse_args()
    for exe in (args.bin, args.builder):
        if not os.access(exe, os.X_OK):
            sys.exit(f"{exe} is missing: cargo build --release --bin cosnap && "
                     "cargo build --release -p cosnap-host --example scale_host")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        print(f"measuring N={n} …", file=sys.stderr, flush=True)
        results[n] = measure(args, n)
        report(list(results), results)  # the table so far, in case a later size is cut short
        print(flush=True)


if __name__ == "__main__":
    main()
