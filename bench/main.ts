// npm run bench [-- --quick | --full] [--tune] [--no-peer] [--json FILE] [--md FILE]
// Times every kernel family on the real model's shapes, against the adapter's measured peaks and
// against a peer engine (tfjs-backend-webgpu) on the same adapter.
import { execFileSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Engine } from '../src/engine/engine.ts';
import * as ops from '../src/engine/ops/index.ts';
import { writeFileAtomic } from '../src/model/checkpoint/atomic-write.ts';
import { measurePeaks, type Peaks } from './calibration.ts';
import { type BenchCase, CASES } from './cases.ts';
import { type Measurement, measure } from './measure.ts';
import { tuneKernels } from '../src/cli/tune.ts';
import { adapterName, storeTuning, tunedEngine } from '../src/cli/tuning-cache.ts';

interface Row {
  family: string;
  name: string;
  /** Absent when the case failed (`throughput` then says why). */
  ours?: Measurement;
  throughput: string;
  ofPeak?: number;
  target?: number;
  peer?: { firstMs: number; medianMs: number } | { error: string };
  ratio?: number;
}

const args = process.argv.slice(2);
const flag = (f: string) => args.includes(f);
const value = (f: string) => (args.includes(f) ? args[args.indexOf(f) + 1] : undefined);
if (flag('--help')) {
  console.log('usage: npm run bench -- [--quick | --full] [--tune] [--no-peer] [--json FILE] [--md FILE]');
  process.exit(0);
}
const mode = flag('--quick') ? 'quick' : flag('--full') ? 'full' : 'default';

function fmt(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
}

async function dispatchOverhead(e: Engine): Promise<{ oneSubmitUs: number; perSubmitUs: number }> {
  const x = e.tensor([1, 2, 3, 4], [4]);
  const many = async (perSubmit: boolean) => {
    const t0 = performance.now();
    for (let i = 0; i < 1000; i++) {
      e.tidy(() => void (ops.scale(x, 2)));
      if (perSubmit) e.flush();
    }
    await e.sync();
    return ((performance.now() - t0) * 1000) / 1000;
  };
  await many(false);
  const r = { oneSubmitUs: await many(false), perSubmitUs: await many(true) };
  x.dispose();
  return r;
}


/** 64 MiB each way: one warm-up transfer (it allocates the staging buffers), then the median of three. */
async function transferBandwidth(e: Engine): Promise<{ uploadGBps: number; readbackGBps: number }> {
  const n = 16 * 1024 * 1024;
  const data = new Float32Array(n);
  const t = e.empty([n], 'bench.transfer');
  await e.sync();
  const up: number[] = [];
  const down: number[] = [];
  for (let i = 0; i < 4; i++) {
    let t0 = performance.now();
    e.writeBuffer(t.buffer, 0, data);
    await e.sync();
    if (i > 0) up.push(performance.now() - t0);
    t0 = performance.now();
    await t.read();
    if (i > 0) down.push(performance.now() - t0);
  }
  t.dispose();
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[1];
  return { uploadGBps: (4 * n) / (median(up) * 1e6), readbackGBps: (4 * n) / (median(down) * 1e6) };
}

function runPeer(cases: BenchCase[]): Map<BenchCase, { firstMs: number; medianMs: number } | { error: string }> {
  const withPeer = cases.filter((c) => c.peer);
  const out = new Map<BenchCase, { firstMs: number; medianMs: number } | { error: string }>();
  if (!withPeer.length) return out;
  const script = fileURLToPath(new URL('./peer-tfjs.ts', import.meta.url));
  try {
    const text = execFileSync(process.execPath, ['--import', 'tsx', script, JSON.stringify(withPeer.map((c) => c.peer))], {
      encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 15 * 60 * 1000,
    });
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      const r = JSON.parse(line);
      out.set(withPeer[r.i], r.error ? { error: r.error } : { firstMs: r.firstMs, medianMs: r.medianMs });
    }
  } catch (err) {
    const msg = (err as { stderr?: string }).stderr?.split('\n').find((l) => /Error|Cannot/.test(l)) ?? (err as Error).message;
    for (const c of withPeer) out.set(c, { error: `peer could not run: ${msg.slice(0, 200)}` });
  }
  return out;
}

function table(rows: Row[]): string {
  const head = ['kernel', 'shape', 'first', 'median', 'spread', 'throughput', '% of peak', 'target', 'peer median', 'ours/peer'];
  const body = rows.map((r) => [
    r.family, r.name, r.ours ? fmt(r.ours.firstMs) : '', r.ours ? fmt(r.ours.medianMs) : '', r.ours ? `${fmt(r.ours.minMs)}–${fmt(r.ours.maxMs)} (${r.ours.reps})` : '',
    r.throughput, r.ofPeak === undefined ? '' : `${(100 * r.ofPeak).toFixed(0)}%`, r.target === undefined ? '' : `${(100 * r.target).toFixed(0)}%`,
    !r.peer ? '' : 'error' in r.peer ? 'n/a' : fmt(r.peer.medianMs), r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}×`,
  ]);
  return [head, ...body].map((cols) => `| ${cols.join(' | ')} |`).join('\n').replace(/\n/, `\n|${head.map(() => '---').join('|')}|\n`);
}

async function main() {
  const engine = await tunedEngine();
  const adapter = adapterName(engine);
  const started = new Date();
  console.log(`difrep bench (${mode}) on ${adapter}; CPU ${cpus()[0]?.model} ×${cpus().length}; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (flag('--tune')) {
    // The same bounded search as `difrep tune` (src/cli/tune.ts).
    const { tuning } = await tuneKernels(engine, 60, (line) => console.log(line));
    await storeTuning(adapter, tuning);
    console.log(`tuning stored for ${adapter}: ${JSON.stringify(tuning)}`);
    engine.dispose();
    const tuned = await tunedEngine();
    return report(tuned, adapter, started);
  }
  return report(engine, adapter, started);
}

async function report(engine: Engine, adapter: string, started: Date) {
  const peaks: Peaks = await measurePeaks(engine);
  console.log(`measured peaks: FMA ${peaks.gflops.toFixed(1)} GFLOP/s, copy ${peaks.gbps.toFixed(2)} GB/s (read + write)`);
  // `full: 'cpu'`: whole-model rows too slow for the default run on CPU adapters only.
  const cases = CASES.filter((c) => (mode === 'quick' ? c.quick : mode === 'full' ? true : !(c.full === true || (c.full === 'cpu' && engine.cpuAdapter))));
  const peer = flag('--no-peer') ? new Map() : runPeer(cases);
  if (flag('--no-peer')) console.log('peer: skipped (--no-peer)');
  const rows: Row[] = [];
  for (const c of cases) {
    let setup: Awaited<ReturnType<BenchCase['setup']>> | undefined;
    let m: Measurement;
    try {
      setup = await c.setup(engine);
      // Whole-model rows: one or two repetitions, three for the training step (its time varies most).
      const heavy = (c.flops ?? 0) > 10e9 || c.images !== undefined || c.family === 'U-Net forward';
      const reps = c.family === 'U-Net training' ? 3 : heavy ? 1 : 3;
      m = await measure(engine, setup.run, { flops: c.flops, bytes: c.bytes, minReps: reps, maxReps: heavy ? Math.max(2, reps) : 10 });
    } catch (err) {
      // A case this adapter cannot run (out of memory, a limit) is a row that says so, not the end of the run.
      const reason = `failed: ${(err as Error).message.split('\n')[0].slice(0, 160)}`;
      rows.push({ family: c.family, name: c.name, throughput: reason, target: c.target });
      console.log(`  ${c.family.padEnd(18)} ${c.name.padEnd(40)} ${reason}`);
      continue;
    } finally {
      setup?.dispose();
    }
    const algorithm = setup.algorithm;
    const p = peer.get(c);
    // A Winograd conv: effective GFLOP/s (the direct conv's FLOPs over the time), % of peak from the
    // FLOPs it performs.
    const executedGflops = algorithm && m.gflops !== undefined ? (algorithm.executedFlops / (c.flops ?? 1)) * m.gflops : m.gflops;
    const row: Row = {
      family: c.family, name: algorithm ? `${c.name} [${algorithm.name}]` : c.name, ours: m, target: c.target, peer: p,
      throughput: m.gflops !== undefined ? `${m.gflops.toFixed(2)} GFLOP/s${algorithm ? ' effective' : ''}` : m.gbps !== undefined ? `${m.gbps.toFixed(2)} GB/s` : c.images !== undefined ? `${((1000 * c.images) / m.medianMs).toFixed(2)} img/s` : `${(1000 / m.medianMs).toFixed(2)} /s`,
      ofPeak: executedGflops !== undefined ? executedGflops / peaks.gflops : m.gbps !== undefined ? m.gbps / peaks.gbps : undefined,
      ratio: p && !('error' in p) ? p.medianMs / m.medianMs : undefined,
    };
    rows.push(row);
    console.log(`  ${c.family.padEnd(18)} ${row.name.padEnd(40)} ${fmt(m.medianMs).padStart(10)}  ${row.throughput.padStart(16)}${row.ofPeak !== undefined ? `  ${(100 * row.ofPeak).toFixed(0).padStart(3)}% of peak` : ''}${row.ratio !== undefined ? `  ${row.ratio.toFixed(2)}× peer` : p && 'error' in p ? `  peer: ${p.error}` : ''}`);
  }
  const overhead = await dispatchOverhead(engine);
  const transfer = await transferBandwidth(engine);
  console.log(`dispatch overhead: ${overhead.oneSubmitUs.toFixed(1)} µs per dispatch batched in few submits, ${overhead.perSubmitUs.toFixed(1)} µs with one submit each`);
  console.log(`transfers (64 MiB): upload ${transfer.uploadGBps.toFixed(2)} GB/s, readback ${transfer.readbackGBps.toFixed(2)} GB/s`);
  console.log(`\n${table(rows)}`);
  const result = { adapter, cpu: cpus()[0]?.model, cores: cpus().length, loadavg: loadavg(), date: started.toISOString(), mode, peaks: { gflops: peaks.gflops, gbps: peaks.gbps }, rows, overhead, transfer, tuning: engine.tuning };
  const json = value('--json');
  if (json) await writeFileAtomic(json, JSON.stringify(result, null, 2));
  const md = value('--md');
  if (md) {
    const text = `# difrep bench results\n\nAdapter: ${adapter}  \nCPU: ${result.cpu} ×${result.cores}  \nDate: ${result.date}  \nMode: ${mode}; load average at start ${result.loadavg.map((l) => l.toFixed(2)).join(' ')}  \n` +
      `Measured peaks (each probe's fastest repetition): FMA ${peaks.gflops.toFixed(1)} GFLOP/s, copy ${peaks.gbps.toFixed(2)} GB/s  \nPeer: @tensorflow/tfjs-backend-webgpu 4.22.0 in its own process on the same adapter  \n` +
      `Timing: wall time around submit + onSubmittedWorkDone, one warm-up call (\"first\", compilation included), median of the repetitions  \n` +
      `Tuning in use: ${JSON.stringify(engine.tuning)}  \n` +
      `Rows marked [Winograd F(2×2, 3×3)]: throughput is effective (the direct conv's FLOPs over the time), % of peak counts the FLOPs Winograd performs (4/9 of those for even sizes; transforms not counted)\n\n${table(rows)}\n\n` +
      `Dispatch overhead: ${overhead.oneSubmitUs.toFixed(1)} µs per dispatch batched, ${overhead.perSubmitUs.toFixed(1)} µs with a submit each.  \n` +
      `Transfers (64 MiB): upload ${transfer.uploadGBps.toFixed(2)} GB/s, readback ${transfer.readbackGBps.toFixed(2)} GB/s.\n`;
    await writeFileAtomic(md, text);
  }
  engine.dispose();
}

await main();
process.exit(0);
