"""The demo's writer: traffic shaped like mana-sync's clients.

Several users, each with two devices whose clocks are skewed (a phone behind, a laptop
ahead), create agents and missions with interval cadences, edit them, pause, resume and
archive agents and delete missions. Every write is what mana-sync does for one change:
a transaction scoped to the user (`set_config('app.current_user_id', user, true)`), one
INSERT into sync_changes, COMMIT, as a role without BYPASSRLS, so row level security
checks each row against its user.

The script is fixed (the same decisions show every time) and timed from the start:

    t=0   agents: Scout (1 run at a time), Sleepy (paused), Archivist, Frugal (0 tokens a
          day); missions: two of Scout's (interval), Sleepy's, Archivist's (interval),
          Frugal's, a legacy one without agent (interval), one naming an agent that does not
          exist yet, one the planner cannot answer
    t=2   two malformed rows (a client bug): they go to quarantine, the stream goes on
    t=5   Archivist archived: its next occurrence is skipped
    t=6   Sleepy resumed: its mission runs
    t=8   the missing agent is created: its mission runs
    then  edits from both devices (about 15 a second), a new mission every 3 s, one of those
          deleted every 5 s, and another malformed row every 20 s.

Record ids carry a tag of the run, so a demo on kept data (`.data/`) adds to what is there.

It also runs on its own, as mana-sync's role (the compose stack's writer):

    python -m consumer.demo_writer --database-url postgresql://mana_sync:...@postgres/mana
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from .instants import iso, utcnow

log = logging.getLogger("consumer.demo")

USERS = ("alice", "bob", "carol")
# Device clocks: a phone 40 s behind, a laptop 15 s ahead of the server.
DEVICES = {"phone": timedelta(seconds=-40), "laptop": timedelta(seconds=15)}
BAD_PREFIX = "bad-"  # record ids of the rows meant for quarantine
# Interval cadences of the demo's missions: six seconds, so they run often (see demo.py).
EVERY_MINUTES = 0.1

OnCommit = Callable[[str, str, str], None]  # (table, user, record id) after COMMIT


class Writer:
    """Runs the script above on its own connection until `stop` is set."""

    def __init__(
        self,
        dsn: str,
        stop: threading.Event,
        *,
        on_commit: OnCommit | None = None,
        tag: str | None = None,
        seed: int = 7,
    ) -> None:
        self.dsn = dsn
        self.stop = stop
        self.on_commit = on_commit
        self.tag = tag or uuid.uuid4().hex[:4]
        self.rng = random.Random(seed)
        self.writes = 0
        self.bad_rows: list[str] = []  # record ids written to be quarantined
        self.missions: dict[str, list[str]] = {u: [] for u in USERS}  # live, per user
        self.extra: list[tuple[str, str]] = []  # (user, mission) added in the steady phase
        self.error: BaseException | None = None

    def rid(self, name: str) -> str:
        return f"{name}-{self.tag}"

    # ------------------------------------------------------------------ one change

    def write(
        self,
        conn: psycopg.Connection,
        user: str,
        table: str,
        record_id: str,
        data: dict[str, Any] | None,
        *,
        device: str = "phone",
        op: str = "update",
    ) -> None:
        """One change as mana-sync writes it: a transaction scoped to the user."""
        at = iso(utcnow() + DEVICES[device])
        meta = {
            k: {"at": at, "actor": {"kind": "user", "principalId": user}, "origin": "user"}
            for k in (data or {})
        }
        with conn.transaction():
            conn.execute("SELECT set_config('app.current_user_id', %s, true)", (user,))
            conn.execute(
                """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                       data, field_meta, client_id, origin)
                   VALUES ('ai', %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, 'user')""",
                (
                    table,
                    record_id,
                    user,
                    op,
                    None if data is None else json.dumps(data),
                    json.dumps(meta),
                    f"{user}-{device}",
                ),
            )
        self.writes += 1
        if self.on_commit is not None:
            self.on_commit(table, user, record_id)

    def write_bad(self, conn: psycopg.Connection, user: str, what: str) -> None:
        """A row a buggy client might send: valid SQL, not a change we can apply."""
        record_id = self.rid(f"{BAD_PREFIX}{what}-{len(self.bad_rows)}")
        data, meta = ('["not", "an", "object"]', "{}") if what == "data" else ("{}", '"stamp"')
        with conn.transaction():
            conn.execute("SELECT set_config('app.current_user_id', %s, true)", (user,))
            conn.execute(
                """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                       data, field_meta, client_id)
                   VALUES ('ai', 'aiMissions', %s, %s, 'update', %s::jsonb, %s::jsonb,
                           'buggy-client')""",
                (record_id, user, data, meta),
            )
        self.writes += 1
        self.bad_rows.append(record_id)

    def agent(self, conn: psycopg.Connection, user: str, name: str, **fields: Any) -> str:
        agent_id = self.rid(f"agent-{name.lower()}")
        data = {"name": name, "role": "Assistenz", "state": "active", **fields}
        self.write(conn, user, "agents", agent_id, data, device="laptop")
        return agent_id

    def mission(
        self,
        conn: psycopg.Connection,
        user: str,
        name: str,
        title: str,
        *,
        agent: str | None = None,
        interval: bool = True,
        due_in: float = 0.0,
    ) -> str:
        mission_id = self.rid(f"mission-{name}")
        data: dict[str, Any] = {
            "title": title,
            "objective": f"{title}: der Plan fuer heute",
            "state": "active",
            "nextRunAt": iso(utcnow() + timedelta(seconds=due_in)),
            "iterations": [],
        }
        if agent is not None:
            data["agentId"] = agent
        if interval:
            data["cadence"] = {"kind": "interval", "everyMinutes": EVERY_MINUTES}
        # Created on the phone (behind the server's clock): the runner's advance of
        # nextRunAt, stamped with the server's time, then wins the field as it should.
        self.write(conn, user, "aiMissions", mission_id, data, device="phone")
        self.missions[user].append(mission_id)
        return mission_id

    # ------------------------------------------------------------------ the script

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                self._script(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the demo
            self.error = exc
            log.error("demo writer stopped: %s", exc)

    def _wait_until(self, start: float, t: float) -> bool:
        """Sleep until `t` seconds after start; True when the demo is stopping."""
        return self.stop.wait(max(0.0, start + t - time.monotonic()))

    def _script(self, conn: psycopg.Connection) -> None:
        start = time.monotonic()
        scout = self.agent(conn, "alice", "Scout", role="Recherche", maxConcurrentMissions=1,
                           systemPrompt="Antworte knapp.", memory="enc:1:opaque")
        sleepy = self.agent(conn, "alice", "Sleepy", state="paused")
        archivist = self.agent(conn, "bob", "Archivist")
        frugal = self.agent(conn, "carol", "Frugal", maxTokensPerDay=0)
        late = self.rid("agent-latecomer")
        self.mission(conn, "alice", "digest", "Morgendlicher Digest", agent=scout)
        self.mission(conn, "alice", "sources", "Quellen pruefen", agent=scout)
        self.mission(conn, "alice", "tidy", "Aufraeumen", agent=sleepy, interval=False)
        self.mission(conn, "bob", "index", "Archiv indexieren", agent=archivist)
        self.mission(conn, "carol", "plan", "Sparplan", agent=frugal, interval=False)
        self.mission(conn, "bob", "weekly", "Wochenrueckblick")  # legacy: no agent
        self.mission(conn, "carol", "orphan", "Wartet auf den Agenten", agent=late)
        self.mission(conn, "carol", "riddle", "[unanswerable] Raetsel", interval=False)
        log.info("demo writer: 4 agents and 8 missions written (tag %s)", self.tag)

        if self._wait_until(start, 2):
            return
        self.write_bad(conn, "bob", "data")
        self.write_bad(conn, "carol", "meta")
        if self._wait_until(start, 5):
            return
        self.write(conn, "bob", "agents", archivist, {"state": "archived"}, device="laptop")
        if self._wait_until(start, 6):
            return
        self.write(conn, "alice", "agents", sleepy, {"state": "active"})
        if self._wait_until(start, 8):
            return
        self.agent(conn, "carol", "Latecomer")
        n = 0
        next_new = next_delete = next_bad = time.monotonic()
        while not self.stop.wait(0.066):  # about 15 edits a second
            n += 1
            now = time.monotonic()
            user = self.rng.choice(USERS)
            device = self.rng.choice(tuple(DEVICES))
            if self.missions[user]:
                mission_id = self.rng.choice(self.missions[user])
                self.write(conn, user, "aiMissions", mission_id, {"notes": f"Notiz {n}"},
                           device=device)
            if now >= next_new:
                next_new = now + 3
                owner = self.rng.choice(USERS)
                agent = scout if owner == "alice" else None
                mid = self.mission(conn, owner, f"extra{n}", f"Zusatz {n}", agent=agent,
                                   due_in=1.0)
                self.extra.append((owner, mid))
            if now >= next_delete + 5 and len(self.extra) > 1:
                next_delete = now
                owner, mid = self.extra.pop(0)
                self.missions[owner].remove(mid)
                self.write(conn, owner, "aiMissions", mid, None, op="delete", device=device)
            if now >= next_bad + 20:
                next_bad = now
                self.write_bad(conn, user, "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.demo_writer",
        description="write demo traffic into sync_changes the way mana-sync's clients do",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="mana-sync's database, as a role without BYPASSRLS (default: $SYNC_DATABASE_URL)",
    )
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after N s (0: never)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dsn = args.database_url or os.environ.get("SYNC_DATABASE_URL", "")
    if not dsn:
        print("demo_writer: pass --database-url or set SYNC_DATABASE_URL", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # docker stop sends SIGTERM
        signal.signal(signum, lambda *_: stop.set())
    writer = Writer(dsn, stop)
    thread = threading.Thread(target=writer.run, name="demo-writer")
    thread.start()
    stop.wait(args.seconds or None)
    stop.set()
    thread.join()
    log.info("demo writer: %d changes written", writer.writes)
    return 0 if writer.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
