// Runs under Deno (`deno run --unstable-webgpu`): the same TypeScript source, Deno's own WebGPU.
// Prints one JSON line the Node test checks.
import { createEngine, ops } from '../../src/index.ts';

const e = await createEngine();
const a = e.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
const b = e.tensor([0.5, -1, 2, 0, 1, 3], [3, 2]);
a.requiresGrad = true;
const c = ops.matmul(a, b);
e.tape.backward(ops.sum(c));
console.log(JSON.stringify({
  adapter: e.handle.info.description || e.handle.info.device || e.handle.info.vendor,
  matmul: Array.from(await c.read()),
  gradA: Array.from(await a.grad!.read()),
}));
e.dispose();
