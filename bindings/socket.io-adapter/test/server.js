'use strict';
// A Socket.IO server process for the tests: the shmbus adapter on the bus of $SHMBUS_BUS /
// $SHMBUS_SOCKET, and events a test client uses to make it act (broadcast, fetchSockets,
// serverSideEmit, ...). Prints "listening <port>" once ready.
const http = require('node:http');
const { Server } = require('socket.io');
const shmbus = require('shmbus');
const { createAdapter } = require('..');

const server = http.createServer();
const io = new Server(server);
io.adapter(createAdapter(shmbus.connect(), { heartbeatInterval: 100, heartbeatTimeout: 500 }));
let name = '';

io.on('hello', (text, callback) => callback(`${name} got ${text}`)); // serverSideEmit
io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(room);
    ack();
  });
  socket.on('broadcast', ({ room, except, event, data, local }, ack) => {
    let target = local ? io.local : io;
    if (room) target = target.to(room);
    if (except) target = target.except(except);
    target.emit(event, data);
    ack();
  });
  socket.on('fetch', async (ack) => {
    const sockets = await io.fetchSockets();
    ack(sockets.map((s) => ({ id: s.id, rooms: [...s.rooms] })));
  });
  socket.on('serverSideEmit', (ack) => {
    io.serverSideEmit('hello', `from ${name}`, (error, responses) => ack(error ? String(error) : responses));
  });
  socket.on('count', async (ack) => ack(await io.of('/').adapter.serverCount()));
  socket.on('host', (ack) => ack(process.env.SHMBUS_BUS));
  socket.on('ask', (ack) => {
    io.timeout(3000).emit('question', (error, responses) => ack(error ? String(error) : responses));
  });
  socket.on('socketsJoin', ({ from, to }, ack) => {
    io.in(from).socketsJoin(to);
    ack();
  });
  socket.on('socketsLeave', ({ from, room }, ack) => {
    io.in(from).socketsLeave(room);
    ack();
  });
  socket.on('volatile', ({ room, event }, ack) => {
    io.volatile.to(room).emit(event, 'v');
    ack();
  });
  socket.on('disconnectRoom', (room, ack) => {
    ack();
    io.in(room).disconnectSockets(true);
  });
});

server.listen(0, '127.0.0.1', () => {
  name = `server:${server.address().port}`;
  console.log(`listening ${server.address().port}`);
});
