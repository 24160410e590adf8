"""Pure ASGI middlewares (re-exported by ``fintech_resilience.asgi``)."""
