"""ops/ files checked without a database or a container engine.

- compose.yaml parses, and its services, ports, commands and variables agree with the code.
- the Grafana dashboard is valid JSON and queries only metrics the consumer exports.
- the Dockerfile is slim, runs as a non-root user and checks /healthz.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from consumer import metrics
from consumer.cli import build_parser
from consumer.planner import URL_ENV

OPS = Path(__file__).resolve().parents[2] / "ops"


def test_compose_agrees_with_the_code() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "roles", "jaeger", "consumer", "standby", "writer",
            "planner"} <= set(services)
    jaeger_ports = {str(p).split(":")[-1] for p in services["jaeger"]["ports"]}
    assert {"4317", "4318", "16686"} <= jaeger_ports

    commands = {name: svc.get("command") for name, svc in services.items()}
    parser = build_parser()
    # The consumer's commands parse with the real CLI.
    for name in ("migrate", "consumer", "standby"):
        parser.parse_args(list(commands[name]))
    assert "--with-sync-schema" in commands["migrate"]

    for name in ("consumer", "standby"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env[URL_ENV].startswith("http://planner:8080")
        assert env["SYNC_DATABASE_URL"].startswith("postgresql://mana_ai_consumer:")
        assert "@postgres:5432/" in env["SYNC_DATABASE_URL"]
        assert env["METRICS_PORT"] == "9464"
        deps = services[name]["depends_on"]
        assert deps["roles"]["condition"] == "service_completed_successfully"
    assert services["writer"]["environment"]["SYNC_DATABASE_URL"].startswith(
        "postgresql://mana_sync:"
    )
    # The planner and writer modules the stack starts exist and take those flags.
    assert services["planner"]["entrypoint"] == ["python", "-m", "consumer.demo_planner"]
    assert services["writer"]["entrypoint"] == ["python", "-m", "consumer.demo_writer"]
    from consumer import demo_planner, demo_writer

    planner_args = demo_planner.build_parser().parse_args(commands["planner"])
    assert planner_args.host == "0.0.0.0" and planner_args.port == 8080
    demo_writer.build_parser().parse_args(commands["writer"])
    # The Dockerfile's health check and the leader's published port use METRICS_PORT.
    assert "9464:9464" in services["consumer"]["ports"]
    # roles.sql is what the roles step applies.
    assert any("roles.sql" in str(v) for v in services["roles"].get("volumes", []))


def test_grafana_dashboard_uses_our_metrics() -> None:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert exprs
    names = set(re.findall(r"\bmana_ai_[a-z_]+", " ".join(exprs)))
    exported = set()
    for metric in metrics.REGISTRY.collect():
        for sample in metric.samples:
            exported.add(sample.name)
    # Histograms and counters expose suffixed samples only once observed: allow the base.
    known = exported | {m.name for m in metrics.REGISTRY.collect()}
    known |= {f"{n}_total" for n in known} | {f"{n}_{s}" for n in known
                                              for s in ("bucket", "sum", "count")}
    assert names <= known, names - known
    for wanted in ("mana_ai_apply_lag_seconds", "mana_ai_snapshot_rows_applied_total",
                   "mana_ai_agent_decisions_total", "mana_ai_quarantined_rows_total",
                   "mana_ai_checkpoint_age_seconds"):
        assert wanted in names, wanted


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    text = (OPS / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all("slim" in f for f in froms), froms
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r"^HEALTHCHECK\b.*", text, re.M)
    assert "/healthz" in text and "9464" in text
    assert re.search(r'^ENTRYPOINT \["consumer"\]', text, re.M)
