'use strict';
// Socket.IO end to end over shmbus: three real socket.io server processes with the adapter
// on one bus, socket.io-client clients on each, and what the Redis adapter does checked
// across them: room broadcasts (each room client once, nobody else), except, local,
// binary payloads, fetchSockets, serverSideEmit and broadcasts with acknowledgements from
// any process, socketsJoin / disconnectSockets, and a killed process leaving the server
// count.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { io: connectClient } = require('socket.io-client');
const { startDaemon, until } = require('shmbus/test/daemon');
const { startServer, call } = require('./servers');

const SERVERS = 3;
const CLIENTS_PER_SERVER = 3;
let daemon;
const servers = [];
const clients = []; // clients[s * CLIENTS_PER_SERVER + k] is on servers[s]
const received = new Map(); // client index -> [[event, data]]

const settle = () => new Promise((resolve) => setTimeout(resolve, 300));

function receivers(event) {
  const out = [];
  for (const [i, events] of received) for (const [e] of events) if (e === event) out.push(i);
  return out.sort((a, b) => a - b);
}

before(async () => {
  daemon = await startDaemon();
  for (let s = 0; s < SERVERS; s += 1) servers.push(await startServer(daemon.env));
  for (let s = 0; s < SERVERS; s += 1) {
    for (let k = 0; k < CLIENTS_PER_SERVER; k += 1) {
      const index = clients.length;
      const client = connectClient(`http://127.0.0.1:${servers[s].port}`, { transports: ['websocket'] });
      received.set(index, []);
      client.onAny((event, data) => received.get(index).push([event, data]));
      client.on('question', (ack) => ack(`answer ${index}`));
      clients.push(client);
      await new Promise((resolve) => client.once('connect', resolve));
    }
  }
  for (const client of clients.filter((_, i) => i % CLIENTS_PER_SERVER === 0)) {
    const deadline = Date.now() + 5000;
    while ((await call(client, 'count')) !== SERVERS) {
      assert.ok(Date.now() < deadline, 'every server counts the others');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
});

after(async () => {
  for (const client of clients) client.disconnect();
  for (const { child } of servers) if (child.exitCode === null) child.kill('SIGTERM');
  await daemon.stop();
});

test('a room broadcast reaches exactly the room, once each, from any process', async () => {
  for (const i of [0, 4, 8]) await call(clients[i], 'join', 'room');
  await call(clients[1], 'broadcast', { room: 'room', event: 'news', data: 'x' });
  await settle();
  assert.deepEqual(receivers('news'), [0, 4, 8]);
});

test('except leaves out the sockets of the rooms named', async () => {
  await call(clients[4], 'join', 'quiet');
  await call(clients[7], 'broadcast', { room: 'room', except: 'quiet', event: 'partial', data: 1 });
  await settle();
  assert.deepEqual(receivers('partial'), [0, 8]);
});

test('local reaches the clients of the emitting process only', async () => {
  await call(clients[3], 'broadcast', { local: true, event: 'here', data: 2 });
  await settle();
  assert.deepEqual(receivers('here'), [3, 4, 5]);
});

test('binary payloads arrive as they were sent', async () => {
  const payload = Buffer.from([0, 1, 2, 0xfe, 0xff]);
  await call(clients[2], 'broadcast', { event: 'bytes', data: payload });
  await settle();
  assert.deepEqual(receivers('bytes'), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  for (const [, events] of received) {
    const [, data] = events.find(([e]) => e === 'bytes');
    assert.deepEqual(Buffer.from(data), payload);
  }
});

test('fetchSockets from any process lists every socket with its rooms', async () => {
  for (const from of [0, 5, 7]) {
    const sockets = await call(clients[from], 'fetch');
    assert.equal(sockets.length, SERVERS * CLIENTS_PER_SERVER);
    assert.deepEqual(new Set(sockets.map((s) => s.id)), new Set(clients.map((c) => c.id)));
    const inRoom = sockets.filter((s) => s.rooms.includes('room')).map((s) => s.id);
    assert.deepEqual(new Set(inRoom), new Set([0, 4, 8].map((i) => clients[i].id)));
  }
});

test('serverSideEmit with acknowledgements gets every other server', async () => {
  const responses = await call(clients[8], 'serverSideEmit');
  assert.ok(Array.isArray(responses), `responses: ${responses}`);
  assert.equal(responses.length, SERVERS - 1);
  const origin = `server:${servers[2].port}`;
  for (const r of responses) assert.match(r, new RegExp(`^server:\\d+ got from ${origin}$`));
});

test('a broadcast with acknowledgements collects every client of every process', async () => {
  const responses = await call(clients[1], 'ask');
  assert.ok(Array.isArray(responses), `responses: ${responses}`);
  assert.deepEqual(responses.sort(), clients.map((_, i) => `answer ${i}`).sort());
});

test('socketsLeave acts on every process, and volatile broadcasts reach connected clients', async () => {
  for (const i of [1, 5, 7]) await call(clients[i], 'join', 'leaving');
  await call(clients[0], 'socketsLeave', { from: 'leaving', room: 'leaving' });
  await settle();
  await call(clients[3], 'broadcast', { room: 'leaving', event: 'after-leave', data: 0 });
  await call(clients[3], 'volatile', { room: 'room', event: 'volatile' });
  await settle();
  assert.deepEqual(receivers('after-leave'), []);
  assert.deepEqual(receivers('volatile'), [0, 4, 8]);
});

test('socketsJoin and disconnectSockets act on every process', async () => {
  await call(clients[6], 'socketsJoin', { from: 'room', to: 'moved' });
  await settle();
  await call(clients[6], 'broadcast', { room: 'moved', event: 'moved', data: 3 });
  await settle();
  assert.deepEqual(receivers('moved'), [0, 4, 8]);
  const disconnected = [];
  clients.forEach((c, i) => c.on('disconnect', () => disconnected.push(i)));
  await call(clients[3], 'disconnectRoom', 'moved');
  await until(() => disconnected.length === 3, 5000, 'three disconnects');
  assert.deepEqual(disconnected.sort(), [0, 4, 8]);
});

test('a killed process leaves the server count within the heartbeat timeout', async () => {
  servers[2].child.kill('SIGKILL');
  const deadline = Date.now() + 5000; // timeout 500 ms, checked every second
  for (const i of [1, 5]) {
    while ((await call(clients[i], 'count')) !== SERVERS - 1) {
      assert.ok(Date.now() < deadline, 'the dead server leaves the count');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
});
