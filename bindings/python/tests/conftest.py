"""A private shmbusd for each test module: the binary $SHMBUSD, on a socket in a temporary
directory, stopped with SIGTERM afterwards."""
import os
import signal
import subprocess
import tempfile
import time

import pytest

import shmbus


class Daemon:
    def __init__(self, binary: str) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="shmbus-py-")
        self.bus = f"py{os.getpid()}x{id(self) % 100000}"
        self.socket = os.path.join(self.dir.name, "bus.sock")
        self.process = subprocess.Popen(
            [binary, "--bus", self.bus, "--socket", self.socket, "--log-level", "warn"]
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                shmbus.Bus(bus=self.bus, socket=self.socket).close()
                return
            except shmbus.DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def options(self) -> dict:
        return {"bus": self.bus, "socket": self.socket}

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)
        self.dir.cleanup()


@pytest.fixture(scope="module")
def daemon():
    binary = os.environ.get("SHMBUSD")
    if not binary:
        pytest.skip("SHMBUSD (the shmbusd binary) is not set")
    d = Daemon(binary)
    yield d
    d.stop()


@pytest.fixture
def bus(daemon):
    with shmbus.Bus(**daemon.options()) as b:
        yield b
