"""Local servers the tests start: a free port, and waiting for an HTTP server's /health to answer."""

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, base: str, timeout_s: float = 90) -> None:
    """Poll `base`/health until it answers 200; AssertionError (with the server's output if it died) otherwise."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                raise AssertionError(process.stdout.read() if process.poll() is not None else "no server") from None
            time.sleep(0.5)
