"""Run the app under uvicorn for `plantlib serve`: one process, or several workers that each load the model."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from plantlib.errors import ConfigError
from plantlib.serving.app import SETTINGS_VARIABLE, ServeSettings, create_app
from plantlib.serving.model import check_source

LOOPBACK = "127.0.0.1"


def serve(settings: ServeSettings, host: str = LOOPBACK, port: int = 8000, workers: int = 1) -> int:
    """Serve until Ctrl-C or SIGTERM (uvicorn finishes the requests in flight, then returns); the exit status.

    With `workers` > 1 each uvicorn worker process loads its own model with its share of the cores.
    """
    import uvicorn

    if workers < 1:
        raise ConfigError(f"--workers {workers} is not allowed; use 1 or more")
    check_source(Path(settings.source))
    shown = LOOPBACK if host in ("0.0.0.0", "::") else host
    print(f"plantlib serve: {settings.source} on http://{shown}:{port}/ (API docs /docs; Ctrl-C stops it)", flush=True)
    if host != LOOPBACK:
        print(f"plantlib serve: listening on {host}: other machines that reach this one can use the API", flush=True)
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 10}
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    share = max(1, (os.cpu_count() or 1) // workers)
    os.environ[SETTINGS_VARIABLE] = replace(settings, threads=settings.threads or share).to_json()
    uvicorn.run("plantlib.serving.app:app_from_environment", factory=True, workers=workers, **options)
    return 0
