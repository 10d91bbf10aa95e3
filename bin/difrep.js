#!/usr/bin/env node
// The difrep CLI: the built JavaScript in an installed package, the TypeScript source through tsx in
// a checkout (Node 20 cannot strip types by itself). A checkout's dist/ (npm run build, the example
// page) goes stale as the source changes, and fixes pulled into src/ went unused through this bin.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const built = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
// package-root.ts's isCheckout: the build config ships only in a checkout, never in the package.
const checkout = existsSync(fileURLToPath(new URL('../tsconfig.build.json', import.meta.url)));
if (existsSync(built) && !checkout) {
  await import(built);
} else {
  const require = createRequire(import.meta.url);
  const tsx = require.resolve('tsx');
  const main = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', tsx, main, ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
