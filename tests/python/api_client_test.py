#!/usr/bin/env python3
"""The HSU gRPC API as seen by a client nobody here wrote: Python's grpcio.

Starts a one-node cluster (`hsu node init`) on two free 127.0.0.1 ports in a temporary data
directory, generates Python stubs from proto/ with grpc_tools.protoc at run time, and checks the
Cluster and KV services, grpc.health.v1, server reflection (v1) and authentication (mutual TLS,
no credentials, read-only bearer token).

    python3 tests/python/api_client_test.py --hsu target/debug/hsu

Prints one line per check, then `N passed, M failed`; exits 0 only when nothing failed. The node
is always stopped (SIGTERM, then SIGKILL) and the temporary directories removed. Every wait has
a deadline, and every address used is on 127.0.0.1.
"""

import argparse
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
# The messages of grpc.reflection.v1 and v1alpha are the same on the wire; grpcio-reflection
# ships Python classes only for v1alpha (and its client speaks only v1alpha), while the server
# serves v1. So the v1 method is called by name with these classes.
from grpc_reflection.v1alpha import reflection_pb2
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
RPC_TIMEOUT = 10.0  # seconds, for every single RPC
START_DEADLINE = 60.0  # seconds, for the node to write admin.conf and answer
CLI_TIMEOUT = 30.0  # seconds, for one `hsu` CLI command
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
TLS_NAME = "api.hsu"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def expect_code(fn, code, what):
    """Runs fn, which must fail with the gRPC status `code`."""
    try:
        fn()
    except grpc.RpcError as e:
        expect(e.code() == code, f"{what}: expected {code.name}, got {e.code().name}: {e.details()}")
        return e
    raise CheckFailed(f"{what}: expected {code.name}, but the call succeeded")


# ---------------------------------------------------------------------------------------------
# Set-up helpers


def generate_stubs(out_dir):
    """Runs protoc (from grpcio-tools) over proto/hsu/v1/*.proto into out_dir and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    proto_root = REPO / "proto"
    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "hsu" / "v1").glob("*.proto"))
    expect(protos, f"no .proto files under {proto_root / 'hsu' / 'v1'}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    # protoc resolves the relative proto names against the include paths.
    rc = protoc.main(args)
    expect(rc == 0, f"protoc exited {rc}")
    sys.path.insert(0, str(out_dir))
    mods = {}
    for name in ("cluster_pb2", "cluster_pb2_grpc", "kv_pb2", "kv_pb2_grpc"):
        mods[name] = importlib.import_module(f"hsu.v1.{name}")
    return mods


def free_port(taken):
    """A 127.0.0.1 port that is free for both TCP and UDP right now (QUIC listens on UDP)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port in taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((HOST, port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise CheckFailed("found no free port")


def channel(api_port, ca, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(
        f"{HOST}:{api_port}",
        creds,
        options=[
            ("grpc.ssl_target_name_override", TLS_NAME),
            ("grpc.default_authority", TLS_NAME),
            # Never route through an http(s)_proxy from the environment: loopback only.
            ("grpc.enable_http_proxy", 0),
        ],
    )


def log_tail(path, lines=30):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join("    | " + line for line in text[-lines:])


# ---------------------------------------------------------------------------------------------
# The run


class Run:
    def __init__(self, hsu, start_deadline=START_DEADLINE):
        self.hsu = hsu
        self.start_deadline = start_deadline
        self.results = []  # (name, ok, detail)
        self.tmp = Path(tempfile.mkdtemp(prefix="hsu-py-"))
        self.data_dir = self.tmp / "data"
        self.stub_dir = self.tmp / "stubs"
        self.stub_dir.mkdir()
        self.log_path = self.tmp / "node.log"
        self.proc = None
        self.log_file = None
        self.channels = []
        self.setup_failed = False

    # -- bookkeeping

    def check(self, name, fn, critical=False):
        if self.setup_failed:
            self.results.append((name, False, "not run: set-up failed"))
            print(f"FAIL  {name}: not run, set-up failed", flush=True)
            return
        try:
            detail = fn()
            self.results.append((name, True, detail))
            print(f"PASS  {name}" + (f" ({detail})" if detail else ""), flush=True)
        except CheckFailed as e:
            self.fail(name, str(e), critical)
        except grpc.RpcError as e:
            self.fail(name, f"unexpected RPC error {e.code().name}: {e.details()}", critical)
        except Exception as e:  # noqa: BLE001 -- any bug in a check is a failed check
            self.fail(name, f"{type(e).__name__}: {e}\n{traceback.format_exc()}", critical)

    def fail(self, name, detail, critical):
        self.results.append((name, False, detail))
        print(f"FAIL  {name}: {detail}", flush=True)
        if critical:
            self.setup_failed = True
            print(f"  node log ({self.log_path}):\n{log_tail(self.log_path)}", flush=True)

    def channel(self, **kw):
        ch = channel(self.api_port, **kw)
        self.channels.append(ch)
        return ch

    # -- set-up

    def gen_stubs(self):
        self.pb = generate_stubs(self.stub_dir)
        return f"{len(self.pb)} modules"

    def start_node(self):
        taken = set()
        self.listen_port = free_port(taken)
        self.api_port = free_port(taken)
        cmd = [self.hsu, "node", "init", "--data-dir", str(self.data_dir),
               "--listen", f"{HOST}:{self.listen_port}", "--api", f"{HOST}:{self.api_port}", "--name", "n1"]
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        conf_path = self.data_dir / "admin.conf"
        deadline = time.monotonic() + self.start_deadline
        last = "admin.conf not written yet"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise CheckFailed(f"hsu node init exited with {rc} before the API answered")
            if time.monotonic() > deadline:
                raise CheckFailed(f"no answer within {self.start_deadline:.0f}s; last: {last}")
            if conf_path.exists():
                try:
                    self.load_conf(conf_path)
                    ch = channel(self.api_port, ca=self.ca, cert=self.cert, key=self.key)
                    try:
                        stub = self.pb["cluster_pb2_grpc"].ClusterStub(ch)
                        stub.Status(self.pb["cluster_pb2"].StatusRequest(), timeout=2.0, wait_for_ready=False)
                        took = self.start_deadline - (deadline - time.monotonic())
                        return f"api {HOST}:{self.api_port}, quic {HOST}:{self.listen_port}, {took:.1f}s"
                    finally:
                        ch.close()
                except grpc.RpcError as e:
                    last = f"{e.code().name}: {e.details()}"
                except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
                    last = f"admin.conf: {type(e).__name__}: {e}"
            time.sleep(0.1)

    def load_conf(self, path):
        conf = yaml.safe_load(path.read_text())
        self.conf = conf
        self.ca = conf["ca"].encode()
        self.cert = conf["cert"].encode()
        self.key = conf["key"].encode()

    def connect(self):
        admin = self.channel(ca=self.ca, cert=self.cert, key=self.key)
        self.cluster = self.pb["cluster_pb2_grpc"].ClusterStub(admin)
        self.kv = self.pb["kv_pb2_grpc"].KVStub(admin)
        self.health = health_pb2_grpc.HealthStub(admin)
        self.admin_channel = admin
        anon = self.channel(ca=self.ca)
        self.anon_cluster = self.pb["cluster_pb2_grpc"].ClusterStub(anon)
        self.anon_kv = self.pb["kv_pb2_grpc"].KVStub(anon)
        self.anon_health = health_pb2_grpc.HealthStub(anon)
        self.anon_channel = anon

    # -- checks: admin.conf and Cluster

    def check_admin_conf(self):
        c = self.conf
        expect(c.get("endpoint") == f"{HOST}:{self.api_port}",
               f"endpoint is {c.get('endpoint')!r}, expected {HOST}:{self.api_port}")
        for k in ("ca", "cert", "key"):
            expect(isinstance(c.get(k), str) and "-----BEGIN " in c[k], f"{k} is not PEM")
        expect(c["cert"].count("-----BEGIN CERTIFICATE-----") >= 1, "cert has no certificate")

    def check_status(self):
        s = self.cluster.Status(self.pb["cluster_pb2"].StatusRequest(), timeout=RPC_TIMEOUT)
        expect(s.leader == "n1", f"leader is {s.leader!r}, expected 'n1'")
        expect(len(s.members) == 1, f"{len(s.members)} members, expected 1")
        m = s.members[0]
        expect(m.role == "voter", f"the member's role is {m.role!r}, expected 'voter'")
        expect(m.name == "n1", f"the member's name is {m.name!r}")
        expect(s.term >= 1, f"term is {s.term}")
        expect(s.leader_id == m.id, f"leader_id {s.leader_id} is not the member's id {m.id}")
        expect(m.api_address == f"{HOST}:{self.api_port}", f"api_address is {m.api_address!r}")
        expect(m.address == f"{HOST}:{self.listen_port}", f"address is {m.address!r}")
        expect(s.commit_index >= 1, f"commit_index is {s.commit_index}")
        return f"leader n1, term {s.term}, commit {s.commit_index}, cluster {s.cluster_name!r}"

    # -- checks: KV

    def get(self, key, kv=None, metadata=None):
        r = (kv or self.kv).Range(self.pb["kv_pb2"].RangeRequest(key=key), timeout=RPC_TIMEOUT, metadata=metadata)
        expect(len(r.kvs) <= 1, f"Range of one key returned {len(r.kvs)} kvs")
        return r.kvs[0] if r.kvs else None

    def check_put(self):
        r = self.kv.Put(self.pb["kv_pb2"].PutRequest(key=b"py/hello", value=b"world"), timeout=RPC_TIMEOUT)
        expect(r.header.revision > 0, f"header.revision is {r.header.revision}")
        self.rev1 = r.header.revision
        return f"revision {self.rev1}"

    def check_range(self):
        kv = self.get(b"py/hello")
        expect(kv is not None, "py/hello not found")
        expect(kv.key == b"py/hello", f"key is {kv.key!r}")
        expect(kv.value == b"world", f"value is {kv.value!r}")
        expect(kv.mod_revision == self.rev1, f"mod_revision {kv.mod_revision} != Put's revision {self.rev1}")
        expect(kv.create_revision == self.rev1, f"create_revision {kv.create_revision} != {self.rev1}")
        expect(kv.version == 1, f"version is {kv.version}")
        return f"mod_revision {kv.mod_revision}"

    def cas(self, expected_rev, new_value):
        kv = self.pb["kv_pb2"]
        req = kv.TxnRequest(
            compare=[kv.Compare(key=b"py/hello", target=kv.Compare.MOD_REVISION, result=kv.Compare.EQUAL,
                                number=expected_rev)],
            success=[kv.RequestOp(put=kv.PutRequest(key=b"py/hello", value=new_value))],
            failure=[kv.RequestOp(range=kv.RangeRequest(key=b"py/hello"))],
        )
        return self.kv.Txn(req, timeout=RPC_TIMEOUT)

    def check_cas_ok(self):
        r = self.cas(self.rev1, b"world2")
        expect(r.succeeded, "the compare on the current mod_revision did not hold")
        expect(len(r.responses) == 1 and r.responses[0].WhichOneof("response") == "put",
               f"responses are {[x.WhichOneof('response') for x in r.responses]}, expected ['put']")
        expect(r.header.revision > self.rev1, f"txn revision {r.header.revision} not after {self.rev1}")
        self.rev2 = r.header.revision
        kv = self.get(b"py/hello")
        expect(kv is not None and kv.value == b"world2", f"value after CAS is {kv and kv.value!r}")
        expect(kv.mod_revision == self.rev2, f"mod_revision {kv.mod_revision} != txn revision {self.rev2}")
        expect(kv.create_revision == self.rev1, f"create_revision changed to {kv.create_revision}")
        expect(kv.version == 2, f"version is {kv.version}, expected 2")
        return f"revision {self.rev2}"

    def check_cas_stale(self):
        r = self.cas(self.rev1, b"stale")  # rev1 is no longer the key's mod_revision
        expect(not r.succeeded, "a compare on a stale mod_revision succeeded")
        expect(len(r.responses) == 1 and r.responses[0].WhichOneof("response") == "range",
               f"responses are {[x.WhichOneof('response') for x in r.responses]}, expected the failure range")
        got = r.responses[0].range.kvs
        expect(len(got) == 1 and got[0].value == b"world2", f"the failure branch read {list(got)}")
        kv = self.get(b"py/hello")
        expect(kv.value == b"world2", f"value changed to {kv.value!r}")
        expect(kv.mod_revision == self.rev2, f"mod_revision changed from {self.rev2} to {kv.mod_revision}")
        expect(kv.version == 2, f"version changed to {kv.version}")
        return "succeeded=False, nothing changed"

    def check_prefix(self):
        kv = self.pb["kv_pb2"]
        for k, v in ((b"py/zz", b"z"), (b"pz/outside", b"o"), (b"py", b"no slash")):
            self.kv.Put(kv.PutRequest(key=k, value=v), timeout=RPC_TIMEOUT)
        r = self.kv.Range(kv.RangeRequest(key=b"py/", prefix=True), timeout=RPC_TIMEOUT)
        keys = [x.key for x in r.kvs]
        expect(keys == [b"py/hello", b"py/zz"], f"prefix py/ returned {keys}")
        expect([x.value for x in r.kvs] == [b"world2", b"z"], f"values {[x.value for x in r.kvs]}")
        expect(not r.more, "more is set without a limit")
        r = self.kv.Range(kv.RangeRequest(key=b"py/", prefix=True, limit=1), timeout=RPC_TIMEOUT)
        expect([x.key for x in r.kvs] == [b"py/hello"] and r.more,
               f"limit 1 returned {[x.key for x in r.kvs]}, more={r.more}")
        r = self.kv.Range(kv.RangeRequest(key=b"py/", prefix=True, keys_only=True), timeout=RPC_TIMEOUT)
        expect([x.key for x in r.kvs] == [b"py/hello", b"py/zz"] and all(not x.value for x in r.kvs),
               "keys_only returned values")
        return "2 keys, sorted; limit and keys_only honoured"

    # -- checks: health

    def health_status(self, stub, service):
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT).status

    def check_health_overall(self):
        st = self.health_status(self.health, "")
        expect(st == health_pb2.HealthCheckResponse.SERVING,
               f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(st)}")
        return "SERVING"

    def check_health_services(self):
        # The server registers a status for each of its own services.
        for svc in ("hsu.v1.KV", "hsu.v1.Cluster"):
            st = self.health_status(self.health, svc)
            expect(st == health_pb2.HealthCheckResponse.SERVING,
                   f"{svc}: {health_pb2.HealthCheckResponse.ServingStatus.Name(st)}")
        expect_code(lambda: self.health_status(self.health, "no.such.Service"), grpc.StatusCode.NOT_FOUND,
                    "Check of an unknown service")
        return "hsu.v1.KV and hsu.v1.Cluster SERVING, unknown NOT_FOUND"

    def check_health_anonymous(self):
        # Health is for load balancers and probes: it answers without credentials.
        st = self.health_status(self.anon_health, "")
        expect(st == health_pb2.HealthCheckResponse.SERVING,
               f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(st)}")
        return "SERVING without credentials"

    # -- checks: reflection

    def reflect(self, ch, requests, method=REFLECTION_V1):
        call = ch.stream_stream(method,
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        return list(call(iter(requests), timeout=RPC_TIMEOUT))

    def check_reflection_list(self):
        (resp,) = self.reflect(self.admin_channel, [reflection_pb2.ServerReflectionRequest(list_services="")])
        expect(resp.WhichOneof("message_response") == "list_services_response",
               f"answer is {resp.WhichOneof('message_response')}: {resp}")
        names = sorted(s.name for s in resp.list_services_response.service)
        for want in ("hsu.v1.Cluster", "hsu.v1.KV", "grpc.health.v1.Health"):
            expect(want in names, f"{want} not in {names}")
        return ", ".join(names)

    def check_reflection_descriptor(self):
        (resp,) = self.reflect(self.admin_channel,
                               [reflection_pb2.ServerReflectionRequest(file_containing_symbol="hsu.v1.KV")])
        expect(resp.WhichOneof("message_response") == "file_descriptor_response",
               f"answer is {resp.WhichOneof('message_response')}: {resp}")
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in resp.file_descriptor_response.file_descriptor_proto]
        services = {f"{f.package}.{s.name}": [m.name for m in s.method] for f in files for s in f.service}
        expect("hsu.v1.KV" in services, f"no hsu.v1.KV in the descriptors: {sorted(services)}")
        want = [m.name for m in self.pb["kv_pb2"].DESCRIPTOR.services_by_name["KV"].methods]
        expect(services["hsu.v1.KV"] == want, f"KV methods {services['hsu.v1.KV']} != proto/ {want}")
        return f"KV: {len(want)} methods, as in proto/"

    def check_reflection_anonymous(self):
        (resp,) = self.reflect(self.anon_channel, [reflection_pb2.ServerReflectionRequest(list_services="")])
        expect(resp.WhichOneof("message_response") == "list_services_response",
               f"answer is {resp.WhichOneof('message_response')}")
        return "answers without credentials"

    def check_reflection_v1alpha(self):
        # v1alpha is served too, for older clients (grpcio-reflection's own client, old grpcurl).
        (resp,) = self.reflect(self.admin_channel, [reflection_pb2.ServerReflectionRequest(list_services="")],
                               method=REFLECTION_V1ALPHA)
        names = sorted(s.name for s in resp.list_services_response.service)
        for want in ("hsu.v1.Cluster", "hsu.v1.KV", "grpc.health.v1.Health"):
            expect(want in names, f"{want} not in {names}")
        return ", ".join(names)

    # -- checks: authentication and authorisation

    def check_anonymous_refused(self):
        pb = self.pb
        expect_code(lambda: self.anon_kv.Range(pb["kv_pb2"].RangeRequest(key=b"py/hello"), timeout=RPC_TIMEOUT),
                    grpc.StatusCode.UNAUTHENTICATED, "KV.Range without credentials")
        expect_code(lambda: self.anon_kv.Put(pb["kv_pb2"].PutRequest(key=b"py/anon", value=b"x"),
                                             timeout=RPC_TIMEOUT),
                    grpc.StatusCode.UNAUTHENTICATED, "KV.Put without credentials")
        expect_code(lambda: self.anon_cluster.Status(pb["cluster_pb2"].StatusRequest(), timeout=RPC_TIMEOUT),
                    grpc.StatusCode.UNAUTHENTICATED, "Cluster.Status without credentials")
        return "Range, Put, Status: UNAUTHENTICATED"

    def check_bad_token_refused(self):
        md = (("authorization", "Bearer not-a-real-token"),)
        expect_code(lambda: self.anon_kv.Range(self.pb["kv_pb2"].RangeRequest(key=b"py/hello"),
                                               timeout=RPC_TIMEOUT, metadata=md),
                    grpc.StatusCode.UNAUTHENTICATED, "KV.Range with a made-up bearer token")
        md = (("authorization", "Basic Zm9vOmJhcg=="),)
        expect_code(lambda: self.anon_kv.Range(self.pb["kv_pb2"].RangeRequest(key=b"py/hello"),
                                               timeout=RPC_TIMEOUT, metadata=md),
                    grpc.StatusCode.UNAUTHENTICATED, "KV.Range with a non-bearer authorization")
        return "UNAUTHENTICATED"

    def check_create_ro_token(self):
        cmd = [self.hsu, "--config", str(self.data_dir / "admin.conf"),
               "token", "create", "--api", "--role", "read-only", "-o", "json"]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        expect(p.returncode == 0, f"`{' '.join(cmd[1:])}` exited {p.returncode}: {p.stderr.strip()}")
        import json
        out = json.loads(p.stdout)
        expect(isinstance(out.get("token"), str) and out["token"], f"no token in {p.stdout!r}")
        self.ro_md = (("authorization", f"Bearer {out['token']}"),)
        return f"token id {out.get('id')}"

    def check_ro_range(self):
        kv = self.get(b"py/hello", kv=self.anon_kv, metadata=self.ro_md)
        expect(kv is not None and kv.value == b"world2", f"read-only Range returned {kv}")
        return "value world2"

    def check_cluster_records_unreachable(self):
        # The KV API's key space holds only what clients wrote: the cluster's own records (the CA
        # and its key, tokens, nodes) are not under it, for any credential.
        pb = self.pb
        for kv_stub, md, who in ((self.anon_kv, self.ro_md, "read-only"), (self.kv, None, "admin")):
            resp = kv_stub.Range(pb["kv_pb2"].RangeRequest(key=b"", prefix=True), timeout=RPC_TIMEOUT, metadata=md)
            keys = sorted(kv.key for kv in resp.kvs)
            written = {b"py/hello", b"py/zz", b"pz/outside", b"py"}
            expect(set(keys) == written, f"{who} sees {keys}, the script wrote {sorted(written)}")
            expect(not any(b"PRIVATE KEY" in kv.value for kv in resp.kvs), f"{who} reads a private key")
        return f"{len(keys)} keys, all written by this script"

    def check_ro_write_denied(self):
        kv = self.pb["kv_pb2"]
        expect_code(lambda: self.anon_kv.Put(kv.PutRequest(key=b"py/hello", value=b"ro"),
                                             timeout=RPC_TIMEOUT, metadata=self.ro_md),
                    grpc.StatusCode.PERMISSION_DENIED, "read-only Put")
        expect_code(lambda: self.anon_kv.Txn(kv.TxnRequest(success=[kv.RequestOp(
                        put=kv.PutRequest(key=b"py/hello", value=b"ro-txn"))]),
                        timeout=RPC_TIMEOUT, metadata=self.ro_md),
                    grpc.StatusCode.PERMISSION_DENIED, "read-only Txn with a put")
        expect_code(lambda: self.anon_kv.Delete(kv.DeleteRequest(key=b"py/hello"),
                                                timeout=RPC_TIMEOUT, metadata=self.ro_md),
                    grpc.StatusCode.PERMISSION_DENIED, "read-only Delete")
        return "Put, Txn(put), Delete: PERMISSION_DENIED"

    def check_ro_unchanged(self):
        kv = self.get(b"py/hello")
        expect(kv is not None, "py/hello is gone")
        expect(kv.value == b"world2", f"value is now {kv.value!r}")
        expect(kv.mod_revision == self.rev2, f"mod_revision is now {kv.mod_revision}, was {self.rev2}")
        expect(kv.version == 2, f"version is now {kv.version}")
        return "value and mod_revision unchanged"

    # -- driver

    def run(self):
        c = self.check
        c("protoc generates stubs from proto/", self.gen_stubs, critical=True)
        c("hsu node init starts and the API answers", self.start_node, critical=True)
        c("connect", self.connect, critical=True)
        c("admin.conf: endpoint and PEM material", self.check_admin_conf)
        c("Cluster.Status: leader n1, one voter, term >= 1", self.check_status)
        c("KV.Put py/hello=world: header revision > 0", self.check_put)
        c("KV.Range py/hello: value and mod_revision", self.check_range)
        c("KV.Txn CAS on the current mod_revision succeeds", self.check_cas_ok)
        c("KV.Txn CAS on a stale mod_revision fails, changes nothing", self.check_cas_stale)
        c("KV.Range prefix py/", self.check_prefix)
        c("Health.Check '' is SERVING", self.check_health_overall)
        c("Health.Check per service", self.check_health_services)
        c("Health.Check without credentials", self.check_health_anonymous)
        c("reflection v1 lists Cluster, KV, Health", self.check_reflection_list)
        c("reflection v1 file_containing_symbol hsu.v1.KV", self.check_reflection_descriptor)
        c("reflection v1 without credentials", self.check_reflection_anonymous)
        c("reflection v1alpha lists Cluster, KV, Health", self.check_reflection_v1alpha)
        c("no credentials: UNAUTHENTICATED", self.check_anonymous_refused)
        c("bad bearer token: UNAUTHENTICATED", self.check_bad_token_refused)
        c("hsu token create --api --role read-only", self.check_create_ro_token)
        c("read-only token: Range works", self.check_ro_range)
        c("KV cannot reach the cluster's own records (CA key, tokens)", self.check_cluster_records_unreachable)
        c("read-only token: writes PERMISSION_DENIED", self.check_ro_write_denied)
        c("read-only token: value unchanged", self.check_ro_unchanged)

    def stop(self):
        for ch in self.channels:
            try:
                ch.close()
            except Exception:  # noqa: BLE001
                pass
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                print(f"note: hsu did not stop within {STOP_GRACE:.0f}s of SIGTERM; killing it", flush=True)
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=STOP_GRACE)
        if self.log_file is not None:
            self.log_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hsu", default=str(REPO / "target" / "debug" / "hsu"), help="the hsu binary")
    ap.add_argument("--start-timeout", type=float, default=START_DEADLINE,
                    help="seconds for the node to write admin.conf and answer (default %(default)s)")
    args = ap.parse_args()
    hsu = str(Path(args.hsu).resolve())
    if not os.access(hsu, os.X_OK):
        print(f"FAIL  hsu binary: {hsu} is not an executable file (build it: cargo build -p hsu-cli)")
        print("0 passed, 1 failed")
        return 1

    # SIGTERM (e.g. from a CI timeout) unwinds through `finally`, so the node is stopped.
    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    run = Run(hsu, args.start_timeout)
    try:
        run.run()
    except (KeyboardInterrupt, SystemExit) as e:
        what = "SIGINT" if isinstance(e, KeyboardInterrupt) else f"exit {e.code}"
        run.results.append(("interrupted", False, what))
        print(f"FAIL  interrupted ({what}); stopping the node", flush=True)
    finally:
        # Stopping is bounded (SIGTERM, then SIGKILL); a second signal must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run.stop()
    passed = sum(1 for _, ok, _ in run.results if ok)
    failed = len(run.results) - passed
    print(f"took {time.monotonic() - start:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
