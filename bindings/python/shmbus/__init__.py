"""shmbus: Redis Pub/Sub through shared memory, shaped like redis-py.

Code written for redis-py ports by changing its import::

    import shmbus
    bus = shmbus.Bus()                      # $SHMBUS_BUS / $SHMBUS_SOCKET, or bus=, socket=
    bus.publish("chat:42", "hello")         # -> receivers, as Redis's PUBLISH
    p = bus.pubsub()
    p.psubscribe("chat:*")
    for m in p.listen():                    # {'type': 'psubscribe', ...}, then pmessages
        print(m["channel"], m["data"])

Messages are redis-py's dicts (type, pattern, channel, data) plus ``sequence`` (per
channel, from 0) and ``lost`` (messages of that channel this subscriber missed just
before this one: shmbus laps a slow subscriber instead of disconnecting it).

Errors raise ShmbusError or one of its subclasses, with the library's message, which
names the limit or resource involved and the way out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

from ._shmbus import (  # noqa: F401  (re-exported)
    CorruptChannel,
    DaemonGone,
    DaemonUnavailable,
    InvalidArgument,
    LimitExceeded,
    MessageTooLarge,
    PermissionDenied,
    ProtocolError,
    PublishTimeout,
    ShmbusError,
    SystemCallError,
    WouldBlock,
)
from . import _shmbus

for _error in (ShmbusError, DaemonUnavailable, DaemonGone, ProtocolError, InvalidArgument,
               MessageTooLarge, LimitExceeded, WouldBlock, PublishTimeout, SystemCallError,
               CorruptChannel, PermissionDenied):
    _error.__module__ = "shmbus"  # where users catch them

__all__ = [
    "Bus",
    "PubSub",
    "MessageView",
    "PubSubWorkerThread",
    "ShmbusError",
    "DaemonUnavailable",
    "DaemonGone",
    "ProtocolError",
    "InvalidArgument",
    "MessageTooLarge",
    "LimitExceeded",
    "WouldBlock",
    "PublishTimeout",
    "SystemCallError",
    "CorruptChannel",
    "PermissionDenied",
]

Name = Union[str, bytes, bytearray, memoryview]
Payload = Union[str, bytes, bytearray, memoryview]
Handler = Callable[[Dict[str, Any]], Any]


def _encode(name: Any) -> bytes:
    """A name's bytes, as redis-py's encoder makes them: str as UTF-8, int and float as
    their text; bool and other types are refused."""
    if isinstance(name, bytes):
        return name
    if isinstance(name, str):
        return name.encode("utf-8")
    if isinstance(name, (bytearray, memoryview)):
        return bytes(name)
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return repr(name).encode("ascii")
    raise TypeError(
        f"a channel or pattern must be str, bytes, bytearray, memoryview, int or float, "
        f"not {type(name).__name__}"
    )


def _decoded(value: bytes, decode: bool) -> Union[bytes, str]:
    """A name or payload as decode_responses asks: str (UTF-8) or the bytes as they are."""
    return value.decode("utf-8") if decode else value


_HANDLED = object()  # _next_message(): a handler took the message


class Bus:
    """A connection to a shmbus daemon for publishing and introspection (redis-py's Redis).

    ``bus`` and ``socket`` default to $SHMBUS_BUS / $SHMBUS_SOCKET (else the bus "default"
    at /run/shmbus/default.sock). With ``decode_responses=True``, names and payloads come
    back as str (UTF-8), as redis-py does.
    """

    def __init__(
        self,
        bus: Optional[str] = None,
        socket: Optional[str] = None,
        client_name: Optional[str] = None,
        decode_responses: bool = False,
    ) -> None:
        self._options = (bus, socket, client_name)
        self._decode = decode_responses
        self._native: Optional[_shmbus.Bus] = _shmbus.Bus(bus, socket, client_name)

    def _bus(self) -> "_shmbus.Bus":
        if self._native is None:
            raise ShmbusError("this Bus is closed")
        return self._native

    def publish(self, channel: Name, data: Payload) -> int:
        """PUBLISH: the number of subscriptions that receive it (channel plus patterns)."""
        native = self._native
        if native is None:
            raise ShmbusError("this Bus is closed")
        return native.publish(channel, data)

    def pubsub(self, ignore_subscribe_messages: bool = False) -> "PubSub":
        """A subscriber of its own (redis-py's PubSub), on the same bus."""
        return PubSub(self._options, ignore_subscribe_messages, self._decode)

    def pubsub_channels(self, pattern: Name = "*") -> List[Union[bytes, str]]:
        """PUBSUB CHANNELS: channels with at least one subscriber by name."""
        return [self._out(c) for c in self._bus().channels(pattern)]

    def pubsub_numsub(self, *channels: Name) -> List[Tuple[Union[bytes, str], int]]:
        """PUBSUB NUMSUB: (channel, subscribers by name) for each channel given."""
        names = [_encode(c) for c in channels]
        counts = self._bus().numsub(names)
        return [(self._out(n), c) for n, c in zip(names, counts)]

    def pubsub_numpat(self) -> int:
        """PUBSUB NUMPAT: distinct patterns subscribed on the bus."""
        return self._bus().numpat()

    def close(self) -> None:
        self._native = None

    def __enter__(self) -> "Bus":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _out(self, value: bytes) -> Union[bytes, str]:
        return _decoded(value, self._decode)


class PubSub:
    """Channels and patterns received together (redis-py's PubSub).

    subscribe() / psubscribe() take names and ``name=handler`` keywords; a message for a
    name with a handler goes to the handler instead of get_message() / listen(). Each
    name added or removed gives a confirmation message first, as Redis does, unless
    ``ignore_subscribe_messages``.
    """

    def __init__(
        self,
        options: Tuple[Optional[str], Optional[str], Optional[str]],
        ignore_subscribe_messages: bool = False,
        decode_responses: bool = False,
    ) -> None:
        self._options = options
        self._sub: Optional[_shmbus.Subscription] = None  # opened on the first subscribe
        self.ignore_subscribe_messages = ignore_subscribe_messages
        self._decode = decode_responses
        self.channels: Dict[bytes, Optional[Handler]] = {}
        self.patterns: Dict[bytes, Optional[Handler]] = {}
        self._confirmations: Deque[Dict[str, Any]] = deque()
        self._handlers = 0  # names with a handler: the message path looks them up only then
        self._handled = False  # the last message went to a handler (see _next_message)

    # ---- subscriptions ------------------------------------------------------------------

    def _native(self) -> "_shmbus.Subscription":
        if self._sub is None:
            sub = _shmbus.Subscription(*self._options)
            sub.set_decode(self._decode)  # before another thread can see it
            self._sub = sub
        return self._sub

    @staticmethod
    def _names(args: Tuple[Any, ...], kwargs: Dict[str, Handler]) -> Dict[bytes, Optional[Handler]]:
        names: Dict[bytes, Optional[Handler]] = {}
        for arg in args:
            if isinstance(arg, (list, tuple, set)):
                for a in arg:
                    names[_encode(a)] = None
            elif isinstance(arg, dict):
                for a, handler in arg.items():
                    names[_encode(a)] = handler
            else:
                names[_encode(arg)] = None
        for a, handler in kwargs.items():
            names[_encode(a)] = handler
        return names

    def _confirm(self, kind: str, name: Optional[bytes]) -> None:
        self._confirmations.append(
            {
                "type": kind,
                "pattern": None,
                "channel": None if name is None else self._out(name),
                "data": len(self.channels) + len(self.patterns),
            }
        )

    def subscribe(self, *args: Any, **kwargs: Handler) -> None:
        """SUBSCRIBE: channel names, and name=handler keywords."""
        names = self._names(args, kwargs)
        if not names:
            raise InvalidArgument("subscribe() needs at least one channel, as Redis's SUBSCRIBE")
        self._native().subscribe(list(names))
        for name, handler in names.items():
            self.channels[name] = handler
            self._confirm("subscribe", name)
        self._count_handlers()

    def psubscribe(self, *args: Any, **kwargs: Handler) -> None:
        """PSUBSCRIBE: glob patterns (Redis's syntax), and pattern=handler keywords."""
        names = self._names(args, kwargs)
        if not names:
            raise InvalidArgument("psubscribe() needs at least one pattern, as Redis's PSUBSCRIBE")
        self._native().psubscribe(list(names))
        for name, handler in names.items():
            self.patterns[name] = handler
            self._confirm("psubscribe", name)
        self._count_handlers()

    def unsubscribe(self, *args: Name) -> None:
        """UNSUBSCRIBE: the channels given, or all of them."""
        names = [_encode(a) for a in args] or list(self.channels)
        if self._sub is not None:
            self._sub.unsubscribe(names)
        for name in names:
            self.channels.pop(name, None)
            self._confirm("unsubscribe", name)
        if not names:  # Redis confirms an UNSUBSCRIBE of nothing with no channel
            self._confirm("unsubscribe", None)
        self._count_handlers()

    def punsubscribe(self, *args: Name) -> None:
        """PUNSUBSCRIBE: the patterns given, or all of them."""
        names = [_encode(a) for a in args] or list(self.patterns)
        if self._sub is not None:
            self._sub.punsubscribe(names)
        for name in names:
            self.patterns.pop(name, None)
            self._confirm("punsubscribe", name)
        if not names:
            self._confirm("punsubscribe", None)
        self._count_handlers()

    def _count_handlers(self) -> None:
        self._handlers = sum(h is not None for h in self.channels.values()) + sum(
            h is not None for h in self.patterns.values()
        )

    def set_spin(self, seconds: float) -> None:
        """How long a waiting get_message() spins before it sleeps (default 20 us): longer
        spins cut wake-up latency for messages that come close together, at the cost of a
        busy core while waiting."""
        self._native().set_spin(seconds)

    @property
    def subscribed(self) -> bool:
        return bool(self.channels or self.patterns)

    # ---- messages -----------------------------------------------------------------------

    def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: Optional[float] = 0.0
    ) -> Optional[Dict[str, Any]]:
        """The next message, or None after ``timeout`` seconds (None: wait; 0: poll).

        A message for a name with a handler is given to the handler, and None returned.
        The wait releases the GIL; Ctrl-C interrupts it.
        """
        if self._confirmations:
            if not (ignore_subscribe_messages or self.ignore_subscribe_messages):
                return self._confirmations.popleft()
            # Ignored confirmations are skipped and the wait goes on for a message (redis-py
            # returns None for each instead; code written for it loops either way).
            self._confirmations.clear()
        sub = self._sub
        if sub is None or not (self.channels or self.patterns):
            if timeout:
                time.sleep(timeout)  # as redis-py: nothing can arrive
            return None
        message = sub.next(timeout)  # the dict, built natively
        if message is None or not self._handlers:
            return message
        return self._to_handler(message)

    def _next_message(self, ignore_subscribe_messages: bool, timeout: Optional[float]) -> Any:
        """get_message(), except that a message a handler took is _HANDLED (for asyncio,
        whose wait must end then too)."""
        self._handled = False
        message = PubSub.get_message(self, ignore_subscribe_messages, timeout)  # the sync one
        return _HANDLED if message is None and self._handled else message

    def _to_handler(self, message: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Gives a message to its name's handler (and returns None), if it has one."""
        pattern = message["pattern"]
        if pattern is not None:
            handler = self.patterns.get(_encode(pattern))
        else:
            handler = self.channels.get(_encode(message["channel"]))
        if handler is None:
            return message
        handler(message)
        self._handled = True
        return None

    def get_message_view(self, timeout: Optional[float] = 0.0) -> Optional["MessageView"]:
        """The next message with its payload left in place (zero-copy), or None after
        ``timeout`` seconds. Subscription confirmations are skipped and handlers not called.

        Its ``data`` is a read-only memoryview over the channel's ring, valid until the
        MessageView is released (``release()``, a ``with`` block, or dropping every
        reference): until then this PubSub refuses the next message and subscription
        changes with BufferError. On a lossy channel a publisher may overwrite the bytes
        while you read them: what you computed counts only if ``intact()`` says True after.
        """
        self._confirmations.clear()
        if not self.subscribed or self._sub is None:
            return None
        raw = self._sub.next(timeout, True)
        return None if raw is None else MessageView(self, raw)

    def listen(self) -> Iterator[Dict[str, Any]]:
        """Messages as they come, for as long as something is subscribed."""
        while self.subscribed or self._confirmations:
            message = self.get_message(timeout=None)
            if message is not None:
                yield message

    def run_in_thread(
        self,
        sleep_time: float = 0.0,
        daemon: bool = False,
        exception_handler: Optional[Callable[[BaseException, "PubSub", "PubSubWorkerThread"], None]] = None,
    ) -> "PubSubWorkerThread":
        """Delivers to the handlers from a thread of its own (every name needs one)."""
        for name, handler in list(self.channels.items()) + list(self.patterns.items()):
            if handler is None:
                raise ShmbusError(f"channel or pattern {name!r} has no handler")
        thread = PubSubWorkerThread(self, sleep_time, daemon, exception_handler)
        thread.start()
        return thread

    def fileno(self) -> int:
        """A descriptor that polls readable while a message may wait (for event loops)."""
        return self._native().fileno()

    def close(self) -> None:
        """Drops every subscription and the connection; as in redis-py, a later subscribe
        connects again."""
        self._sub = None
        self.channels.clear()
        self.patterns.clear()
        self._confirmations.clear()
        self._handlers = 0

    reset = close

    def __enter__(self) -> "PubSub":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _out(self, value: bytes) -> Union[bytes, str]:
        return _decoded(value, self._decode)


class MessageView:
    """A message read in place (PubSub.get_message_view): ``data`` is a read-only
    memoryview over the ring until ``release()``."""

    def __init__(self, pubsub: PubSub, raw: Tuple[Any, ...]) -> None:
        channel, pattern, lease, sequence, lost, publish_unix_ns, gap = raw
        self._pubsub = pubsub
        self.type = "pmessage" if pattern is not None else "message"
        self.pattern = pubsub._out(pattern) if pattern is not None else None
        self.channel = pubsub._out(channel)
        self.data: Optional[memoryview] = memoryview(lease)
        self.sequence = sequence
        self.lost = lost
        self.publish_unix_ns = publish_unix_ns
        self.gap = gap

    def intact(self) -> bool:
        """Whether the bytes were not overwritten while read (always True on a
        back-pressure channel)."""
        sub = self._pubsub._sub
        return sub is not None and sub.intact()

    def tobytes(self) -> bytes:
        if self.data is None:
            raise ValueError("this MessageView was released")
        return self.data.tobytes()

    def release(self) -> None:
        """Lets the ring's bytes go - once nothing else holds them: a slice of ``data``
        holds them until it is released too (and memoryview.release() raises BufferError
        while a consumer such as numpy holds ``data`` itself)."""
        if self.data is not None:
            self.data.release()
            self.data = None

    def __enter__(self) -> "MessageView":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class PubSubWorkerThread(threading.Thread):
    """run_in_thread()'s thread: get_message() in a loop until stop()."""

    def __init__(
        self,
        pubsub: PubSub,
        sleep_time: float,
        daemon: bool = False,
        exception_handler: Optional[Callable[[BaseException, PubSub, "PubSubWorkerThread"], None]] = None,
    ) -> None:
        super().__init__(daemon=daemon)
        self.pubsub = pubsub
        # Each wait is bounded so stop() is seen within it; a message ends it at once.
        self.sleep_time = sleep_time if sleep_time > 0 else 0.1
        self.exception_handler = exception_handler
        self._running = threading.Event()

    def run(self) -> None:
        self._running.set()
        while self._running.is_set():
            try:
                self.pubsub.get_message(ignore_subscribe_messages=True, timeout=self.sleep_time)
            except BaseException as e:  # noqa: B902 - handed to the caller's handler
                if self.exception_handler is None:
                    raise
                self.exception_handler(e, self.pubsub, self)
        self.pubsub.close()  # as redis-py's worker

    def stop(self) -> None:
        self._running.clear()
