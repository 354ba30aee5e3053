'use strict';
// `npm install`'s build step: node-gyp (npm's own) against the headers of the Node.js that
// runs it, found beside its binary, so nothing is downloaded (the registry is all that is
// reachable where this builds). $npm_config_node_gyp is set by npm for install scripts.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

// libshmbus first: without it the compile would fail on a missing header, saying less.
const include = execFileSync(process.execPath, [path.join(__dirname, 'libshmbus.js'), 'include'], {
  encoding: 'utf8',
});
if (!fs.existsSync(path.join(include, 'shmbus', 'shmbus.h'))) {
  console.error(
    `shmbus: libshmbus's headers are not in ${include}. Install libshmbus (meson install, which ` +
      'also installs shmbus.pc for pkg-config), or point SHMBUS_BUILD_DIR at a meson build ' +
      'directory of the shmbus repository.',
  );
  process.exit(1);
}

const prefix = path.dirname(path.dirname(process.execPath));
const args = ['rebuild'];
if (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
const nodeGyp =
  process.env.npm_config_node_gyp ||
  path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
execFileSync(process.execPath, [nodeGyp, ...args], { stdio: 'inherit', cwd: path.resolve(__dirname, '..') });
