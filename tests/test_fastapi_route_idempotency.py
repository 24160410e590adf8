"""FastAPI idempotency per route: ``Depends(Idempotent(store, principal=current_user))``, with
the principal from a real authentication dependency; and Starlette's per-route middleware."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import fintech_resilience as fr
from fintech_resilience.asgi import IdempotencyMiddleware
from fintech_resilience.fastapi import Idempotent, install, install_idempotency

with warnings.catch_warnings():  # starlette 1.x warns that its test client wants httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

SECRET = b"route-idempotency-test-secret-32b"


class User(BaseModel):
    id: int
    name: str


TOKENS = {"tok-alice": User(id=1, name="alice"), "tok-bob": User(id=2, name="bob")}
bearer = HTTPBearer()


def current_user(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> User:
    """A real FastAPI security dependency: 401/403 without a valid bearer token."""
    user = TOKENS.get(credentials.credentials)
    if user is None:
        raise HTTPException(401, "invalid token")
    return user


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer tok-{user}"}


class ChargeIn(BaseModel):
    amount: int


class Psp:
    """Stands in for the PSP; an endpoint may wait on ``gate`` to stay in flight."""

    def __init__(self) -> None:
        self.charges: list[tuple[str, int]] = []
        self.ids = itertools.count(1)
        self.gate: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None


def make_app(store: fr.IdempotencyStore, psp: Psp, **options: Any) -> FastAPI:
    app = FastAPI()
    install(app)
    charge_once = Idempotent(store, principal=current_user, principal_key=lambda u: u.id,
                             required=True, **options)

    @app.post("/login")
    async def login() -> dict[str, str]:
        return {"token": "tok-alice"}

    @app.post("/charges", status_code=201)
    async def charge(body: ChargeIn, user: Annotated[User, Depends(current_user)],
                     ctx: fr.IdempotencyContext = Depends(charge_once)  # noqa: B008 - local
                     ) -> dict[str, Any]:
        if psp.entered is not None and psp.gate is not None:
            psp.entered.set()
            await psp.gate.wait()
        if body.amount < 0:
            raise HTTPException(400, "negative amount")
        if body.amount == 13:
            raise RuntimeError("the PSP call failed")
        if body.amount == 500:
            raise HTTPException(502, "PSP unavailable")
        psp.charges.append((user.name, body.amount))
        return {"id": f"ch_{next(psp.ids)}", "user": user.name, "amount": body.amount,
                "psp_key": ctx.downstream_key("psp"), "fencing": ctx.fencing_token}

    return app


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> fr.IdempotencyStore:
    if request.param == "memory":
        return fr.IdempotencyStore(fr.MemoryBackend(), secret=SECRET)
    return fr.IdempotencyStore(request.getfixturevalue("redis_url"), secret=SECRET)


@pytest.fixture
async def client(store: fr.IdempotencyStore) -> AsyncIterator[tuple[httpx.AsyncClient, Psp]]:
    psp = Psp()
    transport = httpx.ASGITransport(app=make_app(store, psp))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http, psp


def key(value: str, user: str = "alice") -> dict[str, str]:
    return {"Idempotency-Key": value, **auth(user)}


async def test_required_on_one_route_leaves_the_others_alone(client: Any) -> None:
    http, psp = client
    assert (await http.post("/login")).status_code == 200  # no key, no idempotency here
    missing = await http.post("/charges", json={"amount": 1}, headers=auth("alice"))
    assert missing.status_code == 400
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"].endswith("/idempotency-key-missing")
    assert psp.charges == []


async def test_a_duplicate_is_replayed_and_the_psp_is_charged_once(client: Any) -> None:
    http, psp = client
    first = await http.post("/charges", json={"amount": 2500}, headers=key("order-1"))
    again = await http.post("/charges", json={"amount": 2500}, headers=key("order-1"))
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert psp.charges == [("alice", 2500)]
    other_body = await http.post("/charges", json={"amount": 1}, headers=key("order-1"))
    assert other_body.status_code == 422


async def test_two_users_with_one_key_never_see_each_others_response(client: Any) -> None:
    http, psp = client
    alice = await http.post("/charges", json={"amount": 100}, headers=key("same", "alice"))
    bob = await http.post("/charges", json={"amount": 100}, headers=key("same", "bob"))
    assert alice.status_code == bob.status_code == 201
    assert (alice.json()["user"], bob.json()["user"]) == ("alice", "bob")
    assert alice.json()["psp_key"] != bob.json()["psp_key"]
    assert "idempotent-replayed" not in bob.headers
    assert psp.charges == [("alice", 100), ("bob", 100)]


async def test_unauthenticated_requests_get_the_auth_answer_and_claim_nothing(
        client: Any) -> None:
    http, psp = client
    anonymous = await http.post("/charges", json={"amount": 7},
                                headers={"Idempotency-Key": "k-anon"})
    forged = await http.post("/charges", json={"amount": 7},
                             headers={"Idempotency-Key": "k-anon", "Authorization": "Bearer x"})
    assert anonymous.status_code in (401, 403) and forged.status_code == 401
    later = await http.post("/charges", json={"amount": 7}, headers=key("k-anon"))
    assert later.status_code == 201 and "idempotent-replayed" not in later.headers
    assert psp.charges == [("alice", 7)]


async def test_concurrent_duplicates_execute_once(client: Any) -> None:
    http, psp = client
    psp.gate, psp.entered = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(
        http.post("/charges", json={"amount": 900}, headers=key("race")))
    await asyncio.wait_for(psp.entered.wait(), timeout=10)
    duplicates = await asyncio.gather(*(
        http.post("/charges", json={"amount": 900}, headers=key("race")) for _ in range(5)))
    assert [d.status_code for d in duplicates] == [409] * 5
    assert all(d.json()["type"].endswith("/idempotency-request-in-progress")
               for d in duplicates)
    psp.gate.set()
    done = await asyncio.wait_for(first, timeout=10)
    after = await http.post("/charges", json={"amount": 900}, headers=key("race"))
    assert done.status_code == after.status_code == 201 and after.json() == done.json()
    assert psp.charges == [("alice", 900)]


async def test_failures_release_the_key_and_client_errors_are_stored(client: Any) -> None:
    http, psp = client
    for _ in range(2):  # an uncaught error: released, so the retry runs (and fails) again
        with pytest.raises(RuntimeError):
            await http.post("/charges", json={"amount": 13}, headers=key("crash"))
    psp_down = await http.post("/charges", json={"amount": 500}, headers=key("5xx"))
    assert psp_down.status_code == 502
    retried = await http.post("/charges", json={"amount": 500}, headers=key("5xx"))
    assert retried.status_code == 502 and "idempotent-replayed" not in retried.headers
    refused = await http.post("/charges", json={"amount": -1}, headers=key("4xx"))
    replayed = await http.post("/charges", json={"amount": -1}, headers=key("4xx"))
    assert refused.status_code == replayed.status_code == 400
    assert replayed.headers["idempotent-replayed"] == "true"
    assert psp.charges == []


def test_with_the_test_client_and_threads() -> None:
    store = fr.IdempotencyStore(fr.MemoryBackend(), secret=SECRET)
    psp = Psp()
    with TestClient(make_app(store, psp)) as http:
        codes = [http.post("/charges", json={"amount": 5}, headers=key("tc")).status_code
                 for _ in range(3)]
    assert codes == [201] * 3 and psp.charges == [("alice", 5)]


def test_the_app_needs_install() -> None:
    app = FastAPI()
    once = Idempotent(fr.IdempotencyStore(fr.MemoryBackend()), global_scope=True)

    @app.post("/charges", dependencies=[Depends(once)])
    async def charge() -> str:
        return "ok"

    with pytest.raises(fr.ConfigurationError, match=r"install\(app\)"):
        TestClient(app).post("/charges", headers={"Idempotency-Key": "k"})


def test_an_object_principal_needs_principal_key() -> None:
    app = FastAPI()
    install(app)
    once = Idempotent(fr.IdempotencyStore(fr.MemoryBackend()), principal=current_user)

    @app.post("/charges", dependencies=[Depends(once)])
    async def charge() -> str:
        return "ok"

    with pytest.raises(fr.ConfigurationError, match="principal_key"):
        TestClient(app).post("/charges", headers=key("k"))


def test_bad_options_fail_at_construction() -> None:
    store = fr.IdempotencyStore(fr.MemoryBackend())
    with pytest.raises(fr.ConfigurationError, match="principal="):
        Idempotent(store)
    with pytest.raises(fr.ConfigurationError, match="IdempotencyStore"):
        Idempotent(object(), global_scope=True)  # type: ignore[arg-type]
    with pytest.raises(fr.ConfigurationError, match="max_body_bytes"):
        Idempotent(store, global_scope=True, max_body_bytes=-1)
    with pytest.raises(fr.ConfigurationError, match="principal_key"):
        Idempotent(store, principal=current_user, principal_key="id")  # type: ignore[arg-type]


async def test_behind_the_app_wide_middleware_the_route_reuses_its_claim() -> None:
    store = fr.IdempotencyStore(fr.MemoryBackend(), secret=SECRET)
    app = FastAPI()
    install(app)
    install_idempotency(app, store, scope=lambda scope: "everyone")
    runs: list[int] = []
    once = Idempotent(store, global_scope=True)

    @app.post("/charges")
    async def charge(ctx: fr.IdempotencyContext = Depends(once)  # noqa: B008 - local
                     ) -> dict[str, int]:
        runs.append(1)
        return {"fencing": ctx.fencing_token}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as http:
        first = await http.post("/charges", headers={"Idempotency-Key": "k"})
        again = await http.post("/charges", headers={"Idempotency-Key": "k"})
    assert first.status_code == again.status_code == 200 and runs == [1]
    assert again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("wiring", ["route", "app-wide"])
async def test_the_response_leaves_before_background_tasks_run(wiring: str) -> None:
    store = fr.IdempotencyStore(fr.MemoryBackend(), secret=SECRET)
    app = FastAPI()
    install(app)
    if wiring == "app-wide":
        install_idempotency(app, store, global_scope=True)
    once = Idempotent(store, global_scope=True)
    delivered = asyncio.Event()  # the client has the whole response
    background: list[str] = []

    async def send_receipt() -> None:  # e.g. an e-mail, after the answer
        await asyncio.wait_for(delivered.wait(), timeout=5)
        background.append("sent")

    @app.post("/charges")
    async def charge(tasks: BackgroundTasks,
                     ctx: fr.IdempotencyContext = Depends(once)  # noqa: B008 - local
                     ) -> dict[str, int]:
        tasks.add_task(send_receipt)
        return {"fencing": ctx.fencing_token}

    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            delivered.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/charges", "raw_path": b"/charges",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 5000),
             "server": ("test", 80), "headers": [(b"idempotency-key", b"bg-1"),
                                                 (b"host", b"test")]}
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    assert background == ["sent"]
    assert messages[0]["status"] == 200 and b"fencing" in messages[-1]["body"]
    replay = await store.aclaim(store.record_key("bg-1", scope="*", method="POST",
                                                 route="/charges"),
                                store.fingerprint("POST", "/charges", b"", b""))
    assert replay.response is not None and replay.response.status == 200  # it was stored


# -- Starlette: the middleware on one route, after app-wide authentication ---------------------
class TokenBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        user = TOKENS.get(conn.headers.get("authorization", "").removeprefix("Bearer "))
        return None if user is None else (AuthCredentials(["authenticated"]), SimpleUser(user.name))


async def test_starlette_route_level_middleware_with_authentication() -> None:
    store = fr.IdempotencyStore(fr.MemoryBackend(), secret=SECRET)
    runs: list[str] = []

    async def charge(request: Request) -> JSONResponse:
        runs.append(request.user.display_name)
        return JSONResponse({"n": len(runs), "user": request.user.display_name}, 201)

    async def login(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    idempotent = Middleware(IdempotencyMiddleware, store=store, required=True,
                            scope=lambda scope: scope["user"].display_name
                            if scope["user"].is_authenticated else None)
    app = Starlette(routes=[Route("/login", login, methods=["POST"]),
                            Route("/charges", charge, methods=["POST"], middleware=[idempotent])],
                    middleware=[Middleware(AuthenticationMiddleware, backend=TokenBackend())])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as http:
        assert (await http.post("/login")).status_code == 200
        assert (await http.post("/charges", headers=auth("alice"))).status_code == 400
        first = await http.post("/charges", headers=key("s1", "alice"))
        again = await http.post("/charges", headers=key("s1", "alice"))
        bob = await http.post("/charges", headers=key("s1", "bob"))
    assert again.json() == first.json() == {"n": 1, "user": "alice"}
    assert bob.json() == {"n": 2, "user": "bob"} and runs == ["alice", "bob"]
