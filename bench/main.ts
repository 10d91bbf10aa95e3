// npm run bench [-- --quick | --full] [--only REGEX] [--tune] [--peer tfjs | torch | --no-peer] [--json FILE] [--md FILE]
// Times every kernel family on the real model's shapes, against the adapter's measured peaks and
// against a peer engine in its own process: tfjs-backend-webgpu on the same adapter (the kernel
// rows), or PyTorch (bench/peer-torch.py: the kernel rows and the whole models) where a python3
// imports torch.
import { spawnSync } from 'node:child_process';
import { cpus, getPriority, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Engine } from '../src/engine/engine.ts';
import * as ops from '../src/engine/ops/index.ts';
import { writeFileAtomic } from '../src/model/checkpoint/atomic-write.ts';
import { FMA_UNROLL, higherPeaks, measurePeaks, type Peaks, probeAgain } from './calibration.ts';
import { type BenchCase, CASES, type PeerOp } from './cases.ts';
import { type Measurement, measure } from './measure.ts';
import { tuneKernels } from '../src/cli/tune.ts';
import { adapterDescription, adapterName, storeTuning, tunedEngine } from '../src/cli/tuning-cache.ts';
import { yieldCoresUnlessKept } from '../src/cli/cpu-priority.ts';

interface Row {
  family: string;
  name: string;
  /** Absent when the case failed (`throughput` then says why). */
  ours?: Measurement;
  throughput: string;
  ofPeak?: number;
  /** The ceiling ofPeak is of: the run-wide peak, or the row's own re-probe where that read higher (printed, so every % can be recomputed). */
  ceiling?: string;
  /** What % of peak is computed from: the GFLOP/s performed (a Winograd conv's, not its effective rate) or the GB/s. */
  rate?: { gflops?: number; gbps?: number };
  /** The rate's probe (FMA or copy) run again right after the row: its ceiling when higher than the run-wide peak. */
  probedNext?: number;
  target?: number;
  peer?: PeerResult;
  ratio?: number;
}

type PeerResult = { firstMs: number; medianMs: number } | { error: string };

interface PeerRun {
  /** Which peer ran, and where: the console's first lines and the --md header. */
  description: string;
  /** Its name in the table's columns. */
  label: string;
  results: Map<BenchCase, PeerResult>;
}

const args = process.argv.slice(2);
const flag = (f: string) => args.includes(f);
const value = (f: string) => (args.includes(f) ? args[args.indexOf(f) + 1] : undefined);
const USAGE = 'usage: npm run bench -- [--quick | --full] [--only REGEX] [--tune] [--peer tfjs | torch | --no-peer] [--json FILE] [--md FILE]';
if (flag('--help')) {
  console.log(USAGE);
  process.exit(0);
}
const mode = flag('--quick') ? 'quick' : flag('--full') ? 'full' : 'default';
const peerKind = ((): 'tfjs' | 'torch' => {
  const v = flag('--peer') ? value('--peer') : 'tfjs';
  if (v === 'tfjs' || v === 'torch') return v;
  console.error(`--peer ${v ?? ''}: the peer is tfjs (the default) or torch\n${USAGE}`);
  process.exit(2);
})();
/** --only: the rows of the mode whose "family shape" matches (case-insensitive), e.g. 'ADM 256.*batch 1 → b24'. */
const only = ((): RegExp | undefined => {
  if (!flag('--only')) return undefined;
  const source = value('--only');
  try {
    if (source === undefined || source.startsWith('--')) throw new Error('no pattern given');
    return new RegExp(source, 'i');
  } catch (err) {
    console.error(`--only ${source ?? ''}: ${(err as Error).message}; give a regular expression matched against "family shape", e.g. --only 'softmax|GroupNorm'\n${USAGE}`);
    process.exit(2);
  }
})();

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

/** Repetitions of a case: whole-model and > 10 GFLOP rows one or two, three for the training step (its time varies most). */
function repetitions(c: BenchCase): { minReps: number; maxReps: number } {
  const heavy = (c.flops ?? 0) > 10e9 || c.images !== undefined || c.family === 'U-Net forward';
  const reps = c.family === 'U-Net training' ? 3 : heavy ? 1 : 3;
  return { minReps: reps, maxReps: heavy ? Math.max(2, reps) : 10 };
}

const TFJS_OPS = new Set<PeerOp['op']>(['matmul', 'conv2d', 'softmax', 'add']);
const NO_TORCH = 'python3 with torch not found: apt-get install python3-torch';

/** The first python that imports torch: `python3` on PATH (pyenv's on the bench machine), then Debian's. */
function torchPython(): string | undefined {
  return ['python3', '/usr/bin/python3'].find((py) => spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore', timeout: 120_000 }).status === 0);
}

/**
 * Runs the peer's ops in its own process (its global state and first-run cost stay out of our
 * numbers): JSON list of PeerOps in argv, one JSON line per op back ({i, firstMs, medianMs, reps} or
 * {i, error}); PyTorch first prints {peer: {description}}. tfjs has the kernel ops only.
 */
function runPeer(kind: 'tfjs' | 'torch', cases: BenchCase[]): PeerRun {
  const label = kind === 'torch' ? 'PyTorch' : 'tfjs';
  const withPeer = cases.filter((c) => c.peer && (kind === 'torch' || TFJS_OPS.has(c.peer.op)));
  const results = new Map<BenchCase, PeerResult>();
  const python = kind === 'torch' ? torchPython() : undefined;
  if (kind === 'torch' && !python) {
    for (const c of withPeer) results.set(c, { error: NO_TORCH });
    return { label, description: `n/a (${NO_TORCH})`, results };
  }
  let description = kind === 'torch' ? 'PyTorch in its own process' : '@tensorflow/tfjs-backend-webgpu 4.22.0 in its own process on the same adapter';
  if (!withPeer.length) return { label, description, results };
  // Each peer repeats a row as often as we do (a heavy row 1–2 times, the median of two their
  // mean: alike on both sides), a light one at least 3, up to 10 or 1 s.
  const ops = withPeer.map((c) => ({ ...c.peer, ...repetitions(c) }));
  const script = (name: string) => fileURLToPath(new URL(name, import.meta.url));
  const [command, argv] = python ? [python, [script('./peer-torch.py')]] : [process.execPath, ['--import', 'tsx', script('./peer-tfjs.ts')]];
  const timeoutMin = mode === 'full' ? 120 : 15;
  const peerNice = getPriority();
  const r = spawnSync(command, [...argv, JSON.stringify(ops)], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMin * 60_000, maxBuffer: 64 << 20,
  });
  for (const line of (r.stdout ?? '').split('\n')) {
    if (!line.startsWith('{')) continue;
    const m = JSON.parse(line);
    if (m.peer) description = `${m.peer.description}, in its own process`;
    else results.set(withPeer[m.i], m.error ? { error: m.error } : { firstMs: m.firstMs, medianMs: m.medianMs });
  }
  // Ops it did not report: it timed out or stopped (Python's last stderr line is the exception).
  const stderr = (r.stderr ?? '').split('\n').filter((l) => l.trim());
  const reason = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT' ? `peer timed out after ${timeoutMin} min`
    : `peer could not run: ${(python ? stderr.at(-1) : stderr.find((l) => /Error|Cannot/.test(l))) ?? r.error?.message ?? `exit status ${r.status}`}`;
  for (const c of withPeer) if (!results.has(c)) results.set(c, { error: reason.slice(0, 200) });
  return { label, description: `${description}, started at nice ${peerNice}`, results };
}

function table(rows: Row[], peerLabel: string): string {
  const head = ['kernel', 'shape', 'first', 'median', 'spread', 'throughput', '% of peak', 'ceiling', 'target', `${peerLabel} median`, `ours/${peerLabel}`];
  const body = rows.map((r) => [
    r.family, r.name, r.ours ? fmt(r.ours.firstMs) : '', r.ours ? fmt(r.ours.medianMs) : '', r.ours ? `${fmt(r.ours.minMs)}–${fmt(r.ours.maxMs)} (${r.ours.reps})` : '',
    r.throughput, r.ofPeak === undefined ? '' : percentOfPeak(r.ofPeak), r.ceiling ?? '', r.target === undefined ? '' : `${(100 * r.target).toFixed(0)}%`,
    !r.peer ? '' : 'error' in r.peer ? 'n/a' : fmt(r.peer.medianMs), r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}×`,
  ]);
  return [head, ...body].map((cols) => `| ${cols.join(' | ')} |`).join('\n').replace(/\n/, `\n|${head.map(() => '---').join('|')}|\n`);
}

async function main() {
  // The peer runs first, spawned while this thread still has the priority the bench started with:
  // a child inherits its parent's nice value, and a peer spawned after the yield below ran every
  // thread of its own (PyTorch's, or the tfjs peer's lavapipe workers) at nice 19 against our
  // workers at 0, so other load on the machine slowed it alone. The tfjs peer yields its own main
  // thread as we do.
  const engine = await tunedEngine({ yieldCores: false });
  const adapter = adapterDescription(engine);
  const started = new Date();
  const startLoad = loadavg();
  // Other work on the cores slows every row, and a CPU peer's threads most (one measured 60× slower at load 2.4 on 2 cores).
  if (startLoad[0] > 0.25 * cpus().length) console.error(`difrep bench: warning: load average ${startLoad[0].toFixed(2)} on ${cpus().length} cores: other work is running, and its share of the cores will be missing from every row (a CPU peer's most); bench an idle machine`);
  const cases = casesToRun(engine);
  const peer: PeerRun = flag('--no-peer') ? { label: 'peer', description: 'none (--no-peer)', results: new Map() } : runPeer(peerKind, cases);
  console.log(`peer: ${peer.description}`);
  // The CLI's engine gives a CPU adapter's threads the cores (nice 19 here; DIFREP_KEEP_PRIORITY=1 keeps 0): the header says which.
  await yieldCoresUnlessKept(engine);
  console.log(`difrep bench (${mode}) on ${adapter}; CPU ${cpus()[0]?.model} ×${cpus().length}; load average ${startLoad.map((l) => l.toFixed(2)).join(' ')}; main thread nice ${getPriority()}`);
  if (flag('--tune')) {
    // The same bounded search as `difrep tune` (src/cli/tune.ts).
    const { tuning } = await tuneKernels(engine, 60, (line) => console.log(line));
    const key = adapterName(engine);
    await storeTuning(key, tuning);
    console.log(`tuning stored for ${key}: ${JSON.stringify(tuning)}`);
    engine.dispose();
    const tuned = await tunedEngine();
    return report(tuned, adapter, started, startLoad, cases, peer);
  }
  return report(engine, adapter, started, startLoad, cases, peer);
}

/** The rows of this mode (and --only) on this engine's adapter; exits naming the rows when --only matches none. */
function casesToRun(engine: Engine): BenchCase[] {
  // `full: 'cpu'`: whole-model rows too slow for the default run on CPU adapters only.
  const inMode = CASES.filter((c) => (mode === 'quick' ? c.quick : mode === 'full' ? true : !(c.full === true || (c.full === 'cpu' && engine.cpuAdapter))));
  const cases = only ? inMode.filter((c) => only.test(`${c.family} ${c.name}`)) : inMode;
  if (!cases.length) {
    console.error(`--only ${only?.source}: no ${mode} row matches; the rows are:\n${inMode.map((c) => `  ${c.family} ${c.name}`).join('\n')}`);
    process.exit(2);
  }
  return cases;
}

/** A share of the peak; over 100 % only when the probe under-read the adapter (a busy moment), said so. */
function percentOfPeak(share: number): string {
  return share > 1 ? `${(100 * share).toFixed(0)}% (ceiling under-read)` : `${(100 * share).toFixed(0)}%`;
}

/** A row's share of the peaks: its GFLOP/s of the FMA peak, or its GB/s of the copy peak (or of the probe run next to it, when that read higher). */
function ofPeakOf(row: Row, peaks: Peaks): number | undefined {
  const ceiling = rowCeiling(row, peaks);
  return ceiling && (row.rate!.gflops ?? row.rate!.gbps!) / ceiling.value;
}

/** The ceiling a row is rated against, and how the table prints it. */
function rowCeiling(row: Row, peaks: Peaks): { value: number; text: string } | undefined {
  const of = (peak: number) => Math.max(peak, row.probedNext ?? 0);
  if (row.rate?.gflops !== undefined) return { value: of(peaks.gflops), text: `${of(peaks.gflops).toFixed(1)} GFLOP/s` };
  if (row.rate?.gbps !== undefined) return { value: of(peaks.gbps), text: `${of(peaks.gbps).toFixed(2)} GB/s` };
  return undefined;
}

async function report(engine: Engine, adapter: string, started: Date, startLoad: number[], cases: BenchCase[], peer: PeerRun) {
  const mainThreadNice = getPriority();
  const before: Peaks = await measurePeaks(engine);
  console.log(`measured peaks: FMA ${before.gflops.toFixed(1)} GFLOP/s, copy ${before.gbps.toFixed(2)} GB/s (read + write)`);
  const rows: Row[] = [];
  for (const c of cases) {
    let setup: Awaited<ReturnType<BenchCase['setup']>> | undefined;
    let m: Measurement;
    try {
      setup = await c.setup(engine);
      await engine.sync(); // the row's inputs uploaded: "first" is its compilation and first run
      m = await measure(engine, setup.run, { flops: c.flops, bytes: c.bytes, ...repetitions(c) });
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
    const p = peer.results.get(c);
    // A Winograd conv: effective GFLOP/s (the direct conv's FLOPs over the time), % of peak from the
    // FLOPs it performs.
    const executedGflops = algorithm && m.gflops !== undefined ? (algorithm.executedFlops / (c.flops ?? 1)) * m.gflops : m.gflops;
    const row: Row = {
      family: c.family, name: algorithm ? `${c.name} [${algorithm.name}]` : setup.path ? `${c.name} [${setup.path}]` : c.name, ours: m, target: c.target, peer: p,
      throughput: m.gflops !== undefined ? `${m.gflops.toFixed(2)} GFLOP/s${algorithm ? ' effective' : ''}` : m.gbps !== undefined ? `${m.gbps.toFixed(2)} GB/s` : c.images !== undefined ? `${((1000 * c.images) / m.medianMs).toPrecision(3)} img/s` : `${(1000 / m.medianMs).toFixed(2)} /s`,
      rate: executedGflops !== undefined ? { gflops: executedGflops } : m.gbps !== undefined ? { gbps: m.gbps } : undefined,
      ratio: p && !('error' in p) ? p.medianMs / m.medianMs : undefined,
    };
    if (row.rate) row.probedNext = await probeAgain(engine, before.config, row.rate.gflops !== undefined ? 'fma' : 'copy');
    rows.push(row);
    const ofPeak = ofPeakOf(row, before);
    console.log(`  ${c.family.padEnd(18)} ${row.name.padEnd(40)} ${fmt(m.medianMs).padStart(10)}  ${row.throughput.padStart(16)}${ofPeak !== undefined ? `  ${percentOfPeak(ofPeak).padStart(4)} of peak (provisional: the table rates against the probes after the rows too)` : ''}${row.ratio !== undefined ? `  ${row.ratio.toFixed(2)}× ${peer.label}` : p && 'error' in p ? `  peer: n/a (${p.error})` : ''}`);
  }
  // The peaks again, after the rows: a probe that a busy moment slowed must not sit below a kernel
  // and print it over 100 % (a copy probe once read 3.95 GB/s against Adam's 5.28); the higher of
  // each pair is the ceiling.
  const after: Peaks = await measurePeaks(engine);
  const peaks = higherPeaks(before, after);
  console.log(`measured peaks again: FMA ${after.gflops.toFixed(1)} GFLOP/s, copy ${after.gbps.toFixed(2)} GB/s; the higher of each pair is the ceiling`);
  for (const row of rows) {
    row.ofPeak = ofPeakOf(row, peaks);
    row.ceiling = rowCeiling(row, peaks)?.text;
  }
  const overhead = await dispatchOverhead(engine);
  const transfer = await transferBandwidth(engine);
  console.log(`dispatch overhead: ${overhead.oneSubmitUs.toFixed(1)} µs per dispatch batched in few submits, ${overhead.perSubmitUs.toFixed(1)} µs with one submit each`);
  console.log(`transfers (64 MiB): upload ${transfer.uploadGBps.toFixed(2)} GB/s, readback ${transfer.readbackGBps.toFixed(2)} GB/s`);
  console.log(`\n${table(rows, peer.label)}`);
  const result = { adapter, cpu: cpus()[0]?.model, cores: cpus().length, loadavg: startLoad, mainThreadNice, date: started.toISOString(), mode, only: only?.source, peaks: { gflops: peaks.gflops, gbps: peaks.gbps }, peer: peer.description, rows, overhead, transfer, tuning: engine.tuning };
  const json = value('--json');
  if (json) await writeFileAtomic(json, JSON.stringify(result, null, 2));
  const md = value('--md');
  if (md) {
    const text = `# difrep bench results\n\nAdapter: ${adapter}  \nCPU: ${result.cpu} ×${result.cores}  \nDate: ${result.date}  \nMode: ${mode}${only ? `, rows matching ${only}` : ''}; load average at start ${result.loadavg.map((l) => l.toFixed(2)).join(' ')}; main thread nice ${mainThreadNice} (19: the cores given to a CPU adapter's threads, yieldCoresToCpuAdapter)  \n` +
      `Measured peaks (each probe's fastest repetition, the higher of a run before and one after the rows; a row is rated against the higher of that and its probe run again right after it): FMA ${peaks.gflops.toFixed(1)} GFLOP/s (${peaks.config.fma.chains} vec4 chains, ${FMA_UNROLL} FMAs each per loop; an adapter that lowers fma to a multiply and an add, as lavapipe does in the kernels too, reads its multiply-plus-add ceiling, not the CPU's fused peak), copy ${peaks.gbps.toFixed(2)} GB/s (${peaks.config.copy.perThread} vec4s per invocation, ${peaks.config.copy.layout})  \nPeer: ${peer.description}; ours/${peer.label} = its median over ours (above 1: ours is faster)  \n` +
      `Timing: wall time around submit + onSubmittedWorkDone, one warm-up call (\"first\": compilation included, the inputs uploaded before it), median of the repetitions (the mean of the middle two for an even count; the peers' likewise)  \n` +
      `Tuning in use: ${JSON.stringify(engine.tuning)}  \n` +
      `GB/s count each input read once and each output written once (what any kernel must move); a row is rated against the ceiling beside it (the higher of the peak above and its probe run again right after it); over 100 % says "ceiling under-read" (the probe ran at a busy moment)  \n` +
      `Rows marked [Winograd F(2×2, 3×3)]: throughput is effective (the direct conv's FLOPs over the time), % of peak counts the FLOPs Winograd performs (4/9 of those for even sizes; transforms not counted)\n\n${table(rows, peer.label)}\n\n` +
      `Dispatch overhead: ${overhead.oneSubmitUs.toFixed(1)} µs per dispatch batched, ${overhead.perSubmitUs.toFixed(1)} µs with a submit each.  \n` +
      `Transfers (64 MiB): upload ${transfer.uploadGBps.toFixed(2)} GB/s, readback ${transfer.readbackGBps.toFixed(2)} GB/s.\n`;
    await writeFileAtomic(md, text);
  }
  engine.dispose();
}

await main();
process.exit(0);
