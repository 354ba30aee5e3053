"""shmbus.asyncio: get_message() and listen() wait on the event loop through the
subscription's descriptor, with no thread per subscriber."""
import asyncio
import threading

import shmbus.asyncio as ashmbus


def test_get_message_waits_on_the_loop(daemon):
    async def main():
        bus = ashmbus.Bus(**daemon.options())
        p = bus.pubsub(ignore_subscribe_messages=True)
        p.psubscribe("a:*")
        assert await p.get_message(timeout=0.05) is None
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, bus.publish, "a:1", "later")
        m = await p.get_message(timeout=5)
        assert (m["type"], m["channel"], m["data"]) == ("pmessage", b"a:1", b"later")
        p.close()

    threads = threading.active_count()
    asyncio.run(main())
    assert threading.active_count() == threads


def test_async_listen(daemon):
    async def main():
        bus = ashmbus.Bus(**daemon.options())
        p = bus.pubsub()
        p.subscribe("al:1")
        for i in range(3):
            bus.publish("al:1", str(i))
        got = []
        async for m in p.listen():
            got.append((m["type"], m["data"]))
            if len(got) == 4:
                break
        assert got == [("subscribe", 1), ("message", b"0"), ("message", b"1"), ("message", b"2")]
        p.close()

    asyncio.run(main())


def test_close_ends_a_waiting_get_message(daemon):
    async def main():
        bus = ashmbus.Bus(**daemon.options())
        p = bus.pubsub(ignore_subscribe_messages=True)
        p.subscribe("ac:1")
        waiter = asyncio.ensure_future(p.get_message(timeout=None))
        await asyncio.sleep(0.05)
        p.close()
        assert await asyncio.wait_for(waiter, 5) is None
        # A new subscription (it may get the same descriptor number) still wakes.
        q = bus.pubsub(ignore_subscribe_messages=True)
        q.subscribe("ac:2")
        asyncio.get_running_loop().call_later(0.05, bus.publish, "ac:2", "woke")
        m = await q.get_message(timeout=5)
        assert m is not None and m["data"] == b"woke"
        q.close()

    asyncio.run(main())
