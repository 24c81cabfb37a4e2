#!/usr/bin/env python3
"""The Python integrated unit (deploy/examples/integrated/unit.py) under a real `hsu agent run`:
it becomes ready through Core/Health, answers Ping and Info, and when the agent stops it (on
SIGTERM to the agent) the stop goes through Core/Shutdown: the unit exits cleanly within its
grace period and never sees a signal.

    python3 tests/python/integrated_unit_test.py --hsu target/debug/hsu

Every wait has a deadline; the agent and the unit are always stopped.
"""

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0


def wait_for(what, fn):
    end = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported if the deadline passes
            last = e
        time.sleep(0.1)
    raise SystemExit(f"FAIL: timed out waiting for {what} (last error: {last})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hsu", required=True)
    args = ap.parse_args()
    hsu = str(Path(args.hsu).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="hsu-py-integrated-"))
    data = tmp / "data"
    units = tmp / "units.yaml"
    units.write_text(
        "units:\n"
        "  - name: py-example\n"
        "    kind: integrated\n"
        f"    command: [{json.dumps(sys.executable)}, {json.dumps(str(REPO / 'deploy/examples/integrated/unit.py'))}]\n"
        "    stop: {grace: 10s}\n"
    )
    agent = subprocess.Popen([hsu, "agent", "run", "--units", str(units), "--data-dir", str(data)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp / "agent.log", "w"))
    passed = 0
    try:
        def status():
            out = subprocess.run([hsu, "agent", "status", "--data-dir", str(data), "-o", "json"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode != 0:
                return None
            units = json.loads(out.stdout)
            return units[0] if units and units[0]["ready"] else None

        s = wait_for("py-example to be ready (Core/Health SERVING)", status)
        print(f"ok: ready through Core/Health, core at {s['core_addr']}")
        passed += 1

        sys.path.insert(0, str(REPO / "deploy/examples/integrated"))
        unit = importlib.import_module("unit")
        pb, pb_grpc = unit.load_stubs()
        with grpc.insecure_channel(s["core_addr"]) as ch:
            core = pb_grpc.CoreStub(ch)
            assert core.Ping(pb.PingRequest(payload=b"hi"), timeout=5).payload == b"hi"
            info = core.Info(pb.InfoRequest(), timeout=5)
            assert (info.runtime, info.pid) == ("python/grpcio", s["pid"]), info
            health = core.Health(pb.HealthRequest(), timeout=5)
            assert health.status == pb.HEALTH_STATUS_SERVING, health
        print("ok: Ping, Info and Health answer")
        passed += 1

        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=DEADLINE)
        took = time.monotonic() - started
        log = (data / "units/py-example/stdout.log").read_text()
        assert rc == 0, f"agent exited {rc}"
        assert "shutdown requested (grace 10000 ms); exiting cleanly" in log, log
        assert "got SIGTERM" not in log, log
        assert took < 10.0, f"stop took {took:.1f}s, past the 10s grace"
        assert not Path(f"/proc/{s['pid']}").exists() or "Z" in Path(f"/proc/{s['pid']}/stat").read_text().split(")")[1][:3]
        print(f"ok: stopped through Core/Shutdown in {took:.2f}s, exit clean, no signal")
        passed += 1
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if passed < 3:
            print((tmp / "agent.log").read_text(), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
