"""One way to turn a pattern into a decorator for sync and async functions alike."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, ParamSpec, TypeVar, cast

__all__ = ["around_calls", "inside"]

P = ParamSpec("P")
R = TypeVar("R")


def around_calls(fn: Callable[P, R], call: Callable[..., Any],
                 acall: Callable[..., Awaitable[Any]]) -> Callable[P, R]:
    """``fn`` run as ``call(fn, *args, **kwargs)``, or ``await acall(...)`` if it is async."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            return await acall(fn, *args, **kwargs)

        return cast(Callable[P, R], awrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)

    return cast(Callable[P, R], wrapper)


def inside(fn: Callable[P, R], hold: Callable[[], AbstractContextManager[Any]],
           ahold: Callable[[], AbstractAsyncContextManager[Any]]) -> Callable[P, R]:
    """``fn`` run inside ``with hold():``, or ``async with ahold():`` if it is async."""
    if inspect.iscoroutinefunction(fn):
        afn = cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            async with ahold():
                return await afn(*args, **kwargs)

        return cast(Callable[P, R], awrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with hold():
            return fn(*args, **kwargs)

    return cast(Callable[P, R], wrapper)
