"""No shared default state between app instances in one process: each Flask app (per extension)
and each FastAPI app counts on a memory backend of its own unless a backend is configured."""

from __future__ import annotations

import warnings

from fastapi import Depends, FastAPI
from flask import Flask

import fintech_resilience as fr
from fintech_resilience.fastapi import RateLimit, install
from fintech_resilience.flask import Resilience
from fintech_resilience.keys import principal_or_ip

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

KEY = principal_or_ip(principal_header="X-User")

# the application-factory way: one extension and one view module for every app
resilience = Resilience(key=KEY)


@resilience.limit("1/minute", name="pay")
def pay() -> str:
    return "ok"


def plain() -> str:
    return "ok"


def create_flask_app() -> Flask:
    app = Flask(__name__)
    resilience.init_app(app)
    app.add_url_rule("/pay", view_func=pay)
    return app


def test_two_flask_apps_of_one_factory_count_separately() -> None:
    first, second = create_flask_app().test_client(), create_flask_app().test_client()
    assert first.get("/pay", headers={"X-User": "u"}).status_code == 200
    assert first.get("/pay", headers={"X-User": "u"}).status_code == 429
    assert second.get("/pay", headers={"X-User": "u"}).status_code == 200


def test_two_extensions_with_same_named_limits_count_separately() -> None:
    codes = []
    for _ in range(2):
        app = Flask(__name__)
        extension = Resilience(app, key=KEY)

        @app.get("/pay")
        @extension.limit("1/minute", name="same-name")
        def view() -> str:
            return "ok"

        codes.append(app.test_client().get("/pay", headers={"X-User": "u"}).status_code)
    assert codes == [200, 200]


def test_one_flask_app_keeps_its_state_and_a_shared_backend_is_shared() -> None:
    app = create_flask_app()
    assert resilience.backend(app) is resilience.backend(app)
    assert isinstance(resilience.backend(app), fr.MemoryBackend)
    assert resilience.backend(app) is not resilience.backend(create_flask_app())
    shared = fr.MemoryBackend()
    apps = []
    for _ in range(2):
        app = Flask(__name__)
        app.config["FINTECH_RESILIENCE"] = {"BACKEND": shared}
        extension = Resilience(app, key=KEY)
        app.add_url_rule("/pay", view_func=extension.limit("1/minute", name="pay")(plain))
        apps.append(app.test_client())
    assert [c.get("/pay", headers={"X-User": "u"}).status_code for c in apps] == [200, 429]


limit = RateLimit("1/minute", name="pay", key=KEY)  # one dependency object for every app


def create_fastapi_app(**options: object) -> FastAPI:
    app = FastAPI()
    if options:
        install(app, **options)  # type: ignore[arg-type]

    @app.get("/pay", dependencies=[Depends(limit)])
    async def view() -> str:
        return "ok"

    return app


def test_two_fastapi_apps_sharing_one_dependency_count_separately() -> None:
    first, second = TestClient(create_fastapi_app()), TestClient(create_fastapi_app())
    assert first.get("/pay", headers={"X-User": "u"}).status_code == 200
    assert first.get("/pay", headers={"X-User": "u"}).status_code == 429
    assert second.get("/pay", headers={"X-User": "u"}).status_code == 200


def test_fastapi_apps_given_one_backend_share_it() -> None:
    shared = fr.MemoryBackend()
    clients = [TestClient(create_fastapi_app(backend=shared)) for _ in range(2)]
    assert [c.get("/pay", headers={"X-User": "u"}).status_code for c in clients] == [200, 429]
