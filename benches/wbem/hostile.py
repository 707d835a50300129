#!/usr/bin/env python3
"""Hostile load: each flood of issue 9 against one `cosnap serve`, while a legitimate client
times its requests and the server's resident memory is sampled.

The attacker connects from 127.0.0.2 (and .3–.6 for the body burst), the legitimate client
from 127.0.0.1: two sources on one machine, loopback only. Each flood runs for --seconds
(bounded loops, every socket closed at the end). For every flood it prints the legitimate
requests' median and worst latency and VmRSS before / peak / after (after = once the flood
has stopped and the server has been idle for --settle seconds); at the end the ratio of the
final to the initial VmRSS.

    .venv/bin/python benches/wbem/hostile.py --bin target/release/cosnap

Targets (issue 9): every legitimate request < 2 s during every flood; VmRSS after each
flood within 20 % of the start.
"""

import argparse
import base64
import multiprocessing as mp
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

USER, PASSWORD = "admin", "hostile-bench pw"
NS_XML = ('<LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/>'
          '<NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH>')


def envelope(extra_attrs=""):
    return (f'<?xml version="1.0" encoding="utf-8"?><CIM CIMVERSION="2.0" DTDVERSION="2.0">'
            f'<MESSAGE ID="1" PROTOCOLVERSION="1.0"><SIMPLEREQ><IMETHODCALL{extra_attrs} '
            f'NAME="EnumerateInstanceNames">{NS_XML}<IPARAMVALUE NAME="ClassName">'
            f'<CLASSNAME NAME="Msvm_CollectionSnapshotService"/></IPARAMVALUE></IMETHODCALL>'
            f'</SIMPLEREQ></MESSAGE></CIM>').encode()


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request_bytes(body, auth=None, length=None, extra=""):
    head = ("POST /cimom HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml; charset=\"utf-8\"\r\n"
            "CIMOperation: MethodCall\r\nCIMMethod: EnumerateInstanceNames\r\n"
            "CIMObject: root/virtualization/v2\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n")
    if auth:
        head += f"Authorization: {auth}\r\n"
    return (head + extra + "\r\n").encode() + body


def connect(port, source, timeout=10):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_status(s):
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return None
        data += chunk
    return int(data.split(b" ", 2)[1])


def exchange(port, source, payload, timeout=10):
    try:
        with connect(port, source, timeout) as s:
            try:
                s.sendall(payload)
            except OSError:
                pass  # answered early and closed; the status is still readable
            return read_status(s)
    except OSError:
        return None


def rss_kb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Samples the server's VmRSS every 50 ms and remembers the peak."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.05)


def legit_client(port, stop, latencies):
    payload = request_bytes(envelope(), basic(USER, PASSWORD))
    while not stop.is_set():
        t = time.monotonic()
        status = exchange(port, "127.0.0.1", payload, timeout=30)
        latencies.append((time.monotonic() - t, status))
        time.sleep(0.1)


# -- floods: each runs until `stop` is set ------------------------------------------------

def idle_flood(port, stop, n=640):
    held = []
    for _ in range(n):
        try:
            held.append(connect(port, "127.0.0.2"))
        except OSError:
            pass
    stop.wait()
    for s in held:
        s.close()


def threads(n, target, *args):
    ts = [threading.Thread(target=target, args=args, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def wrong_password_flood(port, stop, n=300):
    payload = request_bytes(envelope(), basic(USER, "wrong"))

    def one():
        while not stop.is_set():
            if exchange(port, "127.0.0.2", payload) == 429:
                time.sleep(0.05)
    threads(n, one)


def body_burst(port, stop, n=100, size=4 * 1024 * 1024 - 1024):
    body = b"<!--" + b"x" * (size - 7) + b"-->"
    payload = request_bytes(body, basic(USER, PASSWORD))
    counter = iter(range(1 << 30))

    def one():
        source = f"127.0.0.{3 + next(counter) % 4}"
        while not stop.is_set():
            exchange(port, source, payload, timeout=60)
    threads(n, one)


def quadratic_xml(port, stop, n=8):
    attrs = envelope("".join(f' a{i}=""' for i in range(80_000)))
    decls = envelope("".join(f' xmlns:n{i}="u"' for i in range(2_000)))
    auth = basic(USER, PASSWORD)

    def one():
        while not stop.is_set():
            for body in (attrs, decls):
                exchange(port, "127.0.0.2", request_bytes(body, auth))
    threads(n, one)


def header_and_continue_flood(port, stop, n=32):
    big_head = request_bytes(b"", basic(USER, PASSWORD), extra=f"X-Filler: {'a' * 100_000}\r\n")
    expect = request_bytes(b"", basic(USER, PASSWORD), length=1 << 30, extra="Expect: 100-continue\r\n")

    def one():
        while not stop.is_set():
            exchange(port, "127.0.0.2", big_head)
            exchange(port, "127.0.0.2", expect)
    threads(n, one)


FLOODS = [
    ("idle connections (640)", idle_flood),
    ("wrong passwords (300 clients)", wrong_password_flood),
    ("4 MiB bodies (100 clients)", body_burst),
    ("quadratic XML (80k attrs / 2k xmlns)", quadratic_xml),
    ("100 KB heads + Expect 1 GiB", header_and_continue_flood),
]


def run_flood(name, flood, port, pid, seconds, settle):
    before = rss_kb(pid)
    sampler = Sampler(pid)
    sampler.start()
    # The attacker runs in its own process so that its threads do not hold the legitimate
    # client's interpreter lock (that would time Python, not the server).
    stop, attack_stop, latencies = threading.Event(), mp.Event(), []
    attacker = mp.Process(target=flood, args=(port, attack_stop), daemon=True)
    attacker.start()
    time.sleep(0.5)  # let the flood build up before timing
    legit = threading.Thread(target=legit_client, args=(port, stop, latencies), daemon=True)
    legit.start()
    time.sleep(seconds)
    stop.set()
    attack_stop.set()
    legit.join()
    attacker.join(timeout=120)
    if attacker.is_alive():
        attacker.kill()
    time.sleep(settle)
    sampler.running = False
    sampler.join()
    after = rss_kb(pid)
    times = sorted(t for t, _ in latencies)
    slow = [f"#{i}: {t * 1000:.0f} ms" for i, (t, _) in enumerate(latencies) if t > 0.5]
    if slow:
        print("  slow legitimate requests:", ", ".join(slow))
    failed = sum(1 for _, s in latencies if s != 200)
    print(f"{name:40s} legit n={len(times):3d} failed={failed} median={times[len(times) // 2] * 1000:7.1f} ms "
          f"worst={times[-1] * 1000:7.1f} ms | VmRSS before={before / 1024:6.1f} MiB "
          f"peak={sampler.peak / 1024:6.1f} MiB after={after / 1024:6.1f} MiB ({after / before:.2f}x)",
          flush=True)
    return times[-1] < 2.0 and failed == 0 and after <= before * 1.2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/cosnap")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--only", help="run only the floods whose name contains this")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = pathlib.Path(tmp) / "data"
        subprocess.run([args.bin, "--data-dir", str(data), "user", "add", USER, "--password-stdin"],
                       input=PASSWORD + "\n", text=True, check=True, capture_output=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(pathlib.Path(tmp) / "serve.log", "w")
        proc = subprocess.Popen([args.bin, "--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while exchange(port, "127.0.0.1", request_bytes(envelope(), basic(USER, PASSWORD))) != 200:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
            time.sleep(1)
            start = rss_kb(proc.pid)
            floods = [(n, f) for n, f in FLOODS if not args.only or args.only in n]
            ok = all([run_flood(name, flood, port, proc.pid, args.seconds, args.settle) for name, flood in floods])
            end = rss_kb(proc.pid)
            print(f"VmRSS start {start / 1024:.1f} MiB, end {end / 1024:.1f} MiB ({end / start:.2f}x)")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print("all targets met" if ok else "TARGETS MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
