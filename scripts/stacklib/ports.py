"""The demo's client locations and mirrors, and every port of the stack: defaults from a base
port, each overridable by its own BLOBSTEER_* variable, checked free before anything starts."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from stacklib.probes import LOOPBACK


@dataclasses.dataclass(frozen=True)
class ClientLocation:
    """A client listener: the x-forwarded-for it sets, the backend the demo filter config maps
    that address to (None: no backend), and its port's offset from the base port."""

    name: str
    xff: str
    backend: str | None
    offset: int


CLIENT_LOCATIONS = (
    ClientLocation("aws-eu-west-3", "15.236.10.20", "aws-eu-west-3", 10),
    ClientLocation("aws-us-east-1", "44.192.1.2", "aws-us-east-1", 11),
    ClientLocation("gcp-europe-north1", "34.88.1.2", "gcp-europe-north1", 12),
    ClientLocation("unmapped", "198.51.100.7", None, 13),  # TEST-NET-2: in no provider's ranges
    ClientLocation("garbage", "not-an-ip", None, 14),
)
# The demo's backends (envoy/demo-filter.json.in), one mirror each: name -> port offset.
MIRROR_OFFSETS = {"aws-eu-west-3": 61, "aws-us-east-1": 62, "gcp-europe-north1": 63}


def _env_word(name: str) -> str:
    return name.upper().replace("-", "_")


def listener_port_variable(location: str) -> str:
    """The environment variable naming a client listener's port."""
    return f"BLOBSTEER_PORT_{_env_word(location)}"


def mirror_port_variable(backend: str) -> str:
    """The environment variable naming a mirror's port."""
    return f"BLOBSTEER_MIRROR_{_env_word(backend)}_PORT"


# The ports that are neither a client listener nor a mirror: variable -> offset from the base.
FIXED_OFFSETS = {
    "BLOBSTEER_ENVOY_PORT": 0,
    "BLOBSTEER_ADMIN_PORT": 1,
    "BLOBSTEER_REGISTRY_PORT": 50,
}
HIGHEST_PORT = 65535
# Offsets from 20 to 49 and from 70 to 75 are the fleet's (scripts/fleet.py).
FLEET_OFFSETS = range(70, 76)
# The highest offset from the base: a base above HIGHEST_PORT minus this leaves no room.
HIGHEST_OFFSET = max(
    *FIXED_OFFSETS.values(),
    *(c.offset for c in CLIENT_LOCATIONS),
    *MIRROR_OFFSETS.values(),
    *FLEET_OFFSETS,
)


class PortInUse(RuntimeError):
    """A port the stack needs is taken (or configured twice)."""


class BadPort(ValueError):
    """A BLOBSTEER_*_PORT variable whose value is not a port the stack can use."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port of the stack, all on 127.0.0.1.

    Defaults derive from BLOBSTEER_BASE_PORT (18000): Envoy main listener +0
    (BLOBSTEER_ENVOY_PORT), admin +1 (BLOBSTEER_ADMIN_PORT), client listeners +10..+14
    (BLOBSTEER_PORT_AWS_EU_WEST_3, ..._AWS_US_EAST_1, ..._GCP_EUROPE_NORTH1, ..._UNMAPPED,
    ..._GARBAGE), registry +50 (BLOBSTEER_REGISTRY_PORT), mirrors +61..+63
    (BLOBSTEER_MIRROR_AWS_EU_WEST_3_PORT, ...). Each variable overrides its own port.
    """

    envoy: int
    admin: int
    registry: int
    listeners: Mapping[str, int]  # client location name -> port
    mirrors: Mapping[str, int]  # backend name -> port

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ports:
        """Ports from `env` (default: os.environ)."""
        env = os.environ if env is None else env
        base = _port_value(env, "BLOBSTEER_BASE_PORT", 18000, highest=HIGHEST_PORT - HIGHEST_OFFSET)

        def port(variable: str, offset: int) -> int:
            return _port_value(env, variable, base + offset)

        return cls(
            envoy=port("BLOBSTEER_ENVOY_PORT", FIXED_OFFSETS["BLOBSTEER_ENVOY_PORT"]),
            admin=port("BLOBSTEER_ADMIN_PORT", FIXED_OFFSETS["BLOBSTEER_ADMIN_PORT"]),
            registry=port("BLOBSTEER_REGISTRY_PORT", FIXED_OFFSETS["BLOBSTEER_REGISTRY_PORT"]),
            listeners={
                c.name: port(listener_port_variable(c.name), c.offset) for c in CLIENT_LOCATIONS
            },
            mirrors={
                name: port(mirror_port_variable(name), offset)
                for name, offset in MIRROR_OFFSETS.items()
            },
        )

    def variables(self) -> dict[str, int]:
        """Every port by the environment variable that sets it."""
        return {
            "BLOBSTEER_ENVOY_PORT": self.envoy,
            "BLOBSTEER_ADMIN_PORT": self.admin,
            **{listener_port_variable(n): p for n, p in self.listeners.items()},
            "BLOBSTEER_REGISTRY_PORT": self.registry,
            **{mirror_port_variable(n): p for n, p in self.mirrors.items()},
        }

    def envoy_variables(self) -> list[str]:
        """The variables of the ports Envoy binds."""
        return ["BLOBSTEER_ENVOY_PORT", "BLOBSTEER_ADMIN_PORT"] + [
            listener_port_variable(n) for n in self.listeners
        ]

    @classmethod
    def free(cls, variables: Iterable[str] | None = None, avoid: Iterable[int] = ()) -> Ports:
        """Ports from a base chosen at random below the kernel's ephemeral range (clients' own
        outgoing connections take ports from there and would race with our listeners), whose
        ports (or those of `variables`) are free right now and not in `avoid`."""
        ephemeral_low = ephemeral_port_low()
        variables = None if variables is None else list(variables)
        avoid = set(avoid)
        rng = random.Random()
        for _ in range(50):
            base = rng.randrange(12000, max(13000, ephemeral_low - 100), 100)
            ports = cls.from_env({"BLOBSTEER_BASE_PORT": str(base)})
            by_variable = ports.variables()
            wanted = {by_variable[v] for v in (by_variable if variables is None else variables)}
            if wanted & avoid:
                continue
            try:
                ports.check_free(variables)
            except PortInUse:
                continue
            return ports
        raise PortInUse("no free range of ports found below the ephemeral range")

    def check_free(self, variables: Iterable[str] | None = None) -> None:
        """Raise PortInUse unless every port (or those of `variables`) can be bound now."""
        by_variable = self.variables()
        seen: dict[int, str] = {}
        for variable, port in by_variable.items():
            if port in seen:
                raise PortInUse(f"port {port} is set for both {seen[port]} and {variable}")
            seen[port] = variable
        for variable in by_variable if variables is None else variables:
            port = by_variable[variable]
            if not port_is_free(port):
                raise PortInUse(
                    f"port {port} ({variable}) is already in use; "
                    f"set BLOBSTEER_BASE_PORT or {variable}"
                )


def _port_value(
    env: Mapping[str, str], variable: str, default: int, highest: int = HIGHEST_PORT
) -> int:
    """`variable`'s port from `env` (unset or empty: `default`); BadPort unless it is a decimal
    number from 1 to `highest` (the base port's `highest` leaves room for every offset)."""
    raw = env.get(variable)
    if raw is None or raw == "":
        return default
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= highest:
        return int(raw)
    if highest == HIGHEST_PORT:
        raise BadPort(
            f"{variable}={raw!r} is not a TCP port: set it to a number from 1 to {highest}"
        )
    raise BadPort(
        f"{variable}={raw!r} is not a usable base port: set it to a number from 1 to {highest} "
        f"(the stack's ports go up to {HIGHEST_PORT - highest} above it)"
    )


def ephemeral_port_low() -> int:
    """The first port of the kernel's ephemeral range: clients' own outgoing connections take
    ports from there, so a listener chosen at or above it races with them."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound (SO_REUSEADDR, as the servers themselves do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
