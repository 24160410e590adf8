"""A Flask app: rate limits per merchant, idempotent charges, a breaker around the PSP.

    python examples/flask_app.py                 # drives the app with Flask's test client
    flask --app examples/flask_app.py run        # serve it

The extension reads ``app.config["FINTECH_RESILIENCE"]`` (the schema of
``fintech_resilience.config``). With ``FINTECH_RESILIENCE_REDIS_URL`` set, state is shared
through that Redis; each run uses merchants and keys of its own, so runs can follow each other
(and the other examples) on one Redis.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

from flask import Flask, jsonify, request

import fintech_resilience as fr
from fintech_resilience.flask import Resilience

URL = os.environ.get("FINTECH_RESILIENCE_REDIS_URL") or "memory://"
store = fr.IdempotencyStore(URL, secret=os.environ.get("IDEMPOTENCY_SECRET",
                                                       "dev-only-secret-32-bytes-long!!"))
psp = fr.CircuitBreaker("flask-psp-acme", backend=URL, minimum_calls=4, failure_rate=0.5,
                        window=fr.CountWindow(10), break_duration=30)
_ids = itertools.count(1)
PSP_DOWN = {"now": False}


@psp
def psp_charge(amount: int, idempotency_key: str) -> dict[str, Any]:
    """Stands in for the PSP's API; deduplicates on the key it receives, like real PSPs."""
    if PSP_DOWN["now"]:
        raise ConnectionError("PSP unreachable")
    return {"id": f"ch_{next(_ids)}", "amount": amount, "key": idempotency_key}


resilience = Resilience(key=lambda req: req.environ.get("REMOTE_USER"))


def merchant_of(environ: dict[str, Any]) -> str | None:
    """The principal idempotency records belong to (set by authentication, below)."""
    return environ.get("REMOTE_USER")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["FINTECH_RESILIENCE"] = {
        "BACKEND": URL,
        "RATE_LIMIT": {"LIMITS": "100/minute", "EXEMPT_PATHS": ["/healthz"]},
        # the WSGI idempotency middleware around the app; authentication wraps it (below)
        "IDEMPOTENCY": {"STORE": store, "SCOPE": merchant_of, "METHODS": ["POST"],
                        "REQUIRED": True},
    }
    resilience.init_app(app)

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True}

    @app.post("/charges")
    @resilience.limit("3/second")
    def charge() -> Any:
        ctx = fr.current_idempotency()
        assert ctx is not None  # the middleware requires a key on POST
        try:
            result = psp_charge(int(request.get_json()["amount"]), ctx.downstream_key("charge"))
        except fr.CircuitOpen as exc:
            return jsonify(error="psp_unavailable"), 503, {"Retry-After":
                                                           str(round(exc.retry_after))}
        except ConnectionError:
            return jsonify(error="psp_unreachable"), 502
        return jsonify(id=result["id"], amount=result["amount"]), 201

    app.wsgi_app = Authenticate(app.wsgi_app)  # type: ignore[method-assign]
    return app


class Authenticate:
    """A stand-in for real authentication: ``X-Merchant`` becomes ``REMOTE_USER``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_USER"] = environ.get("HTTP_X_MERCHANT", "anon")
        return self.app(environ, start_response)


app = create_app()


def main() -> None:
    run = uuid.uuid4().hex[:8]  # this run's merchants
    psp.reset()  # an operator's reset: a run a moment ago may have left the breaker open
    client = app.test_client()
    headers = {"X-Merchant": f"m-42-{run}", "Idempotency-Key": "order-1"}
    first = client.post("/charges", json={"amount": 2500}, headers=headers)
    again = client.post("/charges", json={"amount": 2500}, headers=headers)
    print("charge:", first.status_code, first.get_json())
    print("same key again:", again.status_code, again.get_json(),
          "replayed:", again.headers.get("Idempotent-Replayed"))
    missing = client.post("/charges", json={"amount": 1}, headers={"X-Merchant": f"m-42-{run}"})
    print("no Idempotency-Key:", missing.status_code, missing.get_json()["title"])
    burst = [client.post("/charges", json={"amount": 100},
                         headers={"X-Merchant": f"m-7-{run}", "Idempotency-Key": f"b{i}"}
                         ).status_code
             for i in range(5)]
    print("m-7 bursts 5 charges:", burst)
    PSP_DOWN["now"] = True
    outage = [client.post("/charges", json={"amount": 100},
                          headers={"X-Merchant": f"m-{i}-{run}", "Idempotency-Key": "o"}
                          ).status_code
              for i in range(6)]
    print("PSP down:", outage, "breaker:", psp.state.name)
    assert first.get_json() == again.get_json()
    assert missing.status_code == 400
    assert 429 in burst
    assert outage[-1] == 503
    assert psp.state is fr.BreakerState.OPEN


if __name__ == "__main__":
    main()
