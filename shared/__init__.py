"""Code both sides of the queue import: wire protocol, Redis key names, settings, error kinds.

Imports neither torch nor FastAPI.
"""
