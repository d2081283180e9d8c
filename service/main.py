"""``mind serve``: run the recall service with uvicorn, one process (see docs/service.md).

Flags override MIND_* environment settings. SIGTERM/SIGINT: uvicorn stops accepting, lets
in-flight requests finish, the lifespan drains the batcher, and the process exits 0.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import signal
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings

FLAGS = {  # flag -> Settings field
    "bundle": Path, "bundle_root": Path, "host": str, "port": int, "workers": int, "device": str,
    "watch_interval_s": float, "max_batch_size": int, "batch_wait_ms": float, "torch_threads": int,
    "faiss_threads": int, "search_threads": int, "batch_workers": int, "log_level": str,
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    for name, kind in FLAGS.items():
        field = Settings.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=f"{field.description or name} (env MIND_{name.upper()}, "
                                 f"default {field.get_default(call_default_factory=True)})")


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment settings, overridden by the flags given on the command line."""
    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _fast_http_stack(app) -> dict:
    """uvloop when installed, and httptools (a dependency) with the recall hot path answered by
    the protocol itself (service/protocol.py)."""
    from service.protocol import RecallHttpProtocol

    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return {"loop": loop, "http": functools.partial(RecallHttpProtocol, front=app.state.front)}


def server_config(app, settings: Settings):
    """mind serve's uvicorn configuration of ``app`` (tests serve through it too)."""
    import uvicorn

    return uvicorn.Config(app, host=settings.host, port=settings.port, access_log=False, log_config=None,
                          lifespan="on", timeout_graceful_shutdown=30, **_fast_http_stack(app))


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.observability import configure_logging

    if (getattr(args, "workers", None) or 1) > 1:
        print("mind serve: --workers must be 1: dynamic batching needs every request in one process's "
              "queue; scale out with replicas (docs/service.md, 'Why one worker process')")
        return 2
    try:
        settings = settings_from(args)
    except ValidationError as err:
        print(f"mind serve: invalid settings:\n{err}")
        return 2
    configure_logging(settings.log_level)
    app = create_app(settings)
    server = uvicorn.Server(server_config(app, settings))
    # uvicorn re-raises the captured signal after its graceful shutdown; a Python-level
    # handler turns that into a normal return, so a drained SIGTERM exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: logging.getLogger("service.main").info(
            "shut down on signal", extra={"signal": signum}))
    server.run()
    return 0 if server.started else 1
