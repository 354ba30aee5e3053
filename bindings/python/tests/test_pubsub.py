"""The shmbus package against a real shmbusd: redis-py's message shapes and confirmations,
patterns, handlers, listen(), run_in_thread(), binary payloads, PUBSUB, errors, and
processes (a publisher elsewhere, a subscriber killed mid-stream, Ctrl-C)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shmbus


def test_subscribe_gives_redis_py_confirmations_then_messages(bus):
    p = bus.pubsub()
    p.subscribe("news", "sport")
    assert p.get_message() == {"type": "subscribe", "pattern": None, "channel": b"news", "data": 1}
    assert p.get_message() == {"type": "subscribe", "pattern": None, "channel": b"sport", "data": 2}
    assert p.get_message(timeout=0.05) is None
    assert bus.publish("news", "hello") == 1
    m = p.get_message(timeout=1)
    assert {k: m[k] for k in ("type", "pattern", "channel", "data")} == {
        "type": "message",
        "pattern": None,
        "channel": b"news",
        "data": b"hello",
    }
    assert m["sequence"] == 0 and m["lost"] == 0
    p.unsubscribe("news")
    assert p.get_message() == {"type": "unsubscribe", "pattern": None, "channel": b"news", "data": 1}
    assert bus.publish("news", "gone") == 0
    p.close()


def test_a_channel_and_a_pattern_deliver_message_then_pmessage(bus):
    p = bus.pubsub(ignore_subscribe_messages=True)
    p.subscribe("user:1")
    p.psubscribe("user:*")
    assert bus.publish("user:1", b"x") == 2
    first = p.get_message(timeout=1)
    second = p.get_message(timeout=1)
    assert (first["type"], first["pattern"], first["channel"]) == ("message", None, b"user:1")
    assert (second["type"], second["pattern"], second["channel"]) == ("pmessage", b"user:*", b"user:1")
    assert p.get_message(timeout=0.05) is None
    p.close()


def test_payloads_are_bytes_whatever_was_published(bus):
    p = bus.pubsub(ignore_subscribe_messages=True)
    p.subscribe(b"bin\xff")
    payloads = [b"\x00\x01\xff", bytearray(b"ba"), memoryview(b"mv"), "caf\u00e9", b""]
    for payload in payloads:
        assert bus.publish(b"bin\xff", payload) == 1
    got = [p.get_message(timeout=1)["data"] for _ in payloads]
    assert got == [b"\x00\x01\xff", b"ba", b"mv", "caf\u00e9".encode(), b""]
    # As redis-py's encoder: numbers as their text, other types refused.
    assert bus.publish(b"bin\xff", 42) == 1 and p.get_message(timeout=1)["data"] == b"42"
    with pytest.raises(TypeError, match="must be str, bytes"):
        bus.publish("bin", None)
    with pytest.raises(TypeError, match="must be str, bytes"):
        p.subscribe(True)
    # A strided memoryview is published as the bytes it shows.
    assert bus.publish(b"bin\xff", memoryview(b"abcdef")[::2]) == 1
    assert p.get_message(timeout=1)["data"] == b"ace"
    p.close()


def test_decode_responses_gives_str(daemon):
    with shmbus.Bus(decode_responses=True, **daemon.options()) as b:
        p = b.pubsub(ignore_subscribe_messages=True)
        p.psubscribe("d:*")
        b.publish("d:1", "text")
        m = p.get_message(timeout=1)
        assert (m["pattern"], m["channel"], m["data"]) == ("d:*", "d:1", "text")
        assert "d:1" not in b.pubsub_channels()  # held by pattern only
        p.close()


def test_handlers_take_their_messages(bus):
    got = []
    p = bus.pubsub()
    p.subscribe(**{"h:1": got.append})
    p.psubscribe(**{"h:*": got.append})
    p.subscribe("plain")
    bus.publish("h:1", "a")
    bus.publish("plain", "b")
    messages = [p.get_message(ignore_subscribe_messages=True, timeout=1) for _ in range(3)]
    assert [m for m in messages if m is not None][0]["data"] == b"b"
    assert [(m["type"], m["data"]) for m in got] == [("message", b"a"), ("pmessage", b"a")]
    p.close()


def test_an_unsubscribe_from_another_thread_ends_a_blocking_listen(bus):
    p = bus.pubsub()
    p.subscribe("x:1")
    seen = []

    def listen():
        for m in p.listen():
            seen.append(m["type"])

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.2)
    p.unsubscribe()
    listener.join(5)
    assert not listener.is_alive()
    assert seen == ["subscribe", "unsubscribe"]
    p.unsubscribe()  # nothing held: Redis still confirms, with no channel
    assert p.get_message() == {"type": "unsubscribe", "pattern": None, "channel": None, "data": 0}


def test_listen_yields_until_everything_is_unsubscribed(bus):
    p = bus.pubsub()
    p.subscribe("l:1")
    bus.publish("l:1", "one")
    seen = []
    for m in p.listen():
        seen.append(m["type"])
        if m["type"] == "message":
            p.unsubscribe()
    assert seen == ["subscribe", "message", "unsubscribe"]
    p.close()


def test_run_in_thread_delivers_to_handlers(bus):
    got = threading.Event()
    p = bus.pubsub()
    p.subscribe(**{"t:1": lambda m: got.set() if m["data"] == b"go" else None})
    thread = p.run_in_thread(sleep_time=0.05)
    bus.publish("t:1", "go")
    assert got.wait(5)
    thread.stop()
    thread.join(5)
    assert not thread.is_alive()
    p.subscribe("no-handler")
    with pytest.raises(shmbus.ShmbusError, match="no handler"):
        p.run_in_thread()
    p.close()


def test_pubsub_introspection(bus):
    p = bus.pubsub()
    p.subscribe("i:1", "i:2")
    p.psubscribe("i:*")
    assert sorted(bus.pubsub_channels("i:*")) == [b"i:1", b"i:2"]
    assert bus.pubsub_numsub("i:1", "nobody") == [(b"i:1", 1), (b"nobody", 0)]
    assert bus.pubsub_numpat() >= 1
    p.close()


def test_errors_raise_with_the_librarys_message(bus, daemon):
    with pytest.raises(shmbus.MessageTooLarge, match="exceeds channel .* limit"):
        bus.publish("big", b"x" * (64 << 20))
    with pytest.raises(shmbus.InvalidArgument):
        bus.publish("", "x")
    with pytest.raises(shmbus.InvalidArgument, match="at least one"):
        bus.pubsub().subscribe()
    with pytest.raises(shmbus.DaemonUnavailable, match="no shmbusd answers on"):
        shmbus.Bus(bus="nobody", socket=os.path.join(daemon.dir.name, "none.sock"))
    assert issubclass(shmbus.MessageTooLarge, shmbus.ShmbusError)


def test_publish_takes_keywords_and_refuses_bad_arguments(daemon):
    b = shmbus.Bus(**daemon.options())
    p = b.pubsub(ignore_subscribe_messages=True)
    p.subscribe("kw")
    assert b.publish(channel="kw", data=b"by keyword") == 1
    assert b.publish("kw", data=7) == 1
    assert [p.get_message(timeout=1)["data"] for _ in range(2)] == [b"by keyword", b"7"]
    with pytest.raises(TypeError, match="missing .*'data'"):
        b.publish("kw")
    with pytest.raises(TypeError, match="positional arguments|at most 2 arguments"):
        b.publish("kw", "x", "y")
    # The native method parses the same way (the Python method above is a thin layer).
    with pytest.raises(TypeError, match="missing required argument 'data'"):
        b._native.publish("kw")
    with pytest.raises(TypeError, match="at most 2 arguments"):
        b._native.publish("kw", "x", "y")
    with pytest.raises(TypeError, match="unexpected keyword argument 'data.x00zz'"):
        b._native.publish("kw", **{"data\x00zz": b"x"})
    with pytest.raises(TypeError, match="view must be True or False"):
        p._sub.next(0, "no")
    with pytest.raises(TypeError, match="unexpected keyword argument 'message'"):
        b.publish("kw", message="x")
    with pytest.raises(TypeError, match="multiple values for argument 'channel'"):
        b.publish("kw", "x", channel="kw")
    with pytest.raises(TypeError, match="must be str, bytes.*not list"):
        b.publish("kw", ["x"])
    with pytest.raises(TypeError, match="timeout"):
        p._sub.next(timeout="soon")
    assert p.get_message(timeout=0) is None  # nothing was published by the refused calls
    p.close()
    publish = b.publish  # kept by the caller across close()
    b.close()
    with pytest.raises(shmbus.ShmbusError, match="closed"):
        b.publish("kw", "after close")
    with pytest.raises(shmbus.ShmbusError, match="closed"):
        publish("kw", "after close")


def test_a_subclass_can_wrap_publish(daemon):
    seen = []

    class LoggingBus(shmbus.Bus):
        def publish(self, channel, data):
            seen.append(channel)
            return super().publish(channel, data)

    with LoggingBus(**daemon.options()) as b:
        assert b.publish("logged", "x") == 0
    assert seen == ["logged"]


def test_decoded_messages_reach_their_handlers(daemon):
    got = []
    with shmbus.Bus(decode_responses=True, **daemon.options()) as b:
        p = b.pubsub(ignore_subscribe_messages=True)
        p.subscribe(**{"dh:1": got.append})
        p.psubscribe(**{"dh:*": got.append})
        b.publish("dh:1", "é")
        assert p.get_message(timeout=1) is None and p.get_message(timeout=1) is None
        assert [(m["type"], m["pattern"], m["channel"], m["data"]) for m in got] == [
            ("message", None, "dh:1", "é"),
            ("pmessage", "dh:*", "dh:1", "é"),
        ]
        p.close()


def _python(code: str, daemon) -> subprocess.Popen:
    env = dict(os.environ, SHMBUS_BUS=daemon.bus, SHMBUS_SOCKET=daemon.socket)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def test_a_publisher_in_another_process(bus, daemon):
    p = bus.pubsub(ignore_subscribe_messages=True)
    p.subscribe("proc:1")
    publisher = _python(
        "import shmbus\nb = shmbus.Bus()\nfor i in range(1000): b.publish('proc:1', str(i))\n", daemon
    )
    got = [p.get_message(timeout=5)["data"] for _ in range(1000)]
    assert publisher.wait(10) == 0
    assert got == [str(i).encode() for i in range(1000)]
    p.close()


def test_a_subscriber_killed_mid_stream_leaves_the_count(bus, daemon):
    child = _python(
        "import shmbus, sys\np = shmbus.Bus().pubsub(ignore_subscribe_messages=True)\n"
        "p.subscribe('kill:1')\nprint('ready', flush=True)\n"
        "for m in p.listen(): pass\n",
        daemon,
    )
    assert child.stdout.readline().strip() == "ready"
    for i in range(100):
        assert bus.publish("kill:1", str(i)) == 1
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    deadline = time.monotonic() + 10
    while bus.publish("kill:1", "after") != 0:
        assert time.monotonic() < deadline, "the killed subscriber is still counted"
        time.sleep(0.05)


def test_ctrl_c_interrupts_a_blocking_listen(daemon):
    child = _python(
        "import shmbus\np = shmbus.Bus().pubsub()\np.subscribe('quiet')\n"
        "print('ready', flush=True)\n"
        "try:\n    p.get_message(timeout=None)\n    p.get_message(timeout=None)\n"
        "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n",
        daemon,
    )
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().strip() == "interrupted"
    assert child.wait(10) == 0


def test_a_zero_copy_view_reads_the_ring_until_released(bus):
    p = bus.pubsub()
    p.subscribe("zc:1")
    big = bytes(range(256)) * 64  # 16 KiB
    assert bus.publish("zc:1", big) == 1
    with p.get_message_view(timeout=1) as m:
        assert (m.type, m.channel) == ("message", b"zc:1")
        assert m.data.readonly and m.data.nbytes == len(big)
        assert m.data[:256] == bytes(range(256)) and m.tobytes() == big
        assert m.intact()
        view = m.data[1:]  # a slice holds the ring's bytes too
        m.release()
        assert m.data is None
        with pytest.raises(BufferError, match="still held"):
            p.get_message(timeout=0)
        assert view[0] == 1
        view.release()
    bus.publish("zc:1", "next")
    assert p.get_message(timeout=1)["data"] == b"next"
    # Dropping every reference lets the bytes go too.
    bus.publish("zc:1", "dropped")
    held = p.get_message_view(timeout=1)
    assert held.tobytes() == b"dropped"
    del held
    assert p.get_message(timeout=0) is None
    p.close()
