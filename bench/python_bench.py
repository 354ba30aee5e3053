#!/usr/bin/python3
"""Python publisher -> Python subscriber in two processes: shmbus's Python package against
redis-py + redis-server, in the same run (issue 15's benchmark).

    bench/python_bench.py BUILD_DIR [--quick]

BUILD_DIR is a meson build directory (it holds daemon/shmbusd and the package in
bindings/python). For each payload size (64 B and 64 KiB):
  - throughput: the publisher sends as fast as it can; rate = messages / the subscriber's
    time from first to last;
  - one-way latency: the publisher paces messages 200 us apart and embeds
    time.monotonic_ns() (one clock for every process on the host); the subscriber
    subtracts on arrival: p50 / p99;
and, in one process, what the binding adds per message: a publish + get_message round
through the Python package against the same round through the C++ API (api_bench's
BM_PublishNext/64, run from BUILD_DIR/bench if it was built).
Prints a Markdown table; exit 77 if redis-py or redis-server is missing.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SUBSCRIBER = r"""
import json, sys, time
system, size, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if system.startswith("shmbus"):
    import shmbus
    p = shmbus.Bus().pubsub(ignore_subscribe_messages=True)
    p.subscribe("bench")
    p.set_spin(0.001)  # a busy receiver: messages come 200 us apart (latency) or faster
    if system == "shmbus-view":  # zero-copy: a memoryview over the ring, released at once
        def get():
            v = p.get_message_view(timeout=5)
            if v is None:
                return None
            m = {"data": v.data[:8].tobytes()}
            v.release()
            return m
    else:
        get = lambda: p.get_message(timeout=5)
else:
    import redis
    r = redis.Redis(port=int(sys.argv[5]))
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe("bench")
    get = lambda: p.get_message(timeout=5)
print("ready", flush=True)
lat, first, last, got = [], None, None, 0
idle_since = time.monotonic()
while got < count:
    m = get()
    if m is None:  # redis-py also returns None for a subscribe confirmation it skipped
        if time.monotonic() - idle_since > 5:
            break
        continue
    idle_since = time.monotonic()
    now = time.monotonic_ns()
    first = first or now
    last = now
    got += 1
    if mode == "latency":
        lat.append(now - int.from_bytes(m["data"][:8], "little"))
print(json.dumps({"got": got, "seconds": (last - first) / 1e9 if got > 1 else 0, "lat": lat}))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publisher(system, port):
    if system.startswith("shmbus"):
        import shmbus

        bus = shmbus.Bus()
        return lambda data: bus.publish("bench", data)
    import redis

    r = redis.Redis(port=port)
    return lambda data: r.publish("bench", data)


def run_case(system, size, count, mode, env, port):
    sub = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, system, str(size), str(count), mode, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout.readline().strip() == "ready"
    publish = publisher(system, port)
    while publish(b"\0" * 8) == 0:  # until the subscription is in place (redis: NUMSUB)
        time.sleep(0.01)
    # The warm-up message above reached the subscriber: it counts it.
    payload = bytearray(size)
    fixed = bytes(payload)
    for _ in range(count - 1):
        if mode == "latency":
            payload[:8] = time.monotonic_ns().to_bytes(8, "little")
            # shmbus takes any buffer as it is; redis-py wants bytes (a copy, timed too).
            publish(payload if system.startswith("shmbus") else bytes(payload))
            until = time.monotonic_ns() + 200_000
            while time.monotonic_ns() < until:
                pass
        else:
            publish(fixed)
    out, _ = sub.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def binding_cost(build, env):
    """ns per publish + get_message in one process, Python, and C++ (api_bench)."""
    code = r"""
import shmbus, time
bus = shmbus.Bus(); p = bus.pubsub(ignore_subscribe_messages=True); p.subscribe("cost")
data = b"x" * 64
for _ in range(20000): bus.publish("cost", data); p.get_message(timeout=0)
best = None
for _ in range(5):
    t = time.perf_counter_ns()
    for _ in range(100000): bus.publish("cost", data); p.get_message(timeout=0)
    ns = (time.perf_counter_ns() - t) / 100000
    best = ns if best is None else min(best, ns)
print(best)
"""
    # Five fresh processes: a process's cost is bimodal on this kind of machine (runs of one
    # build land near one of two values, ~640 or ~1,050 ns, whatever is run), so the
    # fastest process is the binding's cost and the median says how often the slow mode came.
    runs = sorted(
        float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
        for _ in range(5)
    )
    py = runs[0]
    print(f"(Python publish + get_message, 5 processes: {', '.join(f'{r:.0f}' for r in runs)} ns)")
    cpp = None
    api_bench = os.path.join(build, "bench", "api_bench")
    if os.path.exists(api_bench):
        out = subprocess.run(
            [api_bench, "--benchmark_filter=BM_PublishNext/64/", "--benchmark_format=json"],
            capture_output=True, text=True, check=True,
        ).stdout
        runs = [b["real_time"] for b in json.loads(out)["benchmarks"] if b["name"].endswith("_median")]
        cpp = runs[0] if runs else None
    return py, cpp


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = os.path.abspath(sys.argv[1])
    quick = "--quick" in sys.argv
    try:
        import redis  # noqa: F401
    except ImportError:
        print("SKIPPED: python3-redis (redis-py) is not installed")
        return 77
    if shutil.which("redis-server") is None:
        print("SKIPPED: redis-server is not installed")
        return 77
    tmp = tempfile.mkdtemp(prefix="shmbus-pybench-")
    bus, sock = f"pybench{os.getpid()}", os.path.join(tmp, "bus.sock")
    env = dict(os.environ, SHMBUS_BUS=bus, SHMBUS_SOCKET=sock,
               PYTHONPATH=os.path.join(build, "bindings", "python"))
    sys.path.insert(0, env["PYTHONPATH"])
    os.environ.update(SHMBUS_BUS=bus, SHMBUS_SOCKET=sock)
    port = free_port()
    config = os.path.join(tmp, "shmbusd.toml")
    with open(config, "w") as f:  # rings large enough for 64 KiB messages at full speed
        f.write('[[channel]]\npattern = "bench"\nring_bytes = "8MiB"\n')
    daemon = subprocess.Popen([os.path.join(build, "daemon", "shmbusd"), "--bus", bus, "--socket", sock,
                               "-c", config, "--log-level", "warn"])
    # No output-buffer limit for subscribers: by default Redis disconnects one that falls
    # 32 MB behind, which a Python subscriber of 64 KiB messages does.
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--client-output-buffer-limit", "pubsub 0 0 0"],
                              stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        rows = []
        for size in (64, 65536):
            for system in ("shmbus", "shmbus-view", "redis-py") if size > 64 else ("shmbus", "redis-py"):
                n = (20_000 if quick else 200_000) if size == 64 else (2_000 if quick else 20_000)
                tp = run_case(system, size, n, "throughput", env, port)
                latency = run_case(system, size, 500 if quick else 3000, "latency", env, port)
                lat = latency["lat"]
                if not lat:
                    raise RuntimeError(f"{system} {size} B: the latency run delivered {latency['got']}")
                lat.sort()
                rows.append((size, system, tp["got"], n, tp["got"] / tp["seconds"] if tp["seconds"] else 0,
                             lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000))
        print("| payload | system | delivered (rest: lapped, counted lost) | throughput | one-way p50 | one-way p99 |")
        print("|---|---|---|---|---|---|")
        for size, system, got, n, rate, p50, p99 in rows:
            print(f"| {size} B | {system} | {got:,} of {n:,} | {rate / 1000:,.1f} k msg/s | "
                  f"{p50:.1f} us | {p99:.1f} us |")
        for size, system in ((64, "shmbus"), (65536, "shmbus"), (65536, "shmbus-view")):
            ours = next(r for r in rows if r[0] == size and r[1] == system)
            theirs = next(r for r in rows if r[0] == size and r[1] == "redis-py")
            print(f"\n{size} B, {system}: throughput {ours[4] / theirs[4]:.1f}x redis-py's, "
                  f"p50 {ours[5] / theirs[5]:.3f}x of redis-py's")
        py, cpp = binding_cost(build, env)
        print(f"\nIn one process, publish + get_message of 64 B: Python {py:.0f} ns"
              + (f", C++ {cpp:.0f} ns: the binding adds {py - cpp:.0f} ns" if cpp else ""))
    finally:
        daemon.terminate()
        server.terminate()
        daemon.wait()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
