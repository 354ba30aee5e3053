// The seeds' "Express + Socket.io + Redis" chat server (../shared/seeds, 'Redis Pub/Sub for
// Real-Time Applications'), as published, except for one line: require('redis') is now
// require('shmbus'). test/seed-chat.test.js runs two of them on one bus.
const express = require('express');
const http = require('http');
const socketIo = require('socket.io');
const redis = require('shmbus');
const app = express();
const server = http.createServer(app);
const io = socketIo(server);
// Redis clients
const publisher = redis.createClient();
const subscriber = redis.createClient();
// Subscribe to Redis channels
subscriber.subscribe('notifications');
subscriber.subscribe('chat:messages');
// Forward Redis messages to Socket.io
subscriber.on('message', (channel, message) => {
const data = JSON.parse(message);
if (channel === 'notifications') {
// Broadcast to specific user
io.to(`user:${data.userId}`).emit('notification', data);
} else if (channel.startsWith('chat:')) {
// Broadcast to room
const roomId = channel.split(':')[1];
io.to(`room:${roomId}`).emit('message', data);
}
});
// Socket.io connection handling
io.on('connection', (socket) => {
console.log('User connected:', socket.id);
// Join user room
socket.on('join:user', (userId) => {
socket.join(`user:${userId}`);
});
// Join chat room
socket.on('join:room', (roomId) => {
socket.join(`room:${roomId}`);
});
// Handle chat message
socket.on('chat:message', (data) => {
// Publish to Redis
publisher.publish(
`chat:${data.roomId}`,
JSON.stringify({
userId: data.userId,
message: data.message,
timestamp: new Date()
})
);
});
socket.on('disconnect', () => {
console.log('User disconnected:', socket.id);
});
});
server.listen(3000);
