"""A one-file Django project served by ``manage.py runserver --noreload``.

Usage: ``django_runserver.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes
half a second, ``/echo`` returns the body it was sent. Writes ``cleanup-PID`` once
the command has returned.
"""

import os
import sys
import time
from pathlib import Path

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


def pid(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(os.getpid()))


def slow(request: HttpRequest) -> HttpResponse:
    mark("slow")
    time.sleep(0.5)
    return HttpResponse(f"slow done {os.getpid()}")


@csrf_exempt
def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body)


urlpatterns = [path("", pid), path("slow", slow), path("echo", echo)]


if __name__ == "__main__":
    settings.configure(
        DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test", MIDDLEWARE=[]
    )
    django.setup()
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(
            ["manage.py", "runserver", "--noreload", f"127.0.0.1:{sys.argv[1]}"]
        )
    finally:
        mark("cleanup")
