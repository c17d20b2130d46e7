"""`scans-guard serve`: an OpenAI-compatible guarded model server (extra `[serve]`: FastAPI, uvicorn, prometheus-client).

See docs/server.md. `create_app(engine_or_loader, settings)` builds the FastAPI app; `LocalServer` runs one on a
loopback port in a thread.
"""

from .app import REFUSAL, ApiError, ServerSettings, create_app
from .local import LocalServer
from .schemas import EXTENSION_KEY

__all__ = ["EXTENSION_KEY", "REFUSAL", "ApiError", "LocalServer", "ServerSettings", "create_app"]
