#!/usr/bin/env node
// The difrep CLI: the built JavaScript in an installed package, the TypeScript source through tsx in
// a checkout (Node 20 cannot strip types by itself). A checkout's dist/ (npm run build, the example
// page) goes stale as the source changes, and fixes pulled into src/ went unused through this bin.
// tsx is registered in this process (its ESM API) rather than run as a child: a child under
// spawnSync got no signal sent to this one, so a `kill` (systemd's, a container's PID 1) stopped
// only this wrapper and left the run orphaned, writing into --out and holding its locks.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
// package-root.ts's isCheckout: the build config ships only in a checkout, never in the package.
const checkout = existsSync(fileURLToPath(new URL('../tsconfig.build.json', import.meta.url)));
if (existsSync(built) && !checkout) {
  await import(built);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL('../src/cli/main.ts', import.meta.url).href);
}
