"""Serving: a FastAPI app over one run directory, with a static web page (``modalrec serve RUN``)."""

from modalrec.serve.app import create_app, serve
from modalrec.serve.engine import Engine

__all__ = ["Engine", "create_app", "serve"]
