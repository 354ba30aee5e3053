'use strict';
// Where libshmbus's headers and library are, for binding.gyp: `node scripts/libshmbus.js
// include|lib`. $SHMBUS_BUILD_DIR (a meson build directory of this repository) wins; else
// pkg-config's shmbus.pc (what `meson install` put there); else /usr/local.
const { execFileSync } = require('node:child_process');
const path = require('node:path');

function locate(what) {
  const build = process.env.SHMBUS_BUILD_DIR;
  if (build) {
    return what === 'include'
      ? path.resolve(__dirname, '..', '..', '..', 'libbus', 'include')
      : path.resolve(build, 'libbus');
  }
  try {
    const variable = what === 'include' ? 'includedir' : 'libdir';
    return execFileSync('pkg-config', [`--variable=${variable}`, 'shmbus'], { encoding: 'utf8' }).trim();
  } catch {
    return what === 'include' ? '/usr/local/include' : '/usr/local/lib';
  }
}

process.stdout.write(locate(process.argv[2]));
