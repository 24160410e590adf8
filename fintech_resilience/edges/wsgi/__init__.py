"""WSGI middlewares as plain callable classes (re-exported by ``fintech_resilience.wsgi``)."""
