"""``running_sim``: the simulator's OPC UA server on a free port, for tests and benchmarks.

::

    async with running_sim(tools=10, seed=1, speed=3600) as sim:
        async with Client(sim.endpoint) as client: ...
        sim.fab                      # the simulation (ground truth: sim.fab.truth)
        await sim.stop(); await sim.restart()   # same port, same fab (restart tests)

``speed=0`` freezes the clock: time then moves only with ``await sim.advance(seconds)``, which
also publishes, so a test sees exactly the values of a chosen simulated time.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from opcua_sim.fab import Fab, SimClock
from opcua_sim.scenario import load_scenario, scale_tools, with_seed
from opcua_sim.security import CLIENT_URI, SecuritySettings, ensure_certificate
from opcua_sim.server import SimServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SimHandle:
    """What a test gets from :func:`running_sim`."""

    endpoint: str
    port: int
    fab: Fab
    clock: SimClock
    server: SimServer
    cert_dir: Path | None = None  # server and client certificates when security is on

    @property
    def client_cert(self) -> Path | None:
        return self.cert_dir / "client_cert.der" if self.cert_dir else None

    @property
    def client_key(self) -> Path | None:
        return self.cert_dir / "client_key.pem" if self.cert_dir else None

    @property
    def server_cert(self) -> Path | None:
        return self.cert_dir / "server_cert.der" if self.cert_dir else None

    client_application_uri: str = CLIENT_URI  # set it as the Client's application_uri (it is in the cert)

    def security_string(self, mode: str = "SignAndEncrypt") -> str:
        """For ``asyncua.Client.set_security_string``: Basic256Sha256 with the generated client cert."""
        if self.cert_dir is None:
            raise RuntimeError("running_sim(security=True) generates the certificates")
        return f"Basic256Sha256,{mode},{self.client_cert},{self.client_key},{self.server_cert}"

    async def stop(self) -> None:
        await self.server.stop()

    async def restart(self) -> None:
        """Start serving again on the same port, with the same fab and clock (state continues)."""
        await self.server.stop()
        self.server = SimServer(
            self.fab,
            self.clock,
            endpoint=self.endpoint,
            rate_hz=self.server.rate_hz,
            security=self.server.security,
        )
        await self.server.start()

    async def advance(self, seconds: float) -> None:
        """Move simulated time by hand and publish (with ``speed=0``, the only way time moves)."""
        self.clock.advance(seconds)
        await self.server.step()


@asynccontextmanager
async def running_sim(
    tools: int | None = None,
    seed: int = 0,
    speed: float = 3600.0,
    scenario: Path | None = None,
    security: bool = False,
    *,
    rate_hz: float | None = None,
    users: Mapping[str, str] | None = None,
    allow_anonymous: bool = True,
    truth_path: Path | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[SimHandle]:
    """Start the simulator in this event loop on a free port; stop it on exit."""
    sc = with_seed(load_scenario(scenario), seed)
    if tools is not None:
        sc = scale_tools(sc, tools)
    fab = Fab(sc, truth_path=truth_path)
    clock = SimClock(speed)
    port = free_port()
    endpoint = f"opc.tcp://{host}:{port}/fabpm/"
    with tempfile.TemporaryDirectory(prefix="fabpm-sim-") as tmp:
        cert_dir: Path | None = None
        if security:
            cert_dir = Path(tmp)
            ensure_certificate(cert_dir, "client", CLIENT_URI, server=False)
            policies: tuple[str, ...] = ("None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt")
        else:
            policies = ("None",)
        settings = SecuritySettings(
            policies=policies, cert_dir=cert_dir, users=dict(users or {}), allow_anonymous=allow_anonymous
        )
        server = SimServer(fab, clock, endpoint=endpoint, rate_hz=rate_hz, security=settings)
        handle = SimHandle(endpoint, port, fab, clock, server, cert_dir)
        await server.start()
        try:
            yield handle
        finally:
            await handle.server.stop()
            fab.close()
