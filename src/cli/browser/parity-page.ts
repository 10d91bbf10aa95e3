// The parity run inside a browser page (served by `difrep parity --runtime chromium`): fetches the
// dumps over HTTP, runs the same comparison as Node and Deno on the page's navigator.gpu, logs
// the same lines to the console, and leaves its verdict in globalThis.difrepExit (0 pass, 1 fail).
import { createEngine } from '../../engine/engine.ts';
import { memorySource } from '../../model/checkpoint/byte-source.ts';
import { runParity } from '../parity-run.ts';

const exit = (code: number) => Object.assign(globalThis, { difrepExit: code });

async function fetchBytes(url: string) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return memorySource(new Uint8Array(await res.arrayBuffer()), decodeURIComponent(url.split('/').pop()!));
}

try {
  const q = new URLSearchParams(location.search);
  const files = q.getAll('file');
  const unet = q.get('unet');
  const engine = await createEngine();
  const sources = await Promise.all(files.map(async (f) => ({ name: decodeURIComponent(f.split('/').pop()!), source: await fetchBytes(f) })));
  const ok = await runParity(engine, sources, { tol: Number(q.get('tol')), gradTol: Number(q.get('gradTol')), unet: unet ? await fetchBytes(unet) : undefined }, (l) => console.log(l));
  await engine.dispose();
  exit(ok ? 0 : 1);
} catch (e) {
  console.error(`difrep: ${(e as Error).name}: ${(e as Error).message}`);
  exit(2);
}
