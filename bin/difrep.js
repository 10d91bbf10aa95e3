#!/usr/bin/env node
// The difrep CLI: the built JavaScript when there is one (an installed package), otherwise the
// TypeScript source through tsx (a checkout; Node 20 cannot strip types by itself).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const built = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
if (existsSync(built)) {
  await import(built);
} else {
  const require = createRequire(import.meta.url);
  const tsx = require.resolve('tsx');
  const main = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', tsx, main, ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
