#!/usr/bin/env python3
"""An integrated HSU unit in Python: serves hsu.core.v1.Core (Ping, Info, Health, Shutdown) with
grpcio on the address the agent passes in HSU_CORE_ADDR, and exits 0 when the agent calls
Shutdown. Stubs are generated at start from proto/hsu/core/v1/core.proto with grpc_tools (set
HSU_PROTO_DIR when the unit runs outside this repository).

    units:
      - name: py-example
        kind: integrated
        command: [python3, deploy/examples/integrated/unit.py]
        stop: {grace: 10s}

Needs grpcio and grpcio-tools (tests/python/requirements.txt).
"""

import importlib
import os
import signal
import sys
import shutil
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc


def load_stubs():
    from grpc_tools import protoc
    import grpc_tools

    proto_root = Path(os.environ.get("HSU_PROTO_DIR", Path(__file__).resolve().parents[3] / "proto"))
    out = tempfile.mkdtemp(prefix="hsu-core-stubs-")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
                      f"--python_out={out}", f"--grpc_python_out={out}", "hsu/core/v1/core.proto"])
    if rc != 0:
        sys.exit(f"protoc exited {rc} on {proto_root}/hsu/core/v1/core.proto")
    sys.path.insert(0, out)
    try:
        return importlib.import_module("hsu.core.v1.core_pb2"), importlib.import_module("hsu.core.v1.core_pb2_grpc")
    finally:
        # Imported modules live in memory: the generated files are not needed any more.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)


def main():
    addr = os.environ.get("HSU_CORE_ADDR")
    if not addr:
        sys.exit("HSU_CORE_ADDR is not set: run this as an integrated unit of an HSU agent")
    pb, pb_grpc = load_stubs()
    shutdown = threading.Event()
    grace = {"ms": 0}

    class Core(pb_grpc.CoreServicer):
        def Ping(self, request, context):
            return pb.PingResponse(payload=request.payload)

        def Info(self, request, context):
            return pb.InfoResponse(name="py-example", version="0.0.0", runtime="python/grpcio", pid=os.getpid())

        def Health(self, request, context):
            if shutdown.is_set():
                return pb.HealthResponse(status=pb.HEALTH_STATUS_NOT_SERVING, message="shutting down")
            return pb.HealthResponse(status=pb.HEALTH_STATUS_SERVING)

        def Shutdown(self, request, context):
            grace["ms"] = request.grace_ms
            shutdown.set()
            return pb.ShutdownResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoreServicer_to_server(Core(), server)
    server.add_insecure_port(addr)
    server.start()
    print(f"serving hsu.core.v1.Core on {addr}", flush=True)
    # A signal (the agent's fallback) is not the clean path: say so and exit non-zero.
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), os._exit(143)))
    shutdown.wait()
    print(f"shutdown requested (grace {grace['ms']} ms); exiting cleanly", flush=True)
    # Let the Shutdown answer leave, then stop serving.
    server.stop(grace=1.0).wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
