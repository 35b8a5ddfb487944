"""End to end on the wire: a `consumer run` process decides a due mission and exports the
decision span over OTLP/HTTP to a receiver that decodes the protobuf request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg

from tests.logtools import agent, mission
from tests.otlp_receiver import otlp_receiver


def test_decision_spans_reach_an_otlp_receiver(db: str) -> None:
    due = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="milliseconds")
    with psycopg.connect(db, autocommit=True) as conn:
        agent(conn, "a1", name="Ada", state="active", user="alice")
        mission(conn, "m1", state="active", agentId="a1", nextRunAt=due, user="alice")
        mission(conn, "legacy", state="active", nextRunAt=due, user="bob")
    with otlp_receiver() as rx:
        env = {
            **os.environ,
            "SYNC_DATABASE_URL": db,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
            "OTEL_SERVICE_NAME": "consumer-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run", "--metrics-port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                decisions = [s for s in rx.spans if s.name == "mission.decision"]
                if len(decisions) >= 2:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            output, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output
        by_mission = {s.attributes["mission.id"]: s for s in rx.spans
                      if s.name == "mission.decision"}
        assert set(by_mission) == {"m1", "legacy"}, output
        ran = by_mission["m1"]
        assert ran.attributes["decision"] == "ran"
        assert ran.attributes["user.id"] == "alice"
        assert ran.attributes["agent.id"] == "a1"
        assert ran.attributes["agent.name"] == "Ada"
        assert ran.attributes["mission.lateness_ms"] >= 0
        assert ran.resource["service.name"] == "consumer-under-test"
        assert "agent.id" not in by_mission["legacy"].attributes
        assert any(s.name == "scheduler.pass" for s in rx.spans)
