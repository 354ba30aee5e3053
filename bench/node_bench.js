#!/usr/bin/env node
'use strict';
// Node publisher -> Node subscriber in two processes: the shmbus package against node-redis
// (v4) + redis-server, in the same run (issue 16's benchmark).
//
//   node bench/node_bench.js BUILD_DIR [--quick]
//
// BUILD_DIR is the meson build directory the package in bindings/node was built against
// (bindings/npm-test.sh BUILD_DIR bindings/node does both). For 64 B and 4 KiB:
//   - throughput: the publisher sends as fast as it can, yielding to its loop every 1000
//     messages (node-redis writes its pipeline then); rate = messages / the subscriber's
//     time from first to last;
//   - one-way latency: messages 200 us apart carrying process.hrtime.bigint() (the
//     monotonic clock every process on the host shares); the subscriber subtracts on
//     arrival: p50 / p99. Both subscribers wait in the event loop (no spinning).
// A third system, a Unix socket from the publisher straight into the subscriber, is the
// floor for any transport that wakes a sleeping Node process: one wake-up, no broker.
// Prints a Markdown table; exit 77 if redis-server or node-redis is missing.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { sleep, startServers, redisServerInstalled } = require('./node_servers');

const packageDir = path.join(__dirname, '..', 'bindings', 'node');
const SUBSCRIBER = `
const [system, size, count, mode, port] = process.argv.slice(1);
const total = Number(count);
let got = 0, first = 0n, last = 0n;
const lat = [];
function onMessage(message) {
  const now = process.hrtime.bigint();
  if (got === 0) first = now;
  last = now;
  got += 1;
  if (mode === 'latency') lat.push(Number(now - message.readBigUInt64LE(0)));
  if (got === total) finish();
}
let idle;
function finish() {
  clearTimeout(idle);
  process.stdout.write(JSON.stringify({ got, seconds: Number(last - first) / 1e9, lat }) + '\\n');
  process.exit(0);
}
function watchdog() {  // a lapped (lossy) subscriber never sees the last messages
  clearTimeout(idle);
  idle = setTimeout(finish, 3000);
}
(async () => {
  if (system === 'shmbus') {
    const sub = require(${JSON.stringify(packageDir)}).connect().subscriber();
    await sub.subscribe('bench', (m) => { onMessage(m); if (got % 1000 === 1) watchdog(); }, true);
  } else if (system === 'unix socket') {
    // port is the socket's path here; messages are fixed-size frames of size bytes.
    let pending = Buffer.alloc(0);
    require('node:net').createServer((conn) => conn.on('data', (chunk) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let at = 0;
      for (; pending.length - at >= Number(size); at += Number(size)) {
        const m = pending.subarray(at, at + Number(size));
        onMessage(m);
        if (got % 1000 === 1) watchdog();
      }
      pending = pending.subarray(at);
    })).listen(port);
  } else {
    const { createClient } = require(${JSON.stringify(path.join(packageDir, 'node_modules', 'redis'))});
    const client = createClient({ socket: { port: Number(port) } });
    await client.connect();
    await client.subscribe('bench', (m) => { onMessage(m); if (got % 1000 === 1) watchdog(); }, true);
  }
  watchdog();
  console.log('ready');
})();
`;

const yieldLoop = () => new Promise((resolve) => setImmediate(resolve));

async function publisherFor(system, port) {
  if (system === 'shmbus') {
    const bus = require(packageDir).connect();
    return { publish: (data) => bus.publish('bench', data), numsub: () => bus.pubsub.numsub('bench').bench, close: () => bus.quit() };
  }
  if (system === 'unix socket') {
    // The floor for any transport whose receiver sleeps in its loop: one Node process
    // writing straight into another's socket, no broker, one wake-up per message.
    const net = require('node:net');
    const conn = await new Promise((resolve, reject) => {
      const c = net.connect(port, () => resolve(c)).on('error', reject);
    });
    return {
      publish: (data) => conn.write(Buffer.from(data)),  // the caller reuses data
      numsub: () => 1,
      close: () => conn.end(),
    };
  }
  const { createClient } = require(path.join(packageDir, 'node_modules', 'redis'));
  const client = createClient({ socket: { port } });
  await client.connect();
  return {
    publish: (data) => client.publish('bench', data),
    numsub: async () => (await client.pubSubNumSub('bench')).bench,
    close: () => client.quit(),
  };
}

async function runCase(system, size, count, mode, env, port) {
  if (system === 'unix socket') port = path.join(os.tmpdir(), `shmbus-nodebench-${process.pid}-${size}-${mode}.sock`);
  const sub = spawn(process.execPath, ['-e', SUBSCRIBER, system, String(size), String(count), mode, String(port)], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  sub.stdout.on('data', (d) => (out += d));
  while (!out.includes('ready') || (system === 'unix socket' && !fs.existsSync(port))) await sleep(5);
  const publisher = await publisherFor(system, port);
  while ((await publisher.numsub()) === 0) await sleep(5);
  const payload = Buffer.alloc(size);
  const pending = [];
  for (let i = 0; i < count; i += 1) {
    if (mode === 'latency') {
      payload.writeBigUInt64LE(process.hrtime.bigint(), 0);
      await publisher.publish(payload);
      await yieldLoop();
      const until = process.hrtime.bigint() + 200000n;
      while (process.hrtime.bigint() < until);
    } else {
      // node-redis's publish is a promise (its pipeline is written when the loop turns);
      // shmbus's returns the receivers at once, so there is nothing to collect.
      const result = publisher.publish(payload);
      if (system !== 'shmbus') pending.push(result);
      if (i % 1000 === 999) {
        await Promise.all(pending);
        pending.length = 0;
        await yieldLoop();
      }
    }
  }
  await Promise.all(pending);
  await new Promise((resolve) => sub.once('exit', resolve));
  await publisher.close();
  if (system === 'unix socket') fs.rmSync(port, { force: true });
  return JSON.parse(out.trim().split('\n').pop());
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function main() {
  const build = process.argv[2];
  if (!build) {
    console.log('usage: node bench/node_bench.js BUILD_DIR [--quick]');
    return 2;
  }
  const quick = process.argv.includes('--quick');
  if (!redisServerInstalled()) return 77;
  if (!fs.existsSync(path.join(packageDir, 'node_modules', 'redis'))) {
    console.log('SKIPPED: node-redis is missing: run bindings/npm-test.sh BUILD_DIR bindings/node first');
    return 77;
  }
  // No output-buffer limit for subscribers: Redis would disconnect one that falls behind.
  const servers = await startServers({
    build,
    name: 'nodebench',
    daemonConfig: '[[channel]]\npattern = "bench"\nring_bytes = "8MiB"\n',
    redisArgs: ['--client-output-buffer-limit', 'pubsub 0 0 0'],
  });
  const { env, port } = servers;
  Object.assign(process.env, { SHMBUS_BUS: env.SHMBUS_BUS, SHMBUS_SOCKET: env.SHMBUS_SOCKET });
  const rows = [];
  try {
    for (const size of [64, 4096]) {
      for (const system of ['shmbus', 'node-redis', 'unix socket']) {
        const n = quick ? 20000 : 200000;
        const tp = await runCase(system, size, n, 'throughput', process.env, port);
        const latency = await runCase(system, size, quick ? 500 : 3000, 'latency', process.env, port);
        const lat = latency.lat.sort((a, b) => a - b);
        rows.push({ size, system, got: tp.got, n, rate: tp.got / tp.seconds, p50: percentile(lat, 0.5) / 1000, p99: percentile(lat, 0.99) / 1000 });
      }
    }
  } finally {
    servers.stop();
  }
  console.log('| payload | system | delivered (rest: lapped, counted lost) | throughput | one-way p50 | one-way p99 |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.size} B | ${r.system} | ${r.got.toLocaleString('en')} of ${r.n.toLocaleString('en')} | ${(r.rate / 1000).toFixed(1)} k msg/s | ${r.p50.toFixed(1)} us | ${r.p99.toFixed(1)} us |`);
  }
  for (const size of [64, 4096]) {
    const ours = rows.find((r) => r.size === size && r.system === 'shmbus');
    const theirs = rows.find((r) => r.size === size && r.system === 'node-redis');
    const floor = rows.find((r) => r.size === size && r.system === 'unix socket');
    console.log(`\n${size} B: throughput ${(ours.rate / theirs.rate).toFixed(1)}x node-redis's, p50 ${(ours.p50 / theirs.p50).toFixed(3)}x of node-redis's`);
    console.log(`${size} B: a direct unix socket between the two Node processes: throughput ${(floor.rate / theirs.rate).toFixed(1)}x node-redis's, p50 ${(floor.p50 / theirs.p50).toFixed(3)}x of node-redis's (shmbus p50 ${(ours.p50 / floor.p50).toFixed(2)}x of it)`);
  }
  return 0;
}

main().then((code) => process.exit(code));
