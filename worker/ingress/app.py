"""``uvicorn worker.ingress.app:app``: the Procfile's ``web:`` line.

The configuration is read at import, like ``worker.app``: a missing secret stops the server
before it binds its port, with a message naming the variables to set.
"""

from __future__ import annotations

import sys

from starlette.applications import Starlette

from config import ConfigError
from config.ingress import IngressConfig, load_config
from worker.ingress.service import create_app
from worker.logs import configure_logging
from worker.redis_clients import require_reachable


def _load() -> IngressConfig:
    try:
        config = load_config()
        require_reachable(config.redis_url)
    except ConfigError as exc:
        print(f"funnelfox-enricher ingress: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return config


config = _load()
configure_logging(config.log_format, config.log_level, client_ips=config.log_client_ips)
app: Starlette = create_app(config)
