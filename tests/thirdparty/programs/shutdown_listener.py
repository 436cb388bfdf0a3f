"""A plain accept loop that shuts its listening socket down when a client asks it to.

Usage: ``shutdown_listener.py PORT``. Each connection gets the worker's pid; a
connection that sends ``shutdown`` makes this process call
``shutdown(SHUT_RDWR)`` on its listening socket (as servers do to end an accept
loop), after which its ``accept()`` fails and the program ends.
"""

import os
import socket
import sys

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
while True:
    try:
        conn, _ = sock.accept()
    except OSError as exc:
        print(f"{os.getpid()} stopped accepting: {exc}", flush=True)
        break
    with conn:
        request = conn.recv(100)
        conn.sendall(b"%d\n" % os.getpid())
    if request.startswith(b"shutdown"):
        sock.shutdown(socket.SHUT_RDWR)
sock.close()
