'use strict';
// The seeds' Express + Socket.IO chat server, unchanged but for require('shmbus') in place
// of require('redis'): two of them on one bus, a client on each. A chat message sent to one
// server reaches the room's clients on both, and a notification published on the bus
// reaches the user's room.
const assert = require('node:assert/strict');
const path = require('node:path');
const { after, before, test } = require('node:test');
const { io: connectClient } = require('socket.io-client');
const shmbus = require('shmbus');
const { startDaemon, until } = require('shmbus/test/daemon');
const { startServer } = require('./servers');

let daemon;
const servers = [];
const clients = [];

function startSeedServer() {
  return startServer(daemon.env, [
    '-r',
    path.join(__dirname, 'listen-anywhere.js'),
    path.join(__dirname, 'seed-chat-server.js'),
  ]);
}

before(async () => {
  daemon = await startDaemon();
  for (let i = 0; i < 2; i += 1) servers.push(await startSeedServer());
  for (const server of servers) {
    const client = connectClient(`http://127.0.0.1:${server.port}`, { transports: ['websocket'] });
    client.got = [];
    client.onAny((event, data) => client.got.push([event, data]));
    await new Promise((resolve) => client.once('connect', resolve));
    clients.push(client);
  }
});

after(async () => {
  for (const client of clients) client.disconnect();
  for (const { child } of servers) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  await daemon.stop();
});

test("a chat message reaches the room's clients on both servers", async () => {
  // The seed subscribes to the one channel 'chat:messages' (and publishes a message of room
  // R to 'chat:R'), so, as with Redis, the room that works end to end is 'messages'.
  clients[0].emit('join:room', 'messages');
  clients[1].emit('join:room', 'messages');
  // The servers subscribed at start; joins are local. Send until both have joined.
  await until(
    () => {
      if (clients.every((c) => c.got.some(([e]) => e === 'message'))) return true;
      clients[1].emit('chat:message', { roomId: 'messages', userId: 'ada', message: 'hello' });
      return false;
    },
    5000,
    'the chat message on both clients',
  );
  for (const client of clients) {
    const [, data] = client.got.find(([e]) => e === 'message');
    assert.equal(data.userId, 'ada');
    assert.equal(data.message, 'hello');
  }
});

test("a notification published on the bus reaches the user's room", async () => {
  clients[0].emit('join:user', '42');
  const bus = shmbus.connect(daemon.options);
  await until(
    () => {
      if (clients[0].got.some(([e]) => e === 'notification')) return true;
      bus.publish('notifications', JSON.stringify({ userId: '42', text: 'ping' }));
      return false;
    },
    5000,
    'the notification',
  );
  const [, data] = clients[0].got.find(([e]) => e === 'notification');
  assert.deepEqual(data, { userId: '42', text: 'ping' });
  assert.ok(!clients[1].got.some(([e]) => e === 'notification'), 'not in the other user room');
  await bus.quit();
});
