"""The seeds' "Pattern Matching in Python" example (redis-py), run unchanged but for the
lines that make the client, against redis-py + a redis-server this test starts and against
shmbus: both print the same lines. (The example's endless listen() loop stops after the
three messages published here, so the test ends.)"""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

EXAMPLE = """
{make_client}
pubsub = r.pubsub()
# Subscribe to pattern
pubsub.psubscribe('user:*')
print("ready", flush=True)
seen = 0
# Listen for messages
for message in pubsub.listen():
    if message['type'] == 'pmessage':
        channel = message['channel'].decode()
        data = message['data'].decode()
        # Extract user ID from channel
        userId = channel.split(':')[1]
        print(f"Message for user {{userId}}: {{data}}", flush=True)
        seen += 1
        if seen == 3:
            break
"""

REDIS_CLIENT = "import redis\nr = redis.Redis(port={port})"
SHMBUS_CLIENT = "import shmbus\nr = shmbus.Bus()"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(make_client, publish, env):
    child = subprocess.Popen(
        [sys.executable, "-c", EXAMPLE.format(make_client=make_client)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 10
    while publish("user:1", "hello") == 0:  # until the PSUBSCRIBE took effect
        assert time.monotonic() < deadline
        time.sleep(0.01)
    publish("user:42", "you have mail")
    publish("user:7", "caf\u00e9")
    out, _ = child.communicate(timeout=10)
    assert child.returncode == 0
    return out.splitlines()


def test_the_seed_example_prints_the_same_with_redis_py_and_shmbus(daemon, bus):
    try:
        import redis
    except ImportError:
        pytest.skip("python3-redis (redis-py) is not installed")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not come up"
                time.sleep(0.02)
        env = dict(os.environ, SHMBUS_BUS=daemon.bus, SHMBUS_SOCKET=daemon.socket)
        with_redis = run(REDIS_CLIENT.format(port=port), client.publish, env)
        with_shmbus = run(SHMBUS_CLIENT, bus.publish, env)
    finally:
        server.terminate()
        server.wait(10)
    assert with_redis == [
        "Message for user 1: hello",
        "Message for user 42: you have mail",
        "Message for user 7: caf\u00e9",
    ]
    assert with_shmbus == with_redis
