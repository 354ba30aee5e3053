'use strict';
// Preloaded (node -r) into the seed's chat server, which listens on port 3000 as published:
// it listens on a free loopback port instead and prints it, so several can run at once and
// the seed's own file stays as written.
const http = require('node:http');

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (...args) {
  this.once('listening', () => console.log(`listening ${this.address().port}`));
  return listen.call(this, 0, '127.0.0.1');
};
