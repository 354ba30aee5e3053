#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into tests/fuzz/corpus/<target>/.

The fuzzers start from these instead of from nothing: a valid frame of every type each side
reads, a valid greeting followed by each request, and the edges the decoder must refuse
(truncated fields, forged counts and lengths, a length over the limit). Files are named by
the SHA-1 of their contents, as libFuzzer names what it adds, so rerunning this adds nothing
twice. The frame layout is the one in libbus/src/protocol.hpp.

    python3 tests/fuzz/make_seeds.py            # then scripts/fuzz.sh grows the corpus
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

MAGIC = 0x53424D43
MAX_FRAME = 1 << 20
T = dict(HELLO=1, OPEN_CHANNEL=2, CLOSE_CHANNEL=3, SUBSCRIBE=4, PSUBSCRIBE=5, UNSUBSCRIBE=6,
         PUNSUBSCRIBE=7, PING=8, BYE=9, PATTERNS=10, WELCOME=100, OK=101, ERROR=102,
         CHANNEL_OPENED=103, SUBSCRIBED=104, UNSUBSCRIBED=105, PONG=106, PATTERN_LIST=107,
         ATTACH=200, DETACH=201)


def u8(v): return struct.pack('<B', v)
def u16(v): return struct.pack('<H', v)
def u32(v): return struct.pack('<I', v)
def u64(v): return struct.pack('<Q', v)
def s(b): return u32(len(b)) + b
def names(*items): return u32(len(items)) + b''.join(s(i) for i in items)


def frame(kind, fields=b'', request=1):
    body = u16(T[kind] if isinstance(kind, str) else kind) + u32(request) + fields
    return u32(len(body)) + body


def ring(channel_id=1, arena=0, offset=4096, size=8192):
    return u32(channel_id) + u32(arena) + u64(offset) + u64(size)


def attachment(name=b'news', channel_id=1, slot=0, bit=1, position=0, sequence=0):
    return ring(channel_id) + s(name) + u32(slot) + u32(bit) + u64(position) + u64(sequence)


def hello(doorbell=1, low=1, high=2, name=b'seed', request=1):
    return frame('HELLO', u32(MAGIC) + u16(low) + u16(high) + s(name) + u8(doorbell), request)


# ---- requests (what the daemon reads) ----------------------------------------------------
REQUESTS = {
    'open': frame('OPEN_CHANNEL', s(b'news') + u64(0) + u32(0) + u8(0), 2),
    'open_settings': frame('OPEN_CHANNEL', s(b'big') + u64(1 << 16) + u32(1000) + u8(2), 2),
    'open_odd_ring': frame('OPEN_CHANNEL', s(b'odd') + u64(5000) + u32(0) + u8(1), 2),
    'close': frame('CLOSE_CHANNEL', u32(0), 3),
    'subscribe_latest': frame('SUBSCRIBE', u8(0) + u64(0) + names(b'news', b'sport'), 4),
    'subscribe_earliest': frame('SUBSCRIBE', u8(1) + u64(0) + names(b'news'), 4),
    'subscribe_after': frame('SUBSCRIBE', u8(2) + u64(7) + names(b'news'), 4),
    'psubscribe': frame('PSUBSCRIBE', names(b'n*', b'[a-z]?', b'\\*'), 5),
    'unsubscribe': frame('UNSUBSCRIBE', names(b'news'), 6),
    'unsubscribe_all': frame('UNSUBSCRIBE', names(), 6),
    'punsubscribe': frame('PUNSUBSCRIBE', names(b'n*'), 7),
    'punsubscribe_all': frame('PUNSUBSCRIBE', names(), 7),
    'ping': frame('PING', b'', 8),
    'bye': frame('BYE', b'', 9),
    'patterns': frame('PATTERNS', s(b''), 10),
    'patterns_filter': frame('PATTERNS', s(b'n*'), 10),
}

# ---- replies and events (what the client reads) ------------------------------------------
REPLIES = {
    'welcome': frame('WELCOME', u16(2) + u16(1) + u64(16) + s(b'default') + u64(0) + u64(4096)
                     + u32(4097)),
    'ok': frame('OK'),
    'pong': frame('PONG', u64(1700000000000000000)),
    'error': frame('ERROR', u16(3) + s(b'channel name is empty')),
    'error_event': frame('ERROR', u16(4) + s(b'max_clients reached'), 0),
    'channel_opened': frame('CHANNEL_OPENED', ring() + s(b'defaults')),
    'subscribed': frame('SUBSCRIBED', u8(1) + u32(2) + attachment() + attachment(b'x', 2, 1, 2)
                        + u32(2) + u16(0) + s(b'')),
    'subscribed_error': frame('SUBSCRIBED', u8(1) + u32(0) + u32(0) + u16(4) + s(b'limit')),
    'subscribed_more': frame('SUBSCRIBED', u8(0) + u32(1) + attachment(position=2**64 - 1)),
    'unsubscribed': frame('UNSUBSCRIBED', u32(2) + u32(1) + u32(2) + u32(0)),
    'pattern_list': frame('PATTERN_LIST', u8(1) + u32(2) + s(b'n*') + u32(1) + s(b'?') + u32(3)),
    'pattern_list_more': frame('PATTERN_LIST', u8(0) + u32(0)),
    'attach': frame('ATTACH', attachment(b'news:1'), 0),
    'detach': frame('DETACH', u32(5), 0),
}

# ---- what the decoder must refuse --------------------------------------------------------
MALFORMED = {
    'truncated_length': u32(20)[:2],
    'truncated_body': frame('SUBSCRIBE', u8(0) + u64(0) + names(b'news'))[:-3],
    'short_header': u32(3) + b'\x01\x00\x00',
    'over_limit': u32(MAX_FRAME + 1) + b'\x01\x00',
    'at_limit_undelivered': u32(MAX_FRAME) + u16(8) + u32(1),
    'length_ffffffff': u32(0xFFFFFFFF),
    'forged_count': frame('SUBSCRIBE', u8(0) + u64(0) + u32(65536) + s(b'a')),
    'count_over_limit': frame('PSUBSCRIBE', u32(65537)),
    'forged_string': frame('OPEN_CHANNEL', u32(0x7FFFFFFF) + b'news'),
    'name_over_limit': frame('OPEN_CHANNEL', s(b'n' * 1025) + u64(0) + u32(0) + u8(0)),
    'trailing_bytes': frame('PING', b'\x00'),
    'bad_start': frame('SUBSCRIBE', u8(3) + u64(0) + names(b'news')),
    'arena_over_255': frame('CHANNEL_OPENED', ring(arena=256) + s(b'defaults')),
    'attachments_forged': frame('SUBSCRIBED', u8(1) + u32(1000) + attachment()),
    'unknown_type': frame(0xFFFF, b'abc'),
    'hello_bad_magic': frame('HELLO', u32(0) + u16(1) + u16(2) + s(b'x') + u8(1)),
}


def write(target, name_bytes_pairs):
    out = os.path.join(HERE, 'corpus', target)
    os.makedirs(out, exist_ok=True)
    for data in name_bytes_pairs:
        with open(os.path.join(out, hashlib.sha1(data).hexdigest()), 'wb') as f:
            f.write(data)


def protocol_seeds():
    # Byte 0 picks the chunk sizes (protocol_fuzz.cc): 0 byte by byte, 2 up to 4 bytes,
    # 12 up to 4 KiB.
    streams = list(REQUESTS.values()) + list(REPLIES.values()) + list(MALFORMED.values())
    streams.append(hello() + b''.join(REQUESTS.values()))
    streams.append(b''.join(REPLIES.values()))
    streams.append(REQUESTS['ping'] + MALFORMED['over_limit'])
    seeds = []
    for i, stream in enumerate(streams):
        seeds.append(bytes([(0, 2, 12)[i % 3]]) + stream)
    seeds.append(bytes([0]) + hello() + REQUESTS['subscribe_latest'])
    seeds.append(bytes([12]) + hello() + REQUESTS['subscribe_latest'])
    return seeds


def wire_seeds():
    # Byte 0 picks the greeting daemon_wire_fuzz.cc puts first (0 none, 1 HELLO, 2 HELLO with
    # a doorbell, 3 the same speaking version 1 only); byte 1 how the rest is cut into sends.
    sessions = [(2, request) for request in REQUESTS.values()]
    sessions += [
        (1, REQUESTS['open'] + REQUESTS['close']),
        (1, REQUESTS['open'] + frame('CLOSE_CHANNEL', u32(1), 3) + REQUESTS['bye']),
        (1, REQUESTS['open_settings'] + REQUESTS['open_settings']),
        (1, REQUESTS['subscribe_latest']),  # no doorbell asked for
        (1, REQUESTS['psubscribe']),
        (2, REQUESTS['subscribe_latest'] + REQUESTS['open'] + REQUESTS['unsubscribe_all']
         + REQUESTS['bye']),
        (2, REQUESTS['psubscribe'] + REQUESTS['open'] + REQUESTS['patterns_filter']
         + REQUESTS['punsubscribe_all']),
        (2, REQUESTS['subscribe_earliest'] + REQUESTS['subscribe_after']
         + REQUESTS['unsubscribe'] + REQUESTS['ping']),
        (3, REQUESTS['patterns'] + REQUESTS['bye'] + REQUESTS['ping']),
        (2, hello(request=11)),  # a second HELLO
        (0, hello(doorbell=0, low=3, high=9)),  # no version in common
        (0, MALFORMED['hello_bad_magic']),
        (0, REQUESTS['ping']),  # not greeted
        (0, b''.join(REQUESTS[k] for k in ('ping', 'open'))),
        (2, MALFORMED['forged_count']),
        (2, MALFORMED['over_limit']),
        (2, MALFORMED['bad_start']),
        (2, MALFORMED['truncated_body']),
        (2, REPLIES['welcome']),  # a reply sent to the daemon
        (2, frame('OPEN_CHANNEL', s(b'') + u64(0) + u32(0) + u8(0), 2)),
        (2, frame('OPEN_CHANNEL', s(b'huge') + u64(1 << 40) + u32(0) + u8(0), 2)),
        (2, frame('SUBSCRIBE', u8(0) + u64(0) + names(*[b'c%d' % i for i in range(70)]), 4)),
    ]
    seeds = []
    for i, (greeting, stream) in enumerate(sessions):
        seeds.append(bytes([greeting, (0, 3, 7)[i % 3]]) + stream)
    return seeds


if __name__ == '__main__':
    write('protocol', protocol_seeds())
    write('daemon_wire', wire_seeds())
