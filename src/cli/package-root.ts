// The package's root folder, from a checkout (src/cli/) or from the built files (dist/src/cli/).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'difrep') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the difrep package folder above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

/**
 * Whether `root` is a source checkout (it has the build's tsconfig) rather than an installed
 * package, whose dist/ was built when it was packed and whose sources npm unpacks after it (newer).
 */
export function isCheckout(root: string): boolean {
  return existsSync(join(root, 'tsconfig.build.json'));
}
