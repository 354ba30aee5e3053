'use strict';
// lib/index.d.ts against TypeScript's strict checker: test/types/usage.ts uses the package
// as documented (and expects one misuse to be refused); it must compile without errors.
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { test } = require('node:test');

test('the TypeScript declarations compile against the documented uses', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const result = spawnSync(
    process.execPath,
    [tsc, '--noEmit', '--strict', '--types', 'node', path.join(__dirname, 'types', 'usage.ts')],
    { encoding: 'utf8' },
  );
  assert.equal(result.status, 0, result.stdout + result.stderr);
});
