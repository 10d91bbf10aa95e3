// The parity comparison and its printout, shared by every runtime: Node and Deno run it from
// `difrep parity`, a Chromium page from src/cli/browser/parity-page.ts; each prints the same lines.
import type { Engine } from '../engine/engine.ts';
import type { ByteSource } from '../model/checkpoint/byte-source.ts';
import { parity } from '../train/parity.ts';

export interface ParityRunOptions {
  tol: number;
  gradTol: number;
  unet?: string | ByteSource;
}

/** Runs every dump, printing per tensor and a verdict per file; true when all pass. */
export async function runParity(engine: Engine, files: { name: string; source: string | ByteSource }[], o: ParityRunOptions, log: (line: string) => void): Promise<boolean> {
  const info = engine.handle.info;
  log(`adapter: ${[info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / ') || 'unknown'}`);
  let ok = true;
  for (const { name, source } of files) {
    log(`\n${name}`);
    const report = await parity(engine, source, {
      forwardTolerance: o.tol,
      gradientTolerance: o.gradTol,
      unetFile: o.unet,
      onResult: (c) => log(`  ${c.pass ? 'ok  ' : 'FAIL'} ${c.name.padEnd(14)} max abs ${c.maxAbs.toExponential(2)}  max rel ${c.maxRel.toExponential(2)}${c.note ? `  (${c.note})` : ''}`),
      onNote: (n) => log(`  note: ${n}`),
    });
    const worst = report.results.reduce((w, c) => (c.maxRel > w.maxRel ? c : w), report.results[0]);
    log(`  ${report.pass ? 'PASS' : 'FAIL'}: ${report.results.filter((c) => c.pass).length}/${report.results.length} tensors within tolerance (forward ${o.tol}, gradients ${o.gradTol}); worst ${worst.name} ${worst.maxRel.toExponential(2)}`);
    ok &&= report.pass;
  }
  return ok;
}
