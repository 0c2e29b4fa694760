"""Fixtures of the fault suite: private servers shared by the suite (every scenario leaves them
running again), one FaultRun per test (its seeded plan, its deployments, its checker), the
processes' log tails on a failure, and every scenario's verdict line at the end of the run."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.faults.checker import Verdict, check
from tests.faults.deployment import FaultDeployment, FaultServers
from tests.faults.schedule import SEED_VARIABLE, FaultPlan, fault_seed
from tests.faults.traffic import Traffic
from tests.servers import Server, ServerPool

# Every scenario breaks real servers and needs all three.
FAULT_MARKS = (pytest.mark.faults, pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq)

VERDICTS = pytest.StashKey[list[Verdict]]()
SEED = pytest.StashKey[tuple[int, bool]]()


@pytest.fixture(scope="session")
def seed(pytestconfig: pytest.Config) -> int:
    if SEED not in pytestconfig.stash:
        pytestconfig.stash[SEED] = fault_seed()
    return pytestconfig.stash[SEED][0]


@pytest.fixture(scope="session")
def fault_servers(servers: ServerPool) -> Iterator[FaultServers]:
    """PostgreSQL, Redis and RabbitMQ of the fault suite's own, started in parallel (RabbitMQ
    takes ~5 s) and stopped at the end of the session."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as executor:
        started = list(executor.map(servers.spawn, ["postgres", "redis", "rabbitmq"]))
    private = FaultServers(*started)
    try:
        yield private
    finally:
        for server in private.all():
            server.stop()


class FaultRun:
    """One scenario: its plan (seeded by the test's name), the deployments it starts, and
    the checker bound to its plan."""

    def __init__(
        self,
        servers: FaultServers,
        pool: ServerPool,
        workdir: Path,
        plan: FaultPlan,
        verdicts: list[Verdict],
    ) -> None:
        self.servers = servers
        self.plan = plan
        self.deployments: list[FaultDeployment] = []
        self._pool = pool
        self._workdir = workdir
        self._spawned: list[Server] = []
        self._traffic: list[Traffic] = []
        self._summary = verdicts

    async def deploy(
        self,
        *,
        rabbitmq: Server | None = None,
        env: Mapping[str, str] | None = None,
        rabbitmq_query: Mapping[str, str] | None = None,
        api_env: Mapping[str, str] | None = None,
    ) -> FaultDeployment:
        await asyncio.to_thread(self.servers.revive)
        workdir = self._workdir / f"deployment-{len(self.deployments) + 1}"
        workdir.mkdir()
        deployment = FaultDeployment(
            self.servers, workdir, rabbitmq=rabbitmq, env=env, rabbitmq_query=rabbitmq_query
        )
        self.deployments.append(deployment)
        began = self.plan.elapsed
        await deployment.start(api_env=api_env)
        self.plan.note(
            f"deployment up in {self.plan.elapsed - began:.1f} s: api pid "
            f"{_pid(deployment.api)}, processors "
            f"{[_pid(p) for p in deployment.processors]}, queue {deployment.queue_name}"
        )
        return deployment

    async def spawn(self, kind: str) -> Server:
        """A brand-new private server (stopped at the end of the test)."""
        began = self.plan.elapsed
        server = await asyncio.to_thread(self._pool.spawn, kind)
        self._spawned.append(server)
        self.plan.note(f"fresh {kind} up in {self.plan.elapsed - began:.1f} s")
        return server

    def traffic(self, deployment: FaultDeployment, *, follow: bool = True) -> Traffic:
        traffic = Traffic(deployment, self.plan, follow=follow)
        self._traffic.append(traffic)
        return traffic

    async def check(self, deployment: FaultDeployment, traffic: Traffic, **options: Any) -> Verdict:
        verdict = await check(deployment, traffic, self.plan, **options)
        self._summary.append(verdict)  # rendered at the end, with the notes the test added
        return verdict

    async def close(self) -> None:
        try:
            for traffic in self._traffic:
                await traffic.close()
            # A scenario that failed mid-outage: its database can only be dropped once the
            # server is back (and the next scenario needs it anyway).
            await asyncio.to_thread(self.servers.revive)
            for deployment in self.deployments:
                await deployment.close()
        finally:
            for server in self._spawned:
                await asyncio.to_thread(server.stop)

    def log_tails(self) -> str:
        return "\n".join(d.log_tails() for d in self.deployments)


def _pid(process: Any) -> int | None:
    return process.process.pid if process is not None and process.process is not None else None


@pytest.fixture
async def fault(
    fault_servers: FaultServers,
    servers: ServerPool,
    seed: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
) -> AsyncIterator[FaultRun]:
    plan = FaultPlan(seed, request.node.name, request.node.nodeid)
    verdicts = pytestconfig.stash.setdefault(VERDICTS, [])
    run = FaultRun(fault_servers, servers, tmp_path, plan, verdicts)
    try:
        yield run
    finally:
        await run.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    run = getattr(item, "funcargs", {}).get("fault")
    if report.failed and isinstance(run, FaultRun):
        report.sections.append(("fault schedule", "\n".join(run.plan.events)))
        report.sections.append(("taskwire process logs", run.log_tails()))
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    verdicts = config.stash.get(VERDICTS, [])
    if not verdicts:
        return
    seed, given = config.stash[SEED]
    terminalreporter.section("fault scenarios")
    origin = "given" if given else f"random; replay with {SEED_VARIABLE}={seed}"
    terminalreporter.write_line(f"seed {seed} ({origin})")
    for verdict in verdicts:
        terminalreporter.write_line(verdict.line())
