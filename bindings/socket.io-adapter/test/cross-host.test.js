'use strict';
// Two hosts as one Socket.IO cluster: each host is a bus with its shmbus-bridge to one real
// redis-server (exporting and importing socket.io#*), two socket.io servers on host A and
// one on host B, clients on each. Every room client gets a broadcast exactly once whatever
// host it came from (no duplicate, no loop), and fetchSockets / serverSideEmit / the
// server count span both hosts. Needs $SHMBUS_BRIDGE and redis-server: skips, saying so,
// without them (CI has both).
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { after, before, test } = require('node:test');
const { io: connectClient } = require('socket.io-client');
const { startDaemon, until } = require('shmbus/test/daemon');
const { startServer, call } = require('./servers');

function which(program) {
  try {
    return execFileSync('sh', ['-c', `command -v ${program}`], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
}
const redisServer = which('redis-server');
const bridgeBinary = process.env.SHMBUS_BRIDGE ?? '';
const missing = !redisServer
  ? 'redis-server is not installed (apt-get install redis-server)'
  : !bridgeBinary
    ? 'SHMBUS_BRIDGE (the shmbus-bridge binary, built with hiredis) is not set'
    : '';

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const processes = [];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-xhost-'));
const hosts = {}; // name -> { daemon, servers: [{port}], clients: [] }
const received = new Map(); // client -> [[event, data]]

function run(program, args, env) {
  const child = spawn(program, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  processes.push(child);
  return child;
}

function startServerOn(env) {
  return startServer(env).then((server) => {
    processes.push(server.child);
    return server;
  });
}

before(async () => {
  if (missing) return;
  const redisPort = await freePort();
  run(redisServer, ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], process.env);
  await until(() => {
    try {
      execFileSync('redis-cli', ['-p', String(redisPort), 'ping'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  }, 10000, 'redis-server');
  let hostId = 1;
  for (const [name, serverCount] of [['A', 2], ['B', 1]]) {
    const daemon = await startDaemon();
    const config = path.join(dir, `bridge-${name}.toml`);
    fs.writeFileSync(
      config,
      `[redis]\nport = ${redisPort}\n[bridge]\nhost_id = ${hostId++}\ninterest_interval_ms = 20\n` +
        '[[export]]\npattern = "socket.io#*"\n[[import]]\npattern = "socket.io#*"\n',
    );
    run(bridgeBinary, ['--bus', daemon.options.bus, '--socket', daemon.options.socket, '-c', config, '--log-level', 'warn'], daemon.env);
    const servers = [];
    for (let s = 0; s < serverCount; s += 1) servers.push(await startServerOn(daemon.env));
    hosts[name] = { daemon, servers, clients: [] };
  }
  for (const host of Object.values(hosts)) {
    for (const server of host.servers) {
      for (let k = 0; k < 2; k += 1) {
        const client = connectClient(`http://127.0.0.1:${server.port}`, { transports: ['websocket'] });
        received.set(client, []);
        client.onAny((event, data) => received.get(client).push([event, data]));
        await new Promise((resolve) => client.once('connect', resolve));
        host.clients.push(client);
      }
    }
  }
  // Every server counts all three once heartbeats crossed both bridges.
  for (const host of Object.values(hosts)) {
    for (const client of host.clients) {
      const deadline = Date.now() + 10000;
      while ((await call(client, 'count')) !== 3) {
        assert.ok(Date.now() < deadline, 'every server counts the three');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }
});

after(async () => {
  for (const host of Object.values(hosts)) for (const client of host.clients) client.disconnect();
  for (const child of processes.reverse()) {
    if (child.exitCode !== null) continue;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  for (const host of Object.values(hosts)) await host.daemon.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a room broadcast crosses hosts: each room client once, nobody else', { skip: missing || false }, async () => {
  const all = [...hosts.A.clients, ...hosts.B.clients];
  const inRoom = [hosts.A.clients[0], hosts.A.clients[3], hosts.B.clients[1]];
  for (const client of inRoom) await call(client, 'join', 'xroom');
  for (const [from, event] of [[hosts.A.clients[1], 'fromA'], [hosts.B.clients[0], 'fromB']]) {
    await call(from, 'broadcast', { room: 'xroom', event, data: Buffer.from([1, 2, 3]) });
    await until(() => inRoom.every((c) => received.get(c).some(([e]) => e === event)), 5000, `${event} everywhere`);
  }
  await new Promise((resolve) => setTimeout(resolve, 300)); // room for a duplicate to show
  for (const client of all) {
    for (const event of ['fromA', 'fromB']) {
      const copies = received.get(client).filter(([e]) => e === event);
      assert.equal(copies.length, inRoom.includes(client) ? 1 : 0, `${event} copies`);
      for (const [, data] of copies) assert.deepEqual(Buffer.from(data), Buffer.from([1, 2, 3]));
    }
  }
});

test('fetchSockets and serverSideEmit span both hosts', { skip: missing || false }, async () => {
  const all = [...hosts.A.clients, ...hosts.B.clients];
  for (const from of [hosts.A.clients[2], hosts.B.clients[1]]) {
    const sockets = await call(from, 'fetch');
    assert.deepEqual(new Set(sockets.map((s) => s.id)), new Set(all.map((c) => c.id)));
    const responses = await call(from, 'serverSideEmit');
    assert.ok(Array.isArray(responses), `responses: ${responses}`);
    assert.equal(responses.length, 2);
  }
});
