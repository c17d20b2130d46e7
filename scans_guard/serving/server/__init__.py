"""`scans-guard serve`: an OpenAI-compatible guarded model server (extra `[serve]`: FastAPI, uvicorn, prometheus).

See docs/server.md. `create_app(engine_or_loader, settings)` builds the FastAPI app; `LocalServer` runs one on a
loopback port in a thread.
"""

from .app import create_app
from .errors import ApiError
from .local import LocalServer
from .schemas import EXTENSION_KEY
from .state import REFUSAL, ServerSettings

__all__ = ["EXTENSION_KEY", "REFUSAL", "ApiError", "LocalServer", "ServerSettings", "create_app"]
