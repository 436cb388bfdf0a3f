"""A one-file Django project's ASGI application, for ``pycluster serve django_asgi:application``.

``/`` answers the worker's pid, ``/slow`` takes half a second (an async view),
``/echo`` returns the body it was sent (a sync view, which Django runs in a thread),
``/stream`` sends ``STREAMED`` in 20 pieces from an async iterator. Django has no
lifespan (and so writes no ``cleanup-PID``).
"""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

STREAMED = b"".join(bytes([65 + i % 26]) * 10_000 for i in range(20))


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


async def pid(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(os.getpid()))


async def slow(request: HttpRequest) -> HttpResponse:
    mark("slow")
    await asyncio.sleep(0.5)
    return HttpResponse(f"slow done {os.getpid()}")


@csrf_exempt
def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body, content_type="application/octet-stream")


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(20):
            await asyncio.sleep(0)
            yield STREAMED[i * 10_000 : (i + 1) * 10_000]

    return StreamingHttpResponse(pieces(), content_type="application/octet-stream")


urlpatterns = [path("", pid), path("slow", slow), path("echo", echo), path("stream", stream)]

settings.configure(
    DEBUG=False,
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="test",
    MIDDLEWARE=[],
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (after settings)

application = get_asgi_application()
