"""Serving: the continuous-batching scheduler and its request handles, the OpenAI-compatible server, and the command
lines that start it (local, Ray Serve) or ask it (--server)."""
