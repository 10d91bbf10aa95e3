// The layers import downward only: CLI → train → model → engine → kernels. Every relative import
// of every module (multi-line and dynamic ones too) is resolved and checked against the layer order.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';
import { repoRoot } from '../helpers/cli.ts';

// src/index.ts, the library's API, re-exports the layers below it: a module of theirs importing it
// imports upward (it was in no layer, so such an import passed).
const LAYERS = ['kernels', 'src/engine', 'src/model', 'src/train', 'src/index.ts', 'src/cli'];
const layerOf = (file: string) => {
  const rel = relative(repoRoot, file);
  const i = LAYERS.findIndex((l) => rel === l || rel.startsWith(`${l}/`));
  return i;
};

function* sources(dir: string): Generator<string> {
  if (statSync(dir).isFile()) return yield dir;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* sources(p);
    else if (name.endsWith('.ts')) yield p;
  }
}

t.test('no module imports from a layer above its own', async (t) => {
  const violations: string[] = [];
  let imports = 0;
  for (const layer of LAYERS) {
    for (const file of sources(join(repoRoot, layer))) {
      const own = layerOf(file);
      // Static imports and re-exports (their `from` may be lines below the keyword), side-effect
      // imports and dynamic import()s.
      for (const m of readFileSync(file, 'utf8').matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g)) {
        imports++;
        const target = resolve(dirname(file), m[1]);
        const theirs = layerOf(target);
        if (theirs > own) violations.push(`${relative(repoRoot, file)} imports ${relative(repoRoot, target)} (${LAYERS[theirs]} is above ${LAYERS[own]})`);
      }
    }
  }
  t.ok(imports > 500, `${imports} relative imports checked`);
  t.same(violations, []);
});
