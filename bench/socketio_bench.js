#!/usr/bin/env node
'use strict';
// Socket.IO broadcast to 1,000 connected clients spread over 4 server processes: the
// @shmbus/socket.io-adapter against @socket.io/redis-adapter + redis-server, in the same run
// (issue 16's benchmark).
//
//   node bench/socketio_bench.js BUILD_DIR [--quick] [--profile DIR]
//
// BUILD_DIR: the meson build directory the packages in bindings/ were built against
// (bindings/npm-test.sh BUILD_DIR bindings/socket.io-adapter). Per adapter:
//   - 4 socket.io servers, 250 socket.io-client clients on each (websocket), the clients in
//     2 processes;
//   - latency: server 0 broadcasts io.emit('tick', [seq, hrtime]) 10 times a second for
//     4 s (10 k deliveries/s, well under what the setup holds, so queues stay short);
//     every client records arrival - hrtime (one monotonic clock on the host): p50 / p99
//     over all deliveries;
//   - throughput: server 0 broadcasts 300 ticks back to back; broadcasts per second = 300 /
//     the time until the last client has the last one (deliveries = that x 1,000).
// With --profile DIR, the servers and client processes of the shmbus run write V8 CPU
// profiles there (node --cpu-prof), summarised by self time at the end.
// Prints Markdown; exit 77 if redis-server or the packages are missing.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { sleep, startServers, redisServerInstalled } = require('./node_servers');

const adapterDir = path.join(__dirname, '..', 'bindings', 'socket.io-adapter');
const modules = path.join(adapterDir, 'node_modules');
const SERVERS = 4;
const CLIENTS = 1000;
const CLIENT_PROCESSES = 2;

const SERVER = `
const http = require('node:http');
const { Server } = require(${JSON.stringify(path.join(modules, 'socket.io'))});
const [adapter, index, redisPort] = process.argv.slice(1);
(async () => {
  const server = http.createServer();
  const io = new Server(server);
  if (adapter === 'shmbus') {
    const shmbus = require(${JSON.stringify(path.join(modules, 'shmbus'))});
    const { createAdapter } = require(${JSON.stringify(adapterDir)});
    io.adapter(createAdapter(shmbus.connect()));
  } else {
    const { createClient } = require(${JSON.stringify(path.join(modules, 'redis'))});
    const { createAdapter } = require(${JSON.stringify(path.join(modules, '@socket.io', 'redis-adapter'))});
    const pub = createClient({ socket: { port: Number(redisPort) } });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on('connection', (socket) => {
    // The controller asks server 0 to broadcast: count ticks, one every interval ms (0:
    // back to back, yielding to the loop between them as an app's handlers would).
    socket.on('blast', async ({ count, interval }, ack) => {
      for (let seq = 0; seq < count; seq += 1) {
        io.emit('tick', [seq, process.hrtime.bigint().toString()]);
        await new Promise((resolve) => (interval > 0 ? setTimeout(resolve, interval) : setImmediate(resolve)));
      }
      ack();
    });
  });
  process.on('SIGTERM', () => process.exit(0));  // lets --cpu-prof write its profile
  server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
})();
`;

const CLIENT = `
const { io } = require(${JSON.stringify(path.join(modules, 'socket.io-client'))});
const ports = JSON.parse(process.argv[1]);
const count = Number(process.argv[2]);
const sockets = [];
let lat = [];
let last = new Map();  // seq -> arrivals so far
let connected = 0;
for (let i = 0; i < count; i += 1) {
  const s = io('http://127.0.0.1:' + ports[i % ports.length], { transports: ['websocket'] });
  s.on('connect', () => { if (++connected === count) process.send({ ready: true }); });
  s.on('tick', ([seq, sent]) => {
    const now = process.hrtime.bigint();
    lat.push(Number(now - BigInt(sent)));
    const n = (last.get(seq) || 0) + 1;
    last.set(seq, n);
    if (n === count) process.send({ complete: seq, at: now.toString() });
  });
  sockets.push(s);
}
process.on('message', (m) => {
  if (m === 'report') { process.send({ lat }); lat = []; last = new Map(); }
  if (m === 'exit') { for (const s of sockets) s.disconnect(); setTimeout(() => process.exit(0), 100); }
});
`;


function startServer(adapter, index, redisPort, env, profileDir) {
  const args = profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : [];
  const child = spawn(process.execPath, [...args, '-e', SERVER, adapter, String(index), String(redisPort)], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening (\d+)/.exec(out);
      if (m) resolve({ child, port: Number(m[1]) });
    });
  });
}

function startClients(ports, count, env, profileDir) {
  const args = profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : [];
  const child = spawn(process.execPath, [...args, '-e', CLIENT, JSON.stringify(ports), String(count)], {
    env,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  child.completions = [];
  child.on('message', (m) => {
    if (m.complete !== undefined) child.completions.push(m);
  });
  return new Promise((resolve) => child.once('message', () => resolve(child)));
}

function report(client) {
  return new Promise((resolve) => {
    const onMessage = (m) => {
      if (m.lat) {
        client.off('message', onMessage);
        resolve(m.lat);
      }
    };
    client.on('message', onMessage);
    client.send('report');
  });
}

async function runAdapter(adapter, redisPort, env, quick, profileDir) {
  const servers = [];
  const serverProfiles = profileDir && path.join(profileDir, 'servers');
  const clientProfiles = profileDir && path.join(profileDir, 'clients');
  for (let i = 0; i < SERVERS; i += 1) servers.push(await startServer(adapter, i, redisPort, env, serverProfiles));
  await sleep(adapter === 'shmbus' ? 300 : 300); // the adapters' first heartbeats / subscriptions
  // The controller: one more client, on server 0.
  const { io } = require(path.join(modules, 'socket.io-client'));
  const controller = io(`http://127.0.0.1:${servers[0].port}`, { transports: ['websocket'] });
  await new Promise((resolve) => controller.once('connect', resolve));
  const perProcess = CLIENTS / CLIENT_PROCESSES;
  const clients = [];
  for (let c = 0; c < CLIENT_PROCESSES; c += 1) {
    // Each client process spreads its clients over the 4 servers.
    clients.push(await startClients(servers.map((s) => s.port), perProcess, env, clientProfiles));
  }
  const blast = (count, interval) => new Promise((resolve) => controller.emit('blast', { count, interval }, resolve));
  // Warm-up, then latency at 50 broadcasts a second.
  await blast(20, 20);
  await sleep(500);
  for (const c of clients) await report(c);
  const ticks = quick ? 10 : 40;
  await blast(ticks, 100);
  await sleep(1000);
  let lat = [];
  for (const c of clients) lat = lat.concat(await report(c));
  lat.sort((a, b) => a - b);
  // Throughput: back to back; done when every client process has the last tick.
  const burst = quick ? 100 : 300;
  for (const c of clients) c.completions = [];
  const start = process.hrtime.bigint();
  await blast(burst, 0);
  const deadline = Date.now() + 120000;
  while (clients.some((c) => !c.completions.some((m) => m.complete === burst - 1))) {
    if (Date.now() > deadline) throw new Error(`${adapter}: the burst did not complete`);
    await sleep(5);
  }
  const end = clients.map((c) => BigInt(c.completions.find((m) => m.complete === burst - 1).at)).reduce((a, b) => (a > b ? a : b));
  const seconds = Number(end - start) / 1e9;
  for (const c of clients) await report(c);
  controller.disconnect();
  for (const c of clients) {
    const exited = new Promise((resolve) => c.once('exit', resolve));
    c.send('exit');
    await exited; // its CPU profile is written by then
  }
  for (const { child } of servers) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  return {
    adapter,
    deliveries: lat.length,
    expected: ticks * CLIENTS,
    p50: lat[Math.floor(lat.length * 0.5)] / 1e6,
    p99: lat[Math.floor(lat.length * 0.99)] / 1e6,
    broadcastsPerSecond: burst / seconds,
  };
}

function summariseProfiles(dir, title) {
  const self = new Map();
  let total = 0;
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) {
    const profile = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const dt = profile.timeDeltas;
    profile.samples.forEach((id, i) => {
      const node = byId.get(id);
      const where = node.callFrame.url ? path.basename(node.callFrame.url) : '';
      const key = `${node.callFrame.functionName || '(anonymous)'} ${where}`.trim();
      self.set(key, (self.get(key) || 0) + (dt[i] || 0));
      total += dt[i] || 0;
    });
  }
  console.log(`\n${title}, self time, top 15:`);
  console.log('| function | share |');
  console.log('|---|---|');
  for (const [key, us] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
    console.log(`| ${key} | ${((100 * us) / total).toFixed(1)} % |`);
  }
}

async function main() {
  const build = process.argv[2];
  if (!build) {
    console.log('usage: node bench/socketio_bench.js BUILD_DIR [--quick] [--profile DIR]');
    return 2;
  }
  const quick = process.argv.includes('--quick');
  const profileAt = process.argv.indexOf('--profile');
  const profileDir = profileAt > 0 ? path.resolve(process.argv[profileAt + 1]) : null;
  if (!redisServerInstalled()) return 77;
  if (!fs.existsSync(path.join(modules, '@socket.io', 'redis-adapter')) || !fs.existsSync(path.join(modules, 'socket.io-client'))) {
    console.log('SKIPPED: run bindings/npm-test.sh BUILD_DIR bindings/socket.io-adapter first');
    return 77;
  }
  const servers = await startServers({ build, name: 'siobench' });
  const { env, port } = servers;
  const rows = [];
  try {
    if (profileDir) {
      fs.mkdirSync(path.join(profileDir, 'servers'), { recursive: true });
      fs.mkdirSync(path.join(profileDir, 'clients'), { recursive: true });
    }
    rows.push(await runAdapter('shmbus', port, env, quick, profileDir));
    rows.push(await runAdapter('redis', port, env, quick, null));
  } finally {
    servers.stop();
  }
  console.log('| adapter | deliveries (latency run) | emit -> receive p50 | p99 | broadcasts/s held (x 1,000 clients) |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.adapter} | ${r.deliveries.toLocaleString('en')} of ${r.expected.toLocaleString('en')} | ${r.p50.toFixed(2)} ms | ${r.p99.toFixed(2)} ms | ${r.broadcastsPerSecond.toFixed(0)} (${((r.broadcastsPerSecond * CLIENTS) / 1000).toFixed(0)} k deliveries/s) |`);
  }
  const [ours, theirs] = rows;
  console.log(`\nshmbus adapter: ${(ours.broadcastsPerSecond / theirs.broadcastsPerSecond).toFixed(2)}x the Redis adapter's broadcasts/s, p50 ${(ours.p50 / theirs.p50).toFixed(2)}x of its`);
  if (profileDir) {
    summariseProfiles(path.join(profileDir, 'servers'), 'CPU profile of the 4 socket.io servers (shmbus run)');
    summariseProfiles(path.join(profileDir, 'clients'), 'CPU profile of the 2 client processes (shmbus run)');
  }
  return 0;
}

main().then((code) => process.exit(code));
