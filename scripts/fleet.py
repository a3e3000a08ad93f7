"""A fleet around one demo stack: a three-member etcd cluster (Debian's etcd 3.4), a second
blobsteer Envoy (replica B) beside the stack's own (replica A), both with the fleet's store
configured (`manifests.store`), and a balancer (a plain Envoy) that sends the tag requests of
clients in aws-eu-west-3 to replica A and their requests by digest to replica B.

Ports, from the stack's base port (its main listener's): replica B's main listener +20, admin
+21, client listeners +30..+34 (the stack's +10..+14 shifted by 20); the balancer +40, its
admin +41; etcd client ports +70..+72, peer ports +73..+75. Everything binds 127.0.0.1; data and
logs are under `<run_dir>/fleet/`.

    fleet = Fleet(stack); fleet.start(); ...; fleet.stop()

Command line: `fleet.py run [--live]` brings the stack up as a fleet (`make run FLEET=1`; with
`LIVE=1` both replicas read the filter's configuration from the one ECDS resource).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import sys
from pathlib import Path

import stack as stk

ETCD_MEMBERS = 3
EU = "aws-eu-west-3"
REPLICA_B_SHIFT = 20
BALANCER_OFFSET = 40
ETCD_CLIENT_OFFSET = 70
ETCD_PEER_OFFSET = 73
STORE_PREFIX = "/blobsteer/demo/"


def store_settings(timeout_ms: int = 500) -> dict:
    """The filter's `manifests.store` for the fleet."""
    return {"cluster": "etcd", "prefix": STORE_PREFIX, "ttl_s": 86_400, "timeout_ms": timeout_ms}


def etcd_ports(base: int) -> tuple[list[int], list[int]]:
    """The members' client and peer ports."""
    clients = [base + ETCD_CLIENT_OFFSET + i for i in range(ETCD_MEMBERS)]
    peers = [base + ETCD_PEER_OFFSET + i for i in range(ETCD_MEMBERS)]
    return clients, peers


def etcd_cluster_yaml(base: int) -> str:
    """The Envoy cluster `etcd` (envoy/fleet-etcd.yaml.in) for the members from `base`."""
    clients, _ = etcd_ports(base)
    values = {f"BLOBSTEER_ETCD_{i}_PORT": port for i, port in enumerate(clients)}
    return "\n" + stk.render_template(stk.ENVOY_DIR / "fleet-etcd.yaml.in", values)


class EtcdMember(stk.ManagedProcess):
    """One member of the cluster, with its data directory under `run_dir`. Ready once its peer
    port listens: a member serves clients only once the cluster has a leader, which needs the
    others started too (see `EtcdCluster.start`)."""

    def __init__(self, run_dir: Path, index: int, clients: list[int], peers: list[int]):
        super().__init__(f"etcd-{index}", run_dir, run_dir / f"etcd-{index}.log")
        self.index = index
        self.client_port = clients[index]
        self.peer_port = peers[index]
        self.cluster = ",".join(f"etcd-{i}=http://{stk.LOOPBACK}:{p}" for i, p in enumerate(peers))

    def command(self) -> list[str]:
        client = f"http://{stk.LOOPBACK}:{self.client_port}"
        peer = f"http://{stk.LOOPBACK}:{self.peer_port}"
        return [
            "etcd", "--name", self.name, "--data-dir", str(self.run_dir / f"{self.name}.data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "blobsteer-fleet", "--log-level", "warn",
        ]  # fmt: skip

    def ready(self) -> bool:
        return not stk.port_is_free(self.peer_port)

    def healthy(self) -> bool:
        """Whether this member answers `/health` with a leader."""
        try:
            status, _, body = stk.http_request(self.client_port, "/health", timeout=1.0)
        except OSError:
            return False
        return status == 200 and json.loads(body or b"{}").get("health") == "true"


class EtcdCluster:
    """Three members on loopback; `start` returns once every running member is healthy."""

    def __init__(self, run_dir: Path, base: int):
        clients, peers = etcd_ports(base)
        self.members = [EtcdMember(run_dir, i, clients, peers) for i in range(ETCD_MEMBERS)]

    def start(self) -> None:
        """Start every member that is not running (a stopped one rejoins with its data)."""
        for member in self.members:
            if member.alive():
                continue
            for port in (member.client_port, member.peer_port):
                if not stk.port_is_free(port):
                    raise stk.PortInUse(f"port {port} for {member.name} is already in use")
            member.start()
        self.wait_healthy()
        self.wait_writable()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        running = [m for m in self.members if m.alive()]
        stk.wait_for(lambda: all(m.healthy() for m in running), "the etcd members to be healthy", timeout)

    def leader(self) -> EtcdMember:
        """The member that leads the cluster now (etcdctl endpoint status)."""
        endpoints = ",".join(f"{stk.LOOPBACK}:{m.client_port}" for m in self.members if m.alive())
        argv = ["etcdctl", "--endpoints", endpoints, "endpoint", "status", "--write-out", "json"]
        statuses = json.loads(stk.run_command(argv, env={"ETCDCTL_API": "3"}).stdout)
        for status in statuses:
            if status["Status"]["header"]["member_id"] == status["Status"]["leader"]:
                port = int(status["Endpoint"].rpartition(":")[2])
                return next(m for m in self.members if m.client_port == port)
        raise RuntimeError(f"no leader among {statuses}")

    def wait_writable(self, timeout: float = 30.0) -> None:
        """Until a write through the JSON gateway of every running member succeeds, as the
        filter writes: after a leader stops, `/health` may still say yes while the others elect
        a new one, and for a moment after, a member may still refuse writes (`leader changed`)
        although another takes them."""
        running = [m for m in self.members if m.alive()]
        probe = json.dumps({"key": base64.b64encode(b"/blobsteer-probe").decode(), "value": "eA=="})

        def written(member: EtcdMember) -> bool:
            try:
                status, _, _ = stk.http_request(
                    member.client_port, "/v3/kv/put", "POST", timeout=1.0, body=probe.encode()
                )
            except OSError:
                return False
            return status == 200

        stk.wait_for(lambda: all(written(m) for m in running), "a write through every etcd member to succeed", timeout)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def get(self, key_prefix: str) -> dict[str, str]:
        """Every key under `key_prefix` and its value, as etcd holds them (etcdctl)."""
        endpoints = ",".join(f"{stk.LOOPBACK}:{m.client_port}" for m in self.members if m.alive())
        argv = ["etcdctl", "--endpoints", endpoints, "get", "--prefix", key_prefix, "--write-out", "json"]
        out = json.loads(stk.run_command(argv, env={"ETCDCTL_API": "3"}).stdout)
        decode = base64.b64decode
        return {decode(kv["key"]).decode(): decode(kv["value"]).decode() for kv in out.get("kvs", [])}


@dataclasses.dataclass
class Replica:
    """A blobsteer Envoy of the fleet other than the stack's own."""

    name: str
    ports: stk.Ports
    envoy: stk.EnvoyProcess
    access_log: Path

    def stats(self, filter: str) -> dict[str, int | str]:
        """Its `/stats?filter=`, as `Stack.stats` reads them."""
        status, _, body = stk.http_request(self.ports.admin, f"/stats?filter={filter}")
        assert status == 200, status
        stats: dict[str, int | str] = {}
        for line in body.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                stats[name] = int(value) if value.isdigit() else value
        return stats

    def requests(self) -> list[dict]:
        """Its access-log records (the stack's format), once the log holds every request it
        completed (Envoy flushes the file every 100 ms)."""
        completed = "http.main.downstream_rq_completed"

        def settled():
            try:
                lines = self.access_log.read_text().splitlines(keepends=True)
            except FileNotFoundError:
                lines = []
            records = [json.loads(line) for line in lines if line.endswith("\n")]
            return len(records) == self.stats(f"^{completed}$").get(completed, 0) and (records,)

        return stk.wait_for(settled, f"{self.name}'s access log to catch up")[0]


class Fleet:
    """etcd, replica B and the balancer around `stack` (replica A), which must have been made
    with `extra_clusters=etcd_cluster_yaml(base)` and the store in its filter config."""

    def __init__(self, stack: stk.Stack):
        self.stack = stack
        self.base = stack.ports.envoy
        self.run_dir = stack.run_dir / "fleet"
        self.etcd = EtcdCluster(self.run_dir, self.base)
        shifted = {name: port + REPLICA_B_SHIFT for name, port in stack.ports.listeners.items()}
        ports = dataclasses.replace(
            stack.ports, envoy=self.base + REPLICA_B_SHIFT, admin=self.base + REPLICA_B_SHIFT + 1,
            listeners=shifted,
        )  # fmt: skip
        run_b = self.run_dir / "replica-b"
        self.replica_b = Replica(
            "replica-b", ports,
            stk.EnvoyProcess(run_b, "", ports.admin, [ports.envoy, *shifted.values()]),
            run_b / "envoy-access.log",
        )  # fmt: skip
        self.balancer_port = self.base + BALANCER_OFFSET
        self.balancer = stk.EnvoyProcess(
            self.run_dir / "balancer", "", self.balancer_port + 1, [self.balancer_port]
        )

    def start(self) -> Fleet:
        """Start etcd, replica B and the balancer (the stack must be running); on failure stop
        what started."""
        try:
            self.etcd.start()
            self.start_replica_b()
            values = {
                "BLOBSTEER_BALANCER_PORT": self.balancer_port,
                "BLOBSTEER_BALANCER_ADMIN_PORT": self.balancer_port + 1,
                "BLOBSTEER_REPLICA_A_PORT": self.stack.ports.listeners[EU],
                "BLOBSTEER_REPLICA_B_PORT": self.replica_b.ports.listeners[EU],
            }
            self.balancer.config_text = stk.render_template(stk.ENVOY_DIR / "fleet-balancer.yaml.in", values)
            self.balancer.start()
        except BaseException:
            self.stop()
            raise
        return self

    def start_replica_b(self) -> None:
        """(Re)start replica B, with empty shared data, on the stack's current options."""
        b = self.replica_b
        b.envoy.stop()
        b.access_log.parent.mkdir(parents=True, exist_ok=True)
        b.access_log.unlink(missing_ok=True)
        b.envoy.config_text = self.stack.envoy_config(ports=b.ports, access_log=b.access_log)
        b.envoy.start()

    def stop(self) -> None:
        for part in (self.balancer, self.replica_b.envoy):
            part.stop()
        self.etcd.stop()

    def parts(self) -> list[stk.ManagedProcess]:
        """The fleet's servers."""
        return [*self.etcd.members, self.replica_b.envoy, self.balancer]

    def balancer_ref(self, reference: str = stk.TAG) -> str:
        """The demo image through the balancer (clients in aws-eu-west-3)."""
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"{stk.LOOPBACK}:{self.balancer_port}/{stk.REPOSITORY}{separator}{reference}"


def banner(fleet: Fleet) -> str:
    """What `run` prints about the fleet, after the stack's banner."""
    b = fleet.replica_b
    members = ", ".join(f"{m.name} {stk.LOOPBACK}:{m.client_port}" for m in fleet.etcd.members)
    return "\n".join([
        "",
        "The fleet: this stack's Envoy is replica A; manifests are rewritten for runtimes and",
        f"every produced digest is recorded in etcd under {STORE_PREFIX}.",
        f"  etcd                 {members}",
        f"  replica B            main {stk.LOOPBACK}:{b.ports.envoy}, admin {stk.LOOPBACK}:{b.ports.admin}, "
        f"{EU} clients {stk.LOOPBACK}:{b.ports.listeners[EU]}",
        f"  balancer ({EU})  {stk.LOOPBACK}:{fleet.balancer_port}: tags to A, digests to B",
        f"  pull through it:     ctr ... images pull --plain-http {fleet.balancer_ref()}",
        f"  records:             ETCDCTL_API=3 etcdctl --endpoints {stk.LOOPBACK}:{fleet.etcd.members[0].client_port} "
        f"get --prefix {STORE_PREFIX} --keys-only",
        f"  replica B's logs     {b.envoy.log_path}, access {b.access_log}",
        *(["  live maps:           both replicas watch the ECDS resource named above: one swap moves the fleet"]
          if fleet.stack.live else []),
    ])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """`run`: the stack, a containerd and the fleet around them, until Ctrl-C."""
    run_dir = args.run_dir.resolve()
    ports = stk.Ports.from_env()
    ports.check_free()
    stk.prepare_run_dir(run_dir)
    stack = stk.Stack(
        run_dir,
        ports=ports,
        filter_overrides={"manifests": {"rewrite": True, "store": store_settings()}},
        extra_clusters=etcd_cluster_yaml(ports.envoy),
        wasm_path=args.wasm,
        live=args.live,
    )
    with stack, stk.Containerd(run_dir) as containerd:
        fleet = Fleet(stack).start()
        try:
            stack_banner, ctrl_c = stk.banner(stack, containerd).rsplit("\n", 1)
            print(f"{stack_banner}{banner(fleet)}\n\n{ctrl_c}", flush=True)
            died = stk.serve_until_stopped(stack.parts() + fleet.parts() + [containerd])
        finally:
            fleet.stop()
    print("stopped.")
    return 1 if died else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: `fleet.py run` (what `make run FLEET=1` runs)."""
    parser = argparse.ArgumentParser(description="The blobsteer local stack as a fleet.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start everything in the foreground until Ctrl-C")
    run_parser.add_argument("--run-dir", type=Path, default=stk.DEFAULT_RUN_DIR, help="state and logs (wiped)")
    run_parser.add_argument("--wasm", type=Path, default=stk.DEFAULT_WASM, help="the filter's wasm module")
    run_parser.add_argument(
        "--live", action="store_true",
        help="the filter's configuration from ECDS (one watched file for every replica)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return stk.run_interruptibly(
        "fleet.py", lambda: run(args),
        (stk.BadPort, stk.PortInUse, FileNotFoundError, stk.StartupError, stk.CommandFailed),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
