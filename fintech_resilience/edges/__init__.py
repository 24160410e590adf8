"""The plumbing of the HTTP edges: one place for HTTP answers and fields (``http``), rate-limit
rules over HTTP (``ratelimit_http``), outbound calls (``outbound``), and the ASGI and WSGI
middlewares (``asgi/``, ``wsgi/``). Users import them from the public edge modules
(``fintech_resilience.asgi``, ``.wsgi``, ``.fastapi``, ``.flask``, ``.django``, ``.httpx``,
``.requests``). Importing this package imports no web framework."""
