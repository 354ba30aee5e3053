"""shmbus for asyncio, shaped like redis.asyncio: ``await p.get_message()`` and
``async for m in p.listen()``.

No thread per subscriber: the subscription's descriptor (level-triggered, readable while a
message may wait) is watched with ``loop.add_reader``, and messages are taken without
waiting once it fires.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, Optional

import shmbus as _sync


class Bus(_sync.Bus):
    """As shmbus.Bus (publishing never waits on an ordinary channel), with an asyncio
    pubsub()."""

    def pubsub(self, ignore_subscribe_messages: bool = False) -> "PubSub":  # type: ignore[override]
        return PubSub(self._options, ignore_subscribe_messages, self._decode)


class PubSub(_sync.PubSub):
    """As shmbus.PubSub; get_message() and listen() are coroutines that wait on the loop."""

    async def get_message(  # type: ignore[override]
        self, ignore_subscribe_messages: bool = False, timeout: Optional[float] = 0.0
    ) -> Optional[Dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            message = self._next_message(ignore_subscribe_messages, 0.0)
            if message is _sync._HANDLED:
                return None
            if message is not None or self._sub is None or not self.subscribed:
                if message is None and timeout:
                    await asyncio.sleep(timeout)  # nothing subscribed: nothing can arrive
                return message
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            if not await self._readable(loop, remaining):
                return None

    async def _readable(self, loop: asyncio.AbstractEventLoop, timeout: Optional[float]) -> bool:
        # The native subscription is held for the wait, so its descriptor stays open while
        # the loop watches it; close() ends the wait (and the watch) at once.
        native = self._native()
        fd = native.fileno()
        ready = loop.create_future()
        self._waiting = ready
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(True))
        try:
            return await asyncio.wait_for(ready, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
            self._waiting = None
            del native

    def close(self) -> None:
        waiting = getattr(self, "_waiting", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(False)
        super().close()

    async def listen(self) -> AsyncIterator[Dict[str, Any]]:  # type: ignore[override]
        while self.subscribed or self._confirmations:
            message = await self.get_message(timeout=None)
            if message is not None:
                yield message
