"""The web demo's server: a browser that goes away mid-response is normal, not an error to print."""
import socket
import struct
import threading
import time
from http.server import ThreadingHTTPServer

import pytest


def _hang_up_mid_response(server_class, capsys) -> str:
    from shira_demos.web_demo import make_handler

    server = server_class(("127.0.0.1", 0), make_handler(None))  # GET / serves the page: no demo needed
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        for _ in range(20):
            c = socket.create_connection(server.server_address)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            c.close()
        time.sleep(0.5)
    finally:
        server.shutdown()
        server.server_close()
    return capsys.readouterr().err


@pytest.mark.parametrize("quiet", [True, False])
def test_a_closed_connection_prints_no_traceback(quiet, capsys):
    from shira_demos.web_demo import DemoServer

    err = _hang_up_mid_response(DemoServer if quiet else ThreadingHTTPServer, capsys)
    if quiet:
        assert "Traceback" not in err, err[-2000:]
    else:  # the plain server does print them: the check above can fail
        assert "Traceback" in err and ("BrokenPipeError" in err or "ConnectionResetError" in err), err[-500:]
