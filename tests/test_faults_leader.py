"""Leadership and bounded waits under faults, against a real server: a stale epoch cannot
move the checkpoint; a deposed leader stops deciding and stands by; the standby takes over
within 5 s of the leader's SIGKILL with nothing lost and nothing run twice; a connection
that stops answering without closing turns /healthz 503 and the consumer recovers; an
agent paused while the consumer was down does not run after the restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from consumer import locks
from consumer.config import Settings
from consumer.db import Deadline, aconnect, within
from consumer.errors import Deposed
from consumer.health import Health
from consumer.listener import Follower
from consumer.planner import PlannerConfig
from consumer.projection import Projector
from consumer.scheduler import Scheduler
from consumer.service import _decide_while_leading, serve
from consumer.sql import load
from consumer.status import collect
from tests.faultkit import WriteStorm, assert_nothing_lost
from tests.helpers import at, free_port, http_json, open_pool, stop_process, wait_for_async
from tests.helpers import settings as base_settings
from tests.logtools import actual_snapshots, agent, mission
from tests.planner_stub import PlannerStub

pytestmark = pytest.mark.anyio

FAILOVER_BOUND_S = 5.0


def settings(dsn: str, **overrides: Any) -> Settings:
    """The tests' consumer settings, with leadership and stalls noticed within seconds."""
    return base_settings(dsn, **{
        "probe_timeout": 1.0, "lock_wait": 0.5, "stall_after": 3.0, "max_sleep": 2.0,
        **overrides,
    })


def lock_holders(dsn: str) -> list[tuple[int, bool]]:
    """(pid, granted) of every session holding or waiting for the leader lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            """SELECT pid, granted FROM pg_locks
               WHERE locktype = 'advisory' AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND ((classid::bigint << 32) | objid::bigint) = %s""",
            (locks.LEADER,),
        ).fetchall()


def leader_pid(dsn: str) -> int | None:
    return next((pid for pid, granted in lock_holders(dsn) if granted), None)


def planned(stub: PlannerStub, marker: str) -> int:
    """Planner requests whose prompt names `marker` (one per run of that mission)."""
    return sum(marker in json.dumps(r.body) for r in list(stub.requests))


# --------------------------------------------------------------------------- bounds


async def test_a_statement_on_a_stalled_connection_is_severed_at_its_deadline(db: str) -> None:
    with StallingProxy(db) as proxy:
        dsn = make_conninfo(db, host="127.0.0.1", port=proxy.port)
        async with await aconnect(dsn, role="test", autocommit=True) as conn:
            row = await (await conn.execute("SHOW statement_timeout")).fetchone()
            assert row == ("30s",)  # the server side of the bounds arrived
            proxy.pause()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await within(conn, Deadline(0.5), conn.execute("SELECT 1"))
            assert 0.4 < time.monotonic() - started < 3.0
            assert conn.closed or conn.broken
            proxy.resume()
        # A slow chunk that keeps committing is not cut off: progress moves the deadline.
        async with await aconnect(db, role="test", autocommit=True) as conn:
            deadline = Deadline(0.5)

            async def steady() -> int:
                for _ in range(4):
                    await conn.execute("SELECT pg_sleep(0.3)")
                    deadline.progress()
                return 4

            assert await within(conn, deadline, steady()) == 4


# --------------------------------------------------------------------------- fencing


async def test_a_stale_epoch_cannot_move_the_checkpoint(db: str) -> None:
    async with await aconnect(db, role="test", autocommit=True) as work:
        take = load("checkpoint/leader_take")
        first = await (await work.execute(take, {"name": "projection"})).fetchone()
        assert first is not None
        projector = Projector()
        projector.epoch = int(first[0])
        await projector.bootstrap(work)
        with psycopg.connect(db, autocommit=True) as log:
            mission(log, "before", state="active")
        await projector.catch_up(work)

        # Another process takes the lock: our epoch is stale from now on.
        second = await (await work.execute(take, {"name": "projection"})).fetchone()
        assert second is not None and int(second[0]) == projector.epoch + 1
        with psycopg.connect(db, autocommit=True) as log:
            mission(log, "after", state="active")
        with pytest.raises(Deposed):
            await projector.catch_up(work)
        check = load("checkpoint/leader_check")
        stale = await (await work.execute(check, {"epoch": projector.epoch})).fetchone()
        fresh = await (await work.execute(check, {"epoch": int(second[0])})).fetchone()
        assert stale == (False,) and fresh == (True,)
    missions = actual_snapshots(db)["missions"]
    assert ("u1", "before") in missions and ("u1", "after") not in missions  # rolled back


class RecordingScheduler(Scheduler):
    """Counts its passes and the missions it decided `ran`."""

    passes: list[float]
    ran: list[str]

    async def run_pass(self) -> list:
        records = await super().run_pass()
        self.passes.append(time.monotonic())
        self.ran += [r.mission_id for r in records if r.decision.value == "ran"]
        return records


class Replica:
    """A Follower and the leader-only decision loop, as `serve` wires them."""

    def __init__(self, dsn: str, pool: AsyncConnectionPool) -> None:
        self.settings = settings(dsn)
        self.health = Health()
        self.projector = Projector()
        self.follower = Follower(self.settings, self.projector, self.health)
        self.passes: list[float] = []
        self.ran: list[str] = []
        self.pool = pool

    def make_scheduler(self) -> Scheduler:
        s = RecordingScheduler(self.pool, max_sleep=self.settings.max_sleep)
        s.passes, s.ran = self.passes, self.ran
        return s

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self.follower.run)
        tg.start_soon(
            _decide_while_leading,
            self.follower,
            self.projector,
            self.health,
            self.settings,
            self.make_scheduler,
        )


async def test_a_deposed_leader_stops_deciding_and_stands_by(db: str) -> None:
    async with open_pool(db) as pool:
        a, b = Replica(db, pool), Replica(db, pool)
        with psycopg.connect(db, autocommit=True) as log:
            async with anyio.create_task_group() as tg:
                a.start(tg)
                mission(log, "m0", state="active", nextRunAt=at(-1))
                await wait_for_async(lambda: "m0" in a.ran, 10, "the first replica decides")
                b.start(tg)
                await wait_for_async(lambda: b.health.role == "standby", 10, "a standby")
                old_pid = leader_pid(db)
                assert old_pid is not None and a.follower.leading and not b.follower.leading
                assert a.health.status()[1]["role"] == "leader"
                assert set(a.health.loops) == {"apply", "scheduler"}  # both loops bounded
                assert b.health.loops == {}  # a standby neither applies nor decides
                await wait_for_async(lambda: collect(db)["standbys_waiting"] == 1, 5, "status")
                report = collect(db)
                assert report["leader_pid"] == old_pid and report["leader_epoch"] >= 1
                assert f"pid {old_pid}" in report["leader"]

                # The leader's listener connection dies (its lock goes with it).
                with psycopg.connect(db, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
                await wait_for_async(lambda: not a.follower.leading, 5, "the old leader steps down")
                passes_after_loss = len(a.passes)
                took = await wait_for_async(lambda: b.follower.leading, 5, "the standby leads")
                assert took < FAILOVER_BOUND_S
                mission(log, "m1", state="active", nextRunAt=at(-1))
                await wait_for_async(lambda: "m1" in b.ran, 5, "the new leader decides")
                await wait_for_async(lambda: a.health.role == "standby", 5, "old leader stands by")
                assert "scheduler" not in a.health.loops and "scheduler" in b.health.loops
                await anyio.sleep(1.0)
                assert len(a.passes) == passes_after_loss  # not one pass since it lost
                assert not a.follower.leading and "m1" not in a.ran
                assert sorted(a.ran + b.ran) == ["m0", "m1"]  # each decided once
                assert [granted for _, granted in lock_holders(db)].count(True) == 1
                tg.cancel_scope.cancel()
    assert_nothing_lost(db)


# --------------------------------------------------------------------------- failover


def spawn(dsn: str, port: int, stub: PlannerStub) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "SYNC_DATABASE_URL": dsn,
        "MANA_LLM_URL": stub.url,
        "MANA_LLM_API_KEY": "test-key",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "consumer", "run", "--metrics-port", str(port), "--max-sleep", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def role_of(port: int) -> str | None:
    try:
        return http_json(f"http://127.0.0.1:{port}/healthz", timeout=3)[1].get("role")
    except OSError:
        return None


def health_of(port: int) -> tuple[int, float | None] | None:
    """(/healthz status, its apply lag), or None when it does not answer."""
    try:
        code, body = http_json(f"http://127.0.0.1:{port}/healthz", timeout=3)
    except OSError:
        return None
    return code, body.get("lag_seconds")


async def test_sigkilled_leader_the_standby_decides_within_5_s(db: str) -> None:
    ports = [free_port(), free_port()]
    with PlannerStub() as stub:
        procs = [spawn(db, ports[0], stub)]
        outputs: list[str] = []
        try:
            await wait_for_async(lambda: role_of(ports[0]) == "leader", 30, "first process leads")
            procs.append(spawn(db, ports[1], stub))
            await wait_for_async(lambda: role_of(ports[1]) == "standby", 30, "second stands by")
            with psycopg.connect(db, autocommit=True) as log, WriteStorm(db) as storm:
                mission(log, "before", state="active", objective="obj-before", nextRunAt=at(-1))
                await wait_for_async(lambda: planned(stub, "obj-before") == 1, 10, "leader runs")
                await anyio.sleep(0.3)  # the writer keeps writing
                procs[0].send_signal(signal.SIGKILL)
                killed = time.monotonic()
                mission(log, "after", state="active", objective="obj-after", nextRunAt=at(-1))
                await wait_for_async(lambda: planned(stub, "obj-after") >= 1, 15, "standby runs")
                failover = time.monotonic() - killed
                await anyio.sleep(0.5)
            assert storm.rows > 50
            assert role_of(ports[1]) == "leader"
            await anyio.to_thread.run_sync(assert_nothing_lost, db)
            await anyio.sleep(1.0)  # room for a wrong second run to show
            assert planned(stub, "obj-before") == 1 and planned(stub, "obj-after") == 1
            assert failover < FAILOVER_BOUND_S, f"failover took {failover:.2f} s"
        finally:
            outputs = [stop_process(p) for p in procs]
    assert procs[1].returncode == 0, outputs[1]
    print(f"failover (SIGKILL -> the standby's run started): {failover * 1000:.0f} ms")


async def test_agent_paused_while_down_is_not_run_after_the_restart(db: str) -> None:
    with PlannerStub() as stub, psycopg.connect(db, autocommit=True) as log:
        config = PlannerConfig(base_url=stub.url, api_key="test-key")
        s = settings(db, scheduler=True)
        due_in = 3.0
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(s, planner_config=config))
            agent(log, "a1", name="Pausable", state="active")
            agent(log, "a2", name="Control", state="active")
            mission(log, "mp", state="active", agentId="a1", objective="obj-paused",
                    nextRunAt=at(due_in))
            mission(log, "mc", state="active", agentId="a2", objective="obj-control",
                    nextRunAt=at(due_in))
            await wait_for_async(lambda: len(actual_snapshots(db)["missions"]) == 2, 10)
            tg.cancel_scope.cancel()
        # While nobody runs: the agent is paused, and both missions come due.
        agent(log, "a1", state="paused")
        await anyio.sleep(due_in + 0.5)
        assert stub.requests == []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(s, planner_config=config))
            await wait_for_async(lambda: planned(stub, "obj-control") == 1, 15, "control runs")
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        assert planned(stub, "obj-paused") == 0
    assert_nothing_lost(db)


# --------------------------------------------------------------------------- half-open


class StallingProxy:
    """TCP proxy to the server that can stop forwarding while keeping every socket open.

    Threads on blocking sockets, not tasks: the embedded server listens on a Unix socket,
    and anyio's Unix socket streams on asyncio wait for a read with
    `loop.add_reader(sock, future.set_result)`. When such a read is cancelled in the same
    loop iteration as its socket turns readable (the test ending while sessions close), the
    queued callback sets a result on the cancelled future; asyncio reports InvalidStateError
    and anyio's test runner raises it into the test, about one run in twenty.
    """

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        self._upstream: str | tuple[str, int] = (
            f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        )
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="stalling-proxy")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _wait_flowing(self) -> bool:
        """Paused: read nothing, write nothing, close nothing. False once closed."""
        while not self._flowing.wait(0.05):
            if self._closed:
                return False
        return not self._closed

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._spawn(self._connect, self._keep(client))

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_flowing():
            return
        if isinstance(self._upstream, str):
            server = self._keep(socket.socket(socket.AF_UNIX))
            try:
                server.connect(self._upstream)
            except OSError:
                _shut(client)
                return
        else:
            try:
                server = self._keep(socket.create_connection(self._upstream))
            except OSError:
                _shut(client)
                return
        self._spawn(self._pump, client, server)
        self._spawn(self._pump, server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._wait_flowing():
                data = src.recv(65536)
                if not data or not self._wait_flowing():
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end the other as well, as a peer's close would (the descriptors
        # stay open until close(), so none is reused while the other pump still reads).
        _shut(src)
        _shut(dst)

    def close(self) -> None:
        self._closed = True
        _shut(self._listener)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _shut(sock)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


async def test_a_connection_that_stops_answering_turns_healthz_503_then_recovers(
    db: str,
) -> None:
    http = free_port()

    def snapshotted(mission_id: str) -> bool:
        return ("u1", mission_id) in actual_snapshots(db)["missions"]

    async def health() -> tuple[int, dict[str, Any]]:
        return await anyio.to_thread.run_sync(
            lambda: http_json(f"http://127.0.0.1:{http}/healthz", timeout=3))

    async def healthy() -> bool:
        try:
            return (await health())[0] == 200
        except OSError:
            return False

    async def unhealthy() -> bool:
        return (await health())[0] == 503

    with StallingProxy(db) as proxy, psycopg.connect(db, autocommit=True) as log:
        async with anyio.create_task_group() as tg:
            via_proxy = make_conninfo(db, host="127.0.0.1", port=proxy.port)
            tg.start_soon(lambda: serve(settings(via_proxy, metrics_port=http)))
            await wait_for_async(healthy, 20, "healthy through the proxy", every=0.1)
            mission(log, "flowing", state="active")
            await wait_for_async(lambda: snapshotted("flowing"), 5, "flowing applied")

            proxy.pause()
            mission(log, "stalled", state="active")
            noticed = await wait_for_async(unhealthy, 10, "/healthz turns 503", every=0.1)
            code, body = await health()
            assert code == 503 and body["reason"], body
            assert not snapshotted("stalled")

            proxy.resume()
            recovered = await wait_for_async(
                healthy, 20, "healthy again after forwarding resumes", every=0.1)
            await wait_for_async(lambda: snapshotted("stalled"), 10, "stalled applied")
            mission(log, "after", state="active")
            await wait_for_async(lambda: snapshotted("after"), 10, "after applied")
            await anyio.to_thread.run_sync(assert_nothing_lost, db)
            print(f"half-open: 503 after {noticed:.1f} s; healthy {recovered:.1f} s after resume")
            tg.cancel_scope.cancel()
