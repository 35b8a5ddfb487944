"""The connection bounds (consumer.db.Bounds): keepalives and the options a connection gets.
That they hold against a stalled server is tested in tests/test_faults_leader.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.db import Bounds, application_name, keepalive_split


@given(st.floats(min_value=0.1, max_value=3600))
def test_keepalives_declare_a_silent_peer_dead_within_the_peer_timeout(timeout: float) -> None:
    idle, interval, count = keepalive_split(timeout)
    assert min(idle, interval, count) >= 1
    assert idle + interval * count == max(3, round(timeout))
    params = Bounds(peer_timeout=timeout).kwargs("work")
    assert params["keepalives"] == 1 and params["tcp_user_timeout"] == int(timeout * 1000)
    assert params["application_name"] == application_name("work") == "mana-ai-consumer/work"
    assert f"-c tcp_keepalives_idle={idle}" in params["options"]
    # The URL's own options stay; no statement timeout of ours when it is 0.
    dsn = "host=h options='-c search_path=app'"
    options = Bounds(statement_timeout=0).kwargs("test", dsn)["options"]
    assert options.startswith("-c search_path=app -c tcp_keepalives_idle=")
    assert "statement_timeout" not in options
