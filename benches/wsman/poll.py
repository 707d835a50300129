#!/usr/bin/env python3
"""Load benchmark: job polling by WS-Man Get, side by side with the same polling over /cimom,
while exports run.

Sets up a data directory with one VM on a qcow2 disk full of data, snapshots it, starts
`cosnap serve` (release build) and starts ExportSnapshot jobs back to back (each into a fresh
directory) for the whole run. Meanwhile --procs client processes poll the first export's
Msvm_ConcreteJob over keep-alive HTTP with pre-built request bytes (so the Python client is
cheap per request): WS-Man `transfer/Get` on /wsman and CIM-XML `GetInstance` on /cimom, in
alternating rounds of --seconds each, so both see the same load. Prints requests/s and latency
percentiles per protocol, and the WS-Man/CIM-XML ratios.

    .venv/bin/python benches/wsman/poll.py --bin target/release/cosnap --procs 4 --seconds 10

Target (issue 11): WS-Man >= 2,000 requests/s with p99 < 5 ms on 2 cores.
"""

import argparse
import base64
import importlib.util
import multiprocessing as mp
import pathlib
import socket
import time

# The exporting server, the CIM-XML request and the HTTP reader are the /cimom benchmark's own.
_spec = importlib.util.spec_from_file_location("wbem_poll", pathlib.Path(__file__).parent.parent / "wbem" / "poll.py")
wbem_poll = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wbem_poll)

USER, PASSWORD = wbem_poll.USER, wbem_poll.PASSWORD
V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"


def wsman_get_request(job_id):
    body = ('<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
            'xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>'
            '<wsa:Action s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</wsa:Action>'
            '<wsman:MaxEnvelopeSize s:mustUnderstand="true">153600</wsman:MaxEnvelopeSize>'
            '<wsa:MessageID>uuid:D37762A8-43BA-4BB1-B0D3-66A43714236A</wsa:MessageID>'
            '<wsman:OperationTimeout>PT20S</wsman:OperationTimeout>'
            '<wsa:ReplyTo><wsa:Address s:mustUnderstand="true">'
            'http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>'
            f'<wsman:ResourceURI s:mustUnderstand="true">{V2}Msvm_ConcreteJob</wsman:ResourceURI>'
            '<wsa:To>http://127.0.0.1/wsman</wsa:To><wsman:SelectorSet>'
            f'<wsman:Selector Name="InstanceID">{job_id}</wsman:Selector></wsman:SelectorSet>'
            '</s:Header><s:Body/></s:Envelope>').encode()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    head = ("POST /wsman HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/soap+xml;charset=UTF-8\r\n"
            f"Authorization: Basic {auth}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def worker(port, request, marker, seconds, start_at, out_q):
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
        status, body, buf = wbem_poll.read_response(sock, buf)
        lat.append(time.perf_counter() - t0)
        if status != 200 or marker not in body:
            errors += 1
    sock.close()
    out_q.put((lat, errors))


def summary(lat, errors, seconds):
    lat = sorted(lat)
    n = len(lat)
    pct = lambda p: lat[min(n - 1, int(p * n))] * 1000
    return {"n": n, "errors": errors, "rps": n / seconds, "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
            "max": lat[-1] * 1000}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/cosnap")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per protocol")
    ap.add_argument("--disk-mib", type=int, default=1024)
    args = ap.parse_args()
    cosnap = str(pathlib.Path(args.bin).resolve())

    with wbem_poll.exporting_server(cosnap, args.disk_mib) as (port, conn, start_export, exports_started):
        job = start_export()
        requests = {
            "cimom": (wbem_poll.get_instance_request(job["InstanceID"]), b"<INSTANCE "),
            "wsman": (wsman_get_request(job["InstanceID"]), b"Msvm_ConcreteJob_Type"),
        }
        state = {"current": job, "running": 0, "polls": 0}

        def measure(proto):
            request, marker = requests[proto]
            q = mp.Queue()
            start_at = time.time() + 0.5
            procs = [mp.Process(target=worker, args=(port, request, marker, args.seconds, start_at, q))
                     for _ in range(args.procs)]
            for p in procs:
                p.start()
            deadline = start_at + args.seconds
            while time.time() < deadline:
                js = conn.GetInstance(state["current"])["JobState"]
                state["polls"] += 1
                if js in (3, 4):
                    state["running"] += 1
                else:
                    assert js == 7, js
                    state["current"] = start_export()
                time.sleep(0.05)
            results = [q.get() for _ in procs]
            for p in procs:
                p.join()
            return [x for r in results for x in r[0]], sum(r[1] for r in results)

        totals = {p: ([], 0) for p in requests}
        for _ in range(args.rounds):
            for proto in ("cimom", "wsman"):
                lat, err = measure(proto)
                totals[proto] = (totals[proto][0] + lat, totals[proto][1] + err)
        secs = args.seconds * args.rounds
        print(f"clients: {args.procs} processes, keep-alive, {args.rounds} alternating rounds of {args.seconds:.0f} s "
              f"per protocol; exports started: {exports_started()}; export running in {state['running']}/{state['polls']} samples")
        s = {p: summary(*totals[p], secs) for p in totals}
        for p in ("cimom", "wsman"):
            r = s[p]
            print(f"{p:6} requests: {r['n']}  errors: {r['errors']}  throughput: {r['rps']:.0f} req/s  "
                  f"latency ms: p50 {r['p50']:.2f}  p90 {r['p90']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}")
        print(f"wsman/cimom: throughput x{s['wsman']['rps'] / s['cimom']['rps']:.2f}, "
              f"p99 x{s['wsman']['p99'] / s['cimom']['p99']:.2f}")
        ok = s["wsman"]["rps"] >= 2000 and s["wsman"]["p99"] < 5 and s["wsman"]["errors"] == 0
        print("target (>= 2,000 req/s, p99 < 5 ms, no errors) over WS-Man:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
