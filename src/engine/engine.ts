// The engine: one GPUDevice, its buffer pool, its pipelines, batched command recording, memory
// scopes and the autograd tape. Everything the library does goes through an Engine; there is no
// global state, so several engines (and other WebGPU libraries) can share a process or a device.

import { BindGroupCache, type BufferRange } from './bind-group-cache.ts';
import { BufferPool, type CreateBuffer, type PoolStats } from './buffer-pool.ts';
import { type AdapterClass, adapterClass, type AdapterDescription, type DeviceHandle, isCpuAdapter, requestDevice, wrapDevice } from './device.ts';
import { KernelRegistry } from './kernel-registry.ts';
import type { KernelSource, ParamsOf } from '../../kernels/kernel-source.ts';
import type { UniformLayout } from '../../kernels/uniform-layout.ts';
import { DEFAULT_MATMUL_TILING, type GemmPresets, tilingWorkgroupBytes } from '../../kernels/matmul.wgsl.ts';
import { ownedColumnFill } from '../../kernels/register-tile.ts';
import { SUBGROUP_GEMM_LANES } from '../../kernels/matmul-subgroup.wgsl.ts';
import { KernelProfiler, type KernelTime } from './profiler.ts';
import { StagingRing } from './staging.ts';
import { checkTuning, type Tuning } from './tuning.ts';
import { Tape } from './autograd.ts';
import { boundLabel, numel, type Shape, shapeString, Storage, Tensor } from './tensor.ts';

const TUNING_FIX = 'the settings are listed in src/engine/tuning.ts';

/**
 * Whether matmul and the convs take the subgroup GEMM: it can run (the `subgroups` feature,
 * subgroups of exactly 8 lanes) and either the adapter runs on the CPU (lavapipe, for which it is
 * written: a GPU wants more than 8 threads a workgroup) or the tuning asks for it; a tuning that
 * asks for it where it cannot run is an error, one with `enabled` 0 turns it off.
 */
function subgroupMatmulAvailable(device: GPUDevice, info: AdapterDescription, tuning: Tuning, cpuAdapter: boolean): boolean {
  const lanes = SUBGROUP_GEMM_LANES;
  const subgroups = device.features.has('subgroups');
  const fits = subgroups && info.subgroupMinSize === lanes && info.subgroupMaxSize === lanes;
  const wanted = tuning.matmulSubgroup?.enabled;
  if (wanted && !fits) {
    throw new Error(`tuning matmulSubgroup.enabled = ${wanted} needs subgroups of exactly ${lanes} lanes; this adapter has ${subgroups ? `subgroups of ${info.subgroupMinSize}–${info.subgroupMaxSize} lanes` : 'no subgroups feature'}: remove the setting`);
  }
  return fits && (wanted === undefined ? cpuAdapter : wanted !== 0);
}

/** A GPU validation, out-of-memory or internal error, carrying the labels Dawn reported. */
export class GpuError extends Error {
  constructor(kind: string, message: string) {
    super(`WebGPU ${kind} error: ${message}`);
    this.name = 'GpuError';
  }
}

export interface EngineOptions {
  /** Use this device (the engine never destroys it). Without one, the engine requests its own. */
  device?: GPUDevice;
  /** With `device`: the adapter it came from (its description picks kernel presets); alone, an error. */
  adapter?: GPUAdapter;
  /** Per-kernel-family tuning overrides (tile sizes, workgroup sizes), e.g. from `difrep tune` (./tuning.ts). */
  tuning?: Tuning;
  /**
   * Largest storage binding the engine will plan for (default: the device's
   * maxStorageBufferBindingSize). Lower it to make batch splitting kick in earlier.
   */
  maxBindingBytes?: number;
  /** Dispatches recorded before the engine submits on its own (default 64). */
  maxDispatchesPerSubmit?: number;
  /**
   * GPU commands (dispatches, copies, uploads) the engine lets pile up ahead of the GPU, counted
   * since it last saw the GPU finish (a read, `sync()`, `settle()`); recording one more throws
   * (default 32768). See `settle()`.
   */
  maxCommandsInFlight?: number;
}

export interface Binding {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

export interface Dispatch<L extends UniformLayout = UniformLayout> {
  kernel: KernelSource<L>;
  /** Storage buffers for @binding(1), @binding(2), ... in order. */
  bindings: (Binding | Tensor)[];
  /** The `var<uniform>` at @binding(0), by field name (the kernel's layout packs them). */
  params: ParamsOf<L>;
  workgroups: readonly [number, number?, number?];
}

const UNIFORM_SLOT = 256; // minUniformBufferOffsetAlignment is at most 256 on every adapter
const UNIFORM_ARENA_BYTES = 64 * 1024;
/**
 * Bind groups an engine keeps for reuse: a training step of the reference U-Net records about 1,500
 * dispatches. Lavapipe backs each bind group with a memory mapping of its own (see countCommand),
 * and a process dies past vm.max_map_count (65,530) of them: so an engine keeps at most 4,096
 * (five engines, each on a device of its own, keeping theirs and a sixth with 30,000 commands in
 * flight took 59,800 mappings; six keeping theirs and a seventh, past the limit), and never more
 * than an eighth of its maxCommandsInFlight, whose refusal bounds the backlog's share.
 */
const BIND_GROUP_CACHE_ENTRIES = 4096;
const DEFAULT_MAX_COMMANDS_IN_FLIGHT = 32768; // lavapipe crashed near 60,000 (see countCommand)

export class Engine {
  readonly device: GPUDevice;
  readonly handle: DeviceHandle;
  readonly pool: BufferPool;
  readonly kernels: KernelRegistry;
  readonly tape = new Tape(this);
  /** Per-kernel-family tuning overrides (./tuning.ts), read at each op; setTuning replaces them all, checked. */
  readonly tuning: Tuning;
  /** Largest storage binding, in bytes, that work is split to fit. */
  readonly maxBindingBytes: number;
  /** The adapter runs on the CPU (lavapipe, SwiftShader): row reductions use a thread per row. */
  readonly cpuAdapter: boolean;
  /** The adapter's family, for kernels whose best shape differs between them (device.ts). */
  readonly adapterClass: AdapterClass;
  /** The GEMM tile rule for this adapter (chooseGemmTiling): lavapipe's, the GPUs', or the portable one (other CPU adapters). */
  readonly gemmPresets: GemmPresets;
  /**
   * Row reductions may combine partial sums with subgroup operations: the device has the
   * `subgroups` feature and WGSL the `subgroup_id` builtin (so each subgroup's slot is known).
   */
  readonly subgroupReductions: boolean;
  /**
   * matmul, the Winograd GEMMs, 1×1 and direct convs run on the subgroup GEMM (where their extents
   * allow): a CPU adapter whose subgroups are exactly 8 lanes (lavapipe), unless the tuning says
   * otherwise (subgroupMatmulAvailable; tuning.ts, matmulSubgroup).
   */
  get subgroupMatmul(): boolean {
    return subgroupMatmulAvailable(this.device, this.handle.info, this.tuning, this.cpuAdapter);
  }
  private readonly maxDispatches: number;
  private readonly maxCommandsInFlight: number;

  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private dispatchesInBatch = 0;
  private uniformArena: GPUBuffer;
  private uniformData = new Uint8Array(UNIFORM_ARENA_BYTES);
  private uniformView = new DataView(this.uniformData.buffer);
  private uniformUsed = 0;
  private readonly staging: StagingRing;
  /** Upload buffers copied from in the batch being recorded: recycled once it is submitted. */
  private uploadsInBatch: GPUBuffer[] = [];
  private pendingErrors: Promise<(GPUError & { kind: string }) | null>[] = [];
  private lostReason: string | null = null;
  /** Set by the first GPU error a wait reports: the batch it was in was dropped, uploads included. */
  private failedReason: string | null = null;
  private tensorCounter = 0;
  /** Commands recorded since creation, and how many of the first ones the GPU is known to have run. */
  private commandsRecorded = 0;
  private commandsFinished = 0;
  private scopes: Set<Tensor>[] = [];
  private disposed = false;
  private profiler: KernelProfiler | null = null;
  /** Bind groups of the engine's own buffers, reused by dispatches over the same ranges. */
  private readonly bindGroups: BindGroupCache;

  /**
   * Replaces the whole tuning, checked as createEngine's option is (the subgroup GEMM included), e.g.
   * with a tuning cache's entry for the adapter this engine turned out to get.
   */
  setTuning(tuning: Tuning): void {
    const checked = checkTuning(structuredClone(tuning), 'Engine.setTuning', TUNING_FIX);
    this.checkTuningRuns(checked);
    for (const k of Object.keys(this.tuning) as (keyof Tuning)[]) delete this.tuning[k];
    Object.assign(this.tuning, checked);
  }

  /**
   * device.createBuffer inside the engine's error scopes: an out-of-memory is the engine's to
   * report (at its next read or sync), not the app's uncaptured error.
   */
  private readonly createBuffer: CreateBuffer = (d) => this.scoped(['out-of-memory', 'validation'], () => this.device.createBuffer(d));

  constructor(handle: DeviceHandle, options: EngineOptions = {}) {
    this.handle = handle;
    this.device = handle.device;
    this.pool = new BufferPool(this.createBuffer, this.device.limits.maxBufferSize);
    this.kernels = new KernelRegistry(this.device);
    this.staging = new StagingRing(this.createBuffer);
    // A copy: setTuning edits the engine's own, never the caller's object (other engines share it).
    this.tuning = options.tuning ? structuredClone(checkTuning(options.tuning, 'Engine: option tuning', TUNING_FIX)) : {};
    this.maxDispatches = options.maxDispatchesPerSubmit ?? 64;
    this.maxCommandsInFlight = options.maxCommandsInFlight ?? DEFAULT_MAX_COMMANDS_IN_FLIGHT;
    if (!Number.isInteger(this.maxCommandsInFlight) || this.maxCommandsInFlight < 1) {
      throw new RangeError(`maxCommandsInFlight must be a positive integer, got ${options.maxCommandsInFlight}`);
    }
    if (options.maxBindingBytes !== undefined && !(Number.isInteger(options.maxBindingBytes) && options.maxBindingBytes >= 4)) {
      throw new RangeError(`maxBindingBytes must be a whole number of bytes ≥ 4, got ${options.maxBindingBytes}`);
    }
    this.maxBindingBytes = Math.min(options.maxBindingBytes ?? Infinity, this.device.limits.maxStorageBufferBindingSize);
    this.cpuAdapter = isCpuAdapter(handle.info);
    this.adapterClass = adapterClass(handle.info);
    this.gemmPresets = this.adapterClass === 'llvmpipe' ? 'lavapipe' : this.cpuAdapter ? 'portable' : 'gpu';
    this.subgroupReductions = this.device.features.has('subgroups') && handle.wgslFeatures.has('subgroup_id');
    this.bindGroups = new BindGroupCache(Math.min(BIND_GROUP_CACHE_ENTRIES, Math.floor(this.maxCommandsInFlight / 8)));
    this.checkTuningRuns(this.tuning);
    this.uniformArena = this.createBuffer({
      size: UNIFORM_ARENA_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: 'difrep uniforms',
    });
    // A weak reference: the caller's device outlives engines, and must not keep disposed ones alive.
    const self = new WeakRef(this);
    this.device.lost.then((info) => {
      const engine = self.deref();
      if (engine && !engine.disposed) engine.lostReason = `${info.reason}: ${info.message}`;
    });
  }

  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  hasFeature(name: GPUFeatureName): boolean {
    return this.device.features.has(name);
  }

  nextTensorId(): number {
    return ++this.tensorCounter;
  }

  // ---------------------------------------------------------------- tensors and memory scopes

  /** An uninitialised tensor (contents undefined until a kernel writes it). */
  empty(shape: Shape, label = 'tensor'): Tensor {
    this.checkAlive();
    label = boundLabel(label);
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new RangeError(`${label}: invalid shape ${shapeString(shape)}`);
    }
    const bytes = numel(shape) * 4;
    const buffer = this.pool.acquire(bytes, label);
    return new Tensor(this, shape, new Storage(buffer, bytes, (b) => this.pool.release(b)), label);
  }

  /** A tensor with the given values (row-major). */
  tensor(data: ArrayLike<number>, shape: Shape, label = 'tensor'): Tensor {
    const n = numel(shape);
    if (data.length !== n) {
      throw new RangeError(`${label}: ${data.length} values given for shape ${shapeString(shape)} (${n} expected)`);
    }
    const t = this.empty(shape, label);
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
    this.writeBuffer(t.buffer, 0, f32);
    return t;
  }

  /**
   * A tensor over the caller's own buffer (f32, row-major, from byte 0; usage STORAGE and COPY_SRC:
   * kernels bind it, and the engine copies rows out of it when it splits a batch and to read it
   * back). No copy: kernels read and write that buffer when the engine next submits its work, so
   * call `flush()` before your own queue writes or reads the buffer (a queue.writeBuffer lands
   * before work still unsubmitted; an optimizer step updates a parameter in place). The engine
   * never destroys it, not even in dispose().
   */
  fromBuffer(buffer: GPUBuffer, shape: Shape, label = buffer.label || 'caller buffer'): Tensor {
    this.checkAlive();
    const bytes = numel(shape) * 4;
    const needed = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
    if ((buffer.usage & needed) !== needed) {
      // Without COPY_SRC, the first copy (a batch split into chunks) fails GPU validation, which drops every command of its submit: zeros, not features.
      throw new RangeError(`${label}: the buffer needs GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC to be used as a tensor (its usage is ${buffer.usage})`);
    }
    if (buffer.mapState !== undefined && buffer.mapState !== 'unmapped') throw new RangeError(`${label}: the buffer is ${buffer.mapState}; unmap it before using it as a tensor (a mapped buffer cannot be used by the GPU)`);
    if (buffer.size < bytes) {
      throw new RangeError(`${label}: shape ${shapeString(shape)} needs ${bytes} bytes of f32, the buffer has ${buffer.size}`);
    }
    return new Tensor(this, shape, new Storage(buffer, bytes, () => {}), label);
  }

  /**
   * Copies `t` into a new buffer that belongs to the caller (usage STORAGE | COPY_SRC | COPY_DST,
   * or as given): the engine forgets it, so it outlives `t` and `dispose()`, and the caller
   * destroys it. The copy is submitted before this returns, so later submits see its contents.
   */
  toBuffer(t: Tensor, usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, label = `difrep output ${t.label}`): GPUBuffer {
    this.checkAlive();
    this.checkOwn(t, 'toBuffer');
    // WebGPU allows MAP_READ with COPY_DST only: anything else made an invalid buffer, its error sent
    // to the app's handler and the batch that copied into it dropped.
    if (usage & GPUBufferUsage.MAP_READ && usage & ~(GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST)) {
      throw new RangeError(`toBuffer: usage ${usage} combines MAP_READ with other usages; WebGPU allows MAP_READ with COPY_DST only (read the tensor with read(), or map a MAP_READ | COPY_DST buffer)`);
    }
    // MAP_WRITE goes with COPY_SRC only, and the copy into the buffer needs COPY_DST.
    if (usage & GPUBufferUsage.MAP_WRITE) {
      throw new RangeError(`toBuffer: usage ${usage} includes MAP_WRITE, which WebGPU allows with COPY_SRC only, and the copy into the buffer needs COPY_DST; write the tensor's values into a buffer of your own instead`);
    }
    const buffer = this.createBuffer({ size: Math.max(4, t.byteLength), usage: usage | GPUBufferUsage.COPY_DST, label });
    this.copyBuffer(t.buffer, 0, buffer, 0, t.byteLength); // f32: always a multiple of 4 bytes
    this.flush();
    return buffer;
  }

  zeros(shape: Shape, label = 'zeros'): Tensor {
    const t = this.empty(shape, label);
    this.fill(t, 0);
    return t;
  }

  /** Sets every element of `t` to zero (ordered with the recorded work). */
  fill(t: Tensor, value: 0): void {
    this.checkOwn(t, 'fill');
    if (value !== 0) throw new Error('fill supports 0 only');
    // A fromBuffer tensor the caller made without COPY_DST: clearing it would fail the engine for good.
    if (!(t.buffer.usage & GPUBufferUsage.COPY_DST)) throw new RangeError(`fill ${t.label}: its buffer was not created with GPUBufferUsage.COPY_DST (create a buffer given to fromBuffer with COPY_DST to have it written)`);
    this.countCommand(`fill ${t.label}`);
    this.endPass();
    this.getEncoder().clearBuffer(t.buffer, 0, Math.ceil(t.byteLength / 4) * 4);
    t.markWritten();
  }

  /**
   * A tensor sharing `t`'s buffer with another shape of the same size (no copy). Recorded on the
   * tape like any op when t needs a gradient (the gradient is viewed back to t's shape), as `op`.
   */
  view(t: Tensor, shape: Shape, label = t.label, op = 'view'): Tensor {
    this.checkOwn(t, 'view');
    if (numel(shape) !== t.size) {
      throw new RangeError(`cannot view ${t.label} ${shapeString(t.shape)} as ${shapeString(shape)}: sizes differ`);
    }
    void t.buffer; // a disposed tensor: "used after dispose", not a retain of a buffer since handed on
    t.storage.retain();
    const y = new Tensor(this, shape, t.storage, label);
    this.tape.record(op, [t], [y], [], ([g]) => [this.view(g!, t.shape)]);
    return y;
  }

  track(t: Tensor): void {
    this.scopes[this.scopes.length - 1]?.add(t);
  }

  /**
   * Runs `fn` and disposes every tensor it created except those reachable from its result
   * (a Tensor, or arrays/objects of them); all of them when fn throws, and then the ops it recorded
   * too (Tape.dropSince). Kept tensors belong to the enclosing scope.
   */
  tidy<T>(fn: () => T): T {
    const scope = new Set<Tensor>();
    this.scopes.push(scope);
    const tape = this.tape.mark();
    let result: T;
    try {
      result = fn();
    } catch (err) {
      // What fn made before it threw (an op's output included) is no one's: a caller that catches
      // and goes on (a smaller batch) would otherwise keep it until the engine is disposed, and
      // the ops it recorded, with what they saved, until a backward that inference never calls.
      for (const t of scope) t.dispose();
      this.tape.dropSince(tape);
      throw err;
    } finally {
      this.scopes.pop();
    }
    if (isPromiseLike(result)) {
      // What fn made before its first await goes to the enclosing scope, as an untidied op's
      // output would: fn may still use it, and an enclosing tidy then frees it.
      for (const t of scope) this.track(t);
      throw new Error('tidy: fn returned a promise; tidy is synchronous (its scope closes when fn returns): await inside, then tidy each synchronous part');
    }
    const keep = new Set<Tensor>();
    collectTensors(result, keep);
    for (const t of scope) {
      if (keep.has(t)) this.track(t);
      else t.dispose();
    }
    return result;
  }

  /** How many items of `bytes` each one storage binding holds: at least 1 (one over it fails clearly where it is bound). */
  perBinding(bytes: number): number {
    return Math.max(1, Math.floor(this.maxBindingBytes / bytes));
  }

  /** Exempts `t` from the current tidy scope. */
  keep<T extends Tensor>(t: T): T {
    for (const s of this.scopes) s.delete(t);
    return t;
  }

  /** Runs `fn` without recording ops on the autograd tape. */
  noGrad<T>(fn: () => T): T {
    const result = this.tape.paused(fn);
    // Recording resumed at fn's first await: what it ran after was recorded.
    if (isPromiseLike(result)) {
      throw new Error('noGrad: fn returned a promise; noGrad is synchronous (recording resumes when fn returns, at its first await): await inside, then noGrad each synchronous part');
    }
    return result;
  }

  // ---------------------------------------------------------------- recording and submitting

  // Why the backlog is bounded: Dawn frees what a submitted command holds (its bind group, which
  // lavapipe backs with a memory mapping of its own; upload staging; uniform uploads) only after
  // the GPU has run it and the device has ticked, which in Node happens on the event loop.
  // Synchronous code records far faster than a CPU adapter executes (a U-Net sampling step: ~10x),
  // so a loop that never waits grows the backlog every iteration until the process runs out of
  // memory mappings (vm.max_map_count, 65530) near 60,000 commands (fewer by the bind groups the
  // process's engines keep: BIND_GROUP_CACHE_ENTRIES) and lavapipe dies with SIGSEGV inside
  // vkCreateDescriptorPool. Long loops await settle(); this count turns a missing one into an error
  // instead of a crash.
  private countCommand(label: string): void {
    if (this.commandsRecorded - this.commandsFinished >= this.maxCommandsInFlight) {
      throw new Error(
        `${label}: ${this.maxCommandsInFlight} GPU commands recorded without waiting for the GPU to run them; ` +
          'a long loop must await engine.settle() (or sync(), or read a result) in every iteration, and where one ' +
          'step alone records this many (a U-Net over a large batch, run in many chunks because few images fit a ' +
          'storage binding), give a smaller batch (or raise the createEngine option maxCommandsInFlight where the ' +
          'adapter allows: lavapipe crashed near 60,000, counting the bind groups each engine keeps, memoryStats().bindGroups)',
      );
    }
    this.commandsRecorded++;
  }

  /** Everything recorded before `recorded` was counted is known to have run on the GPU. */
  private markFinished(recorded: number): void {
    this.commandsFinished = Math.max(this.commandsFinished, recorded);
  }

  /**
   * Call once per iteration of a long loop that reads nothing back (sampling steps, training
   * steps): submits what the iteration recorded, then returns at once while the GPU is less than
   * maxCommandsInFlight / 8 commands behind, otherwise waits for it like sync() (and throws its
   * errors). The GPU keeps working while the next iterations are recorded, and the backlog stays
   * bounded. Each iteration starts a command batch of its own, so its dispatches take the same
   * uniform slots, and reuse the same bind groups, as the iteration before (bindGroupOf).
   */
  async settle(): Promise<void> {
    this.flush();
    if (this.commandsRecorded - this.commandsFinished > this.maxCommandsInFlight / 8) await this.sync();
  }

  private getEncoder(): GPUCommandEncoder {
    this.checkAlive();
    this.encoder ??= this.device.createCommandEncoder({ label: 'difrep batch' });
    return this.encoder;
  }

  /**
   * Runs `fn` (device calls that can fail) inside error scopes pushed and popped around it alone,
   * so the engine catches its own errors and no other code's on the same device (the app's, another
   * engine's), and keeps them for the next read or sync. Commands in an encoder report at finish().
   */
  private scoped<T>(kinds: readonly GPUErrorFilter[], fn: () => T): T {
    for (const k of kinds) this.device.pushErrorScope(k);
    try {
      return fn();
    } finally {
      for (const kind of [...kinds].reverse()) this.pendingErrors.push(this.device.popErrorScope().then((e) => (e ? Object.assign(e, { kind }) : null)));
    }
  }

  /** A tuning that asks for the subgroup GEMM where it cannot run, or for workgroups the device cannot run, throws. */
  private checkTuningRuns(tuning: Tuning): void {
    subgroupMatmulAvailable(this.device, this.handle.info, tuning, this.cpuAdapter);
    checkTilesFit(tuning, this.device.limits);
  }

  /** Ops take tensors of one engine: another's may not be uploaded yet, and its pool may hand the buffer on. */
  checkOwn(t: Tensor, where: string): void {
    if (t.engine !== this) throw new Error(`${where}: tensor "${t.label}" belongs to another Engine; an op takes tensors of one engine (copy it across with toBuffer and fromBuffer)`);
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /** Records one compute dispatch. Submits on its own every `maxDispatchesPerSubmit` dispatches. */
  dispatch<L extends UniformLayout>(d: Dispatch<L>): void {
    const [x, y = 1, z = 1] = d.workgroups;
    // Nothing to run (an empty batch): no bind group either, whose vec4 bindings an empty tensor could not fill.
    if (x <= 0 || y <= 0 || z <= 0) return;
    // Dawn would report this only at the next sync, and drop every command of the batch with it.
    const limit = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (x > limit || y > limit || z > limit) {
      throw new RangeError(`${d.kernel.key}: ${x} × ${y} × ${z} workgroups, over this device's maxComputeWorkgroupsPerDimension (${limit}) in a dimension`);
    }
    if (d.kernel.params.byteLength > UNIFORM_SLOT) throw new Error(`${d.kernel.key}: uniforms over ${UNIFORM_SLOT} bytes`);
    for (const b of d.bindings) if (b instanceof Tensor) this.checkOwn(b, d.kernel.key);
    // Before anything is packed or counted: a refused dispatch leaves no command in flight.
    const maxBinding = this.maxBindingBytes;
    const bindings = d.bindings.map((b) => {
      const binding = b instanceof Tensor ? { buffer: b.buffer, offset: 0, size: Math.max(4, b.byteLength) } : b;
      const bytes = binding.size ?? binding.buffer.size;
      if (bytes > maxBinding) {
        const what = b instanceof Tensor ? `${b.label} ${shapeString(b.shape)}` : binding.buffer.label;
        throw new RangeError(`${d.kernel.key}: ${what} needs a ${bytes} byte binding, over the largest storage binding (${maxBinding}); split the batch`);
      }
      return binding;
    });
    if (this.uniformUsed + UNIFORM_SLOT > UNIFORM_ARENA_BYTES) this.flush();
    const uniformOffset = this.uniformUsed;
    // Packed straight into the arena's next slot, which is taken only once the dispatch records.
    d.kernel.params.packInto(this.uniformView, uniformOffset, d.params, d.kernel.key);
    this.countCommand(d.kernel.key);
    // A pipeline compiles (and can fail) once; after that the lookup needs no error scope.
    const pipelineOf = () => this.kernels.get(d.kernel.key, () => d.kernel.code);
    const pipeline = this.kernels.has(d.kernel.key) ? pipelineOf() : this.scoped(ALL_ERRORS, pipelineOf);
    const encoder = this.getEncoder();
    this.uniformUsed += UNIFORM_SLOT;
    const bindGroup = this.bindGroupOf(d.kernel.key, pipeline, [
      { buffer: this.uniformArena, offset: uniformOffset, size: UNIFORM_SLOT },
      ...bindings.map((b) => ({ buffer: b.buffer, offset: b.offset ?? 0, size: b.size ?? b.buffer.size - (b.offset ?? 0) })),
    ]);
    const timed = this.profiler?.nextPass(d.kernel.key);
    if (timed) this.endPass();
    if (!this.pass) this.pass = encoder.beginComputePass(timed ?? { label: 'difrep' });
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bindGroup);
    this.pass.dispatchWorkgroups(x, y, z);
    if (timed) this.endPass();
    if (++this.dispatchesInBatch >= this.maxDispatches || this.profiler?.full) this.flush();
  }

  /**
   * The bind group of `pipeline` over `ranges` (@binding(0) first): the one made before for the same
   * ranges where every buffer is the engine's own (the uniform arena, the pool's live buffers; the
   * cache is emptied whenever the pool destroys buffers), so it never keeps a caller's buffer alive;
   * a new one otherwise.
   */
  private bindGroupOf(kernelKey: string, pipeline: GPUComputePipeline, ranges: BufferRange[]): GPUBindGroup {
    const own = ranges.every((r) => r.buffer === this.uniformArena || this.pool.isLive(r.buffer));
    const key = own ? this.bindGroups.key(kernelKey, ranges) : null;
    const known = key === null ? undefined : this.bindGroups.get(key);
    if (known) return known;
    const entries = ranges.map((resource, binding) => ({ binding, resource }));
    const group = this.scoped(['validation'], () => this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries, label: `difrep ${kernelKey}` }));
    if (key !== null) this.bindGroups.set(key, group);
    return group;
  }

  /** Copies `data` into `buffer` at `offset`, ordered after everything recorded so far. */
  writeBuffer(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    // WebGPU copies whole 4-byte words from 4-byte offsets: a ragged tail was padded with whatever
    // the reused staging buffer held, and an unaligned offset failed the engine for good.
    if (data.byteLength % 4 !== 0 || offset % 4 !== 0) {
      throw new RangeError(`writeBuffer to ${buffer.label}: ${data.byteLength} bytes at offset ${offset}; both must be multiples of 4 (write f32 or 32-bit data)`);
    }
    if (!(buffer.usage & GPUBufferUsage.COPY_DST)) throw new RangeError(`writeBuffer to ${buffer.label}: the buffer was not created with GPUBufferUsage.COPY_DST (create a buffer given to fromBuffer with COPY_DST to have it written)`);
    const bytes = data.byteLength;
    if (bytes === 0) return;
    this.countCommand(`upload to ${buffer.label}`);
    const staging = this.scoped(['out-of-memory', 'validation'], () => this.staging.uploadBuffer(bytes));
    new Uint8Array(staging.getMappedRange(0, bytes)).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    staging.unmap();
    this.endPass();
    this.getEncoder().copyBufferToBuffer(staging, 0, buffer, offset, bytes);
    this.uploadsInBatch.push(staging);
  }

  copyBuffer(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    // Checked before recording: WebGPU would fail the engine for good (offsets and sizes in 4-byte
    // words; a caller's buffer given to fromBuffer without COPY_DST, which an optimizer step needs).
    if (srcOffset % 4 !== 0 || dstOffset % 4 !== 0 || bytes % 4 !== 0) {
      throw new RangeError(`copy from ${src.label} to ${dst.label}: ${bytes} bytes from offset ${srcOffset} to offset ${dstOffset}; all three must be multiples of 4`);
    }
    if (!(src.usage & GPUBufferUsage.COPY_SRC)) throw new RangeError(`copy from ${src.label}: the buffer was not created with GPUBufferUsage.COPY_SRC`);
    if (!(dst.usage & GPUBufferUsage.COPY_DST)) throw new RangeError(`copy to ${dst.label}: the buffer was not created with GPUBufferUsage.COPY_DST (an optimizer step writes a parameter in place: create a buffer given to fromBuffer with COPY_DST too)`);
    this.countCommand(`copy to ${dst.label}`);
    this.endPass();
    this.getEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Submits everything recorded so far. Errors surface at the next `sync()` or read. */
  flush(): void {
    if (!this.encoder) return;
    this.endPass();
    const encoder = this.encoder;
    this.scoped(ALL_ERRORS, () => {
      if (this.uniformUsed > 0) this.device.queue.writeBuffer(this.uniformArena, 0, this.uniformData, 0, this.uniformUsed);
      const collectTimes = this.profiler?.resolve(encoder);
      this.device.queue.submit([encoder.finish()]);
      collectTimes?.();
    });
    this.encoder = null;
    // Remapping an upload buffer whose creation failed is an error of the engine's, not the app's.
    for (const b of this.uploadsInBatch) this.scoped(['validation'], () => this.staging.recycle(b));
    this.uploadsInBatch = [];
    this.uniformUsed = 0;
    this.dispatchesInBatch = 0;
  }

  /** Submits pending work, waits for the GPU, and throws the first GPU error since the last sync. */
  async sync(): Promise<void> {
    this.checkAlive();
    this.flush();
    const recorded = this.commandsRecorded;
    const errors = this.takePendingErrors();
    await this.device.queue.onSubmittedWorkDone();
    this.markFinished(recorded);
    await this.throwFirstAndFail(errors);
    this.checkDevice();
  }

  /**
   * The errors of everything submitted so far, for the caller that waits on that work: a read or
   * sync started later takes the later ones, so one caller's result is not failed by another's op.
   */
  private takePendingErrors(): Promise<(GPUError & { kind: string }) | null>[] {
    const taken = this.pendingErrors;
    this.pendingErrors = [];
    return taken;
  }

  /** Reads `bytes` bytes of `buffer` back to the CPU. */
  async readBuffer(buffer: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    return (await this.readBuffers([{ buffer, offset, bytes }]))[0];
  }

  /**
   * Reads several byte ranges back through one staging buffer and one wait: a loop that keeps its
   * small results on the GPU (a training epoch's losses) pays for one round trip instead of one each.
   */
  async readBuffers(ranges: readonly { buffer: GPUBuffer; offset: number; bytes: number }[]): Promise<ArrayBuffer[]> {
    this.checkAlive(); // before the staging buffer: one made for a disposed engine was never destroyed
    // Checked before recording: WebGPU would fail the engine for good.
    for (const r of ranges) {
      if (r.offset % 4 !== 0) throw new RangeError(`read of ${r.buffer.label}: offset ${r.offset} is not a multiple of 4 (WebGPU copies 4-byte words)`);
      if (!(r.buffer.usage & GPUBufferUsage.COPY_SRC)) throw new RangeError(`read of ${r.buffer.label}: the buffer was not created with GPUBufferUsage.COPY_SRC`);
      if (r.offset + Math.ceil(r.bytes / 4) * 4 > r.buffer.size) throw new RangeError(`read of ${r.buffer.label}: ${r.bytes} bytes from offset ${r.offset} run past its ${r.buffer.size} bytes`);
    }
    const sizes = ranges.map((r) => Math.ceil(r.bytes / 4) * 4);
    const total = sizes.reduce((a, b) => a + b, 0);
    // One staging buffer holds at most maxBufferSize: a larger read goes in groups that fit (three
    // 96 MiB tensors asked for 288 MiB where 256 MiB was the limit, and the batch was dropped).
    if (total > this.device.limits.maxBufferSize && ranges.length > 1) {
      const groups: (typeof ranges[number])[][] = [[]];
      let used = 0;
      ranges.forEach((r, i) => {
        if (used + sizes[i] > this.device.limits.maxBufferSize && groups[groups.length - 1].length) (groups.push([]), (used = 0));
        groups[groups.length - 1].push(r);
        used += sizes[i];
      });
      // Every group's copies are recorded now (each call runs up to its first await): copied after the
      // first group's wait, a later group read what the caller wrote or reallocated since the call.
      return (await Promise.all(groups.map((g) => this.readBuffers(g)))).flat();
    }
    // Counted but never refused: a read waits for the GPU at once, which is what the limit asks for.
    if (total > 0) this.commandsRecorded++;
    const staging = this.staging.readbackBuffer(Math.max(4, total));
    if (total > 0) this.endPass();
    let at = 0;
    ranges.forEach((r, i) => {
      if (sizes[i] > 0) this.getEncoder().copyBufferToBuffer(r.buffer, r.offset, staging, at, sizes[i]);
      at += sizes[i];
    });
    this.flush();
    const recorded = this.commandsRecorded;
    // Mapping a buffer that could not be made is a validation error of its own: the engine's, not the app's.
    const mapping = this.scoped(['validation'], () => staging.mapAsync(GPUMapMode.READ, 0, Math.max(4, total)));
    const errors = this.takePendingErrors();
    try {
      await mapping;
    } catch (e) {
      staging.destroy();
      await this.throwFirstAndFail(errors);
      // A mapping aborted by a lost device (an AbortError with no message): device.lost settles a
      // moment later, so give it that moment and say what happened.
      await Promise.race([this.device.lost, new Promise((r) => setTimeout(r, 100))]);
      await new Promise((r) => setTimeout(r, 0));
      this.checkDevice();
      throw e;
    }
    // The mapping waited for the copies, and the queue ran everything submitted before them first.
    if (total > 0) this.markFinished(recorded);
    const mapped = staging.getMappedRange(0, Math.max(4, total));
    at = 0;
    const out = ranges.map((r, i) => {
      const part = mapped.slice(at, at + r.bytes);
      at += sizes[i];
      return part;
    });
    staging.unmap();
    this.staging.returnReadback(staging);
    await this.throwFirstAndFail(errors);
    this.checkDevice();
    return out;
  }

  /** The values of several tensors, read back together (one round trip). */
  async readTensors(tensors: readonly Tensor[]): Promise<Float32Array[]> {
    for (const t of tensors) this.checkOwn(t, 'read');
    const parts = await this.readBuffers(tensors.map((t) => ({ buffer: t.buffer, offset: 0, bytes: t.byteLength })));
    return parts.map((b) => new Float32Array(b));
  }

  // ---------------------------------------------------------------- profiling

  /** Starts timing every dispatch per kernel (needs the timestamp-query feature). */
  startProfiling(): void {
    if (!this.hasFeature('timestamp-query')) throw new Error('profiling needs the adapter feature timestamp-query');
    this.flush();
    this.profiler ??= this.scoped(['out-of-memory', 'validation'], () => new KernelProfiler(this.device, this.maxDispatches, this.createBuffer));
  }

  /** While profiling, attributes the following dispatches to `tag` (e.g. a model block). */
  profileTag(tag: string): void {
    if (this.profiler) this.profiler.tag = tag;
  }

  /** Stops timing and returns GPU milliseconds per kernel and tag, slowest first. */
  async stopProfiling(): Promise<KernelTime[]> {
    if (!this.profiler) return [];
    this.flush();
    const profiler = this.profiler;
    this.profiler = null;
    try {
      return await profiler.report();
    } finally {
      profiler.destroy();
    }
  }

  // ---------------------------------------------------------------- lifetime

  private checkAlive(): void {
    if (this.disposed) throw new Error('this Engine was disposed');
    this.checkDevice();
    if (this.failedReason) {
      throw new GpuError('earlier', `${this.failedReason} — WebGPU dropped the whole batch of work that error was in, so tensors computed or uploaded since this engine's last successful read or sync hold no data (they would read as zeros): create a new engine and load the weights again`);
    }
  }

  /**
   * Throws the first of `errors` (as a GpuError of its kind) and marks the engine failed: the batch
   * an error was in was dropped whole, and what it computed or uploaded (other tensors, weights)
   * would read as zeros, silently, on every later use.
   */
  private async throwFirstAndFail(errors: Promise<(GPUError & { kind: string }) | null>[]): Promise<void> {
    try {
      await throwFirst(errors);
    } catch (err) {
      this.failedReason ??= (err as Error).message;
      throw err;
    }
  }

  /** After a wait: a lost device fails what waited (a dispose in the meantime does not: the data arrived). */
  private checkDevice(): void {
    if (this.lostReason) throw new GpuError('device-lost', this.lostReason);
  }

  /**
   * Gives the device back the buffers the pool holds for reuse (memoryStats().pooledBytes), after
   * submitting the work recorded so far. The pool keeps each size class's freed buffers, so a run
   * of phases with other shapes (extraction, then a head's training) holds the sum of the phases'
   * memory, not the largest phase's: call it between them. Tensors in use stay.
   */
  releasePooled(): void {
    this.flush();
    this.pool.trim();
    this.bindGroups.clear();
  }

  /** Buffer pool figures, compiled pipelines, bind groups kept for reuse, and GPU commands recorded but not yet seen to finish. */
  memoryStats(): PoolStats & { pipelines: number; bindGroups: number; commandsInFlight: number } {
    return { ...this.pool.getStats(), pipelines: this.kernels.size, bindGroups: this.bindGroups.size, commandsInFlight: this.commandsRecorded - this.commandsFinished };
  }

  /**
   * Frees every buffer the engine made (once the GPU has finished the work already submitted, so
   * buffers handed out by toBuffer() still receive their copies); destroys the device only if the
   * engine created it. The returned promise settles when that is done, and rejects with the first
   * GPU error of work no read or sync has checked (a toBuffer copy's): await it, or sync() first.
   */
  dispose(): Promise<void> {
    if (this.disposed) return Promise.resolve();
    this.flush();
    this.disposed = true;
    this.profiler?.destroy();
    const errors = this.takePendingErrors();
    return this.device.queue.onSubmittedWorkDone().catch(() => {}).then(() => {
      this.pool.destroyAll();
      this.bindGroups.clear();
      this.staging.destroy();
      this.uniformArena.destroy();
      if (this.handle.owned) this.device.destroy();
      return throwFirst(errors);
    });
  }
}

const ALL_ERRORS: readonly GPUErrorFilter[] = ['out-of-memory', 'internal', 'validation'];

/** The most outputs per thread (tm · tn) a tuned GEMM tile may ask for: 16 × 16, as the largest built-in tile. */
const MAX_OUTPUTS_PER_THREAD = 256;

/**
 * Tuned tiles must fit the device and build (Dawn would say so only at the first read, dropping the
 * batch; a conv kernel only at the first conv large enough to use them): each tiling as the kernels
 * see it, the generic tile (DEFAULT_MATMUL_TILING) with the tuned sizes over it.
 */
function checkTilesFit(tuning: Tuning, limits: GPUSupportedLimits): void {
  for (const family of ['matmul', 'conv2d'] as const) {
    if (!tuning[family] || !Object.keys(tuning[family]).length) continue;
    const t = { ...DEFAULT_MATMUL_TILING, ...tuning[family] };
    if (t.wgX > limits.maxComputeWorkgroupSizeX || t.wgY > limits.maxComputeWorkgroupSizeY || t.wgX * t.wgY > limits.maxComputeInvocationsPerWorkgroup) {
      throw new RangeError(`tuning ${family}: workgroups of ${t.wgX} × ${t.wgY} threads (with the generic tile's sizes for those not given) do not fit this device (at most ${limits.maxComputeWorkgroupSizeX} × ${limits.maxComputeWorkgroupSizeY}, ${limits.maxComputeInvocationsPerWorkgroup} in all): choose smaller wgX/wgY`);
    }
    if (tilingWorkgroupBytes(t) > limits.maxComputeWorkgroupStorageSize) {
      throw new RangeError(`tuning ${family}: ${JSON.stringify(t)} stages ${tilingWorkgroupBytes(t)} bytes of workgroup memory, over this device's ${limits.maxComputeWorkgroupStorageSize}: choose smaller tiles`);
    }
    // Each thread's tm × tn outputs are unrolled into that many accumulators: 24 × 24 took 42 s to
    // compile on lavapipe, 64 × 64 never finished, 2048 × 2048 overflowed the WGSL string.
    if (t.tm * t.tn > MAX_OUTPUTS_PER_THREAD) {
      throw new RangeError(`tuning ${family}: ${t.tm} × ${t.tn} outputs per thread, over the ${MAX_OUTPUTS_PER_THREAD} a kernel may unroll (the largest built-in tile and \`difrep tune\` candidate): choose smaller tm/tn`);
    }
    if (family === 'conv2d') {
      try {
        ownedColumnFill(t);
      } catch (err) {
        throw new RangeError(`tuning conv2d: ${JSON.stringify(t)} cannot build the conv kernels (${(err as Error).message}): give wgX·wgY, wgX·tn and tk as powers of two`);
      }
    }
  }
}

/** Throws the first of `errors` that is an error (as a GpuError of its kind). */
async function throwFirst(errors: Promise<(GPUError & { kind: string }) | null>[]): Promise<void> {
  const first = (await Promise.all(errors)).find((e) => e);
  if (first) throw new GpuError(first.kind, first.message);
}

/** What an async function returns: tidy and noGrad take synchronous functions only. */
function isPromiseLike(value: unknown): boolean {
  return !!value && typeof (value as { then?: unknown }).then === 'function';
}

function collectTensors(value: unknown, into: Set<Tensor>): void {
  if (value instanceof Tensor) into.add(value);
  else if (Array.isArray(value)) for (const v of value) collectTensors(v, into);
  else if (value instanceof Map) for (const v of value.values()) collectTensors(v, into);
  else if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collectTensors(v, into);
  }
}

/** Creates an engine on the caller's device, or on a device it requests itself. */
export async function createEngine(options: EngineOptions = {}): Promise<Engine> {
  if (options.tuning) checkTuning(options.tuning, 'createEngine: option tuning', TUNING_FIX); // before a device exists
  if (options.adapter && !options.device) throw new RangeError('createEngine: `adapter` names the adapter of the `device` option; to run on an adapter of your choosing, request its device and pass both');
  if (options.device && typeof (globalThis as { GPUBufferUsage?: unknown }).GPUBufferUsage === 'undefined') {
    // Browsers and Deno define WebGPU's globals; Dawn for Node leaves them to whoever creates its instance.
    throw new Error("createEngine: WebGPU's globals (GPUBufferUsage, GPUMapMode, …) are not defined in this runtime: with Dawn for Node, run `Object.assign(globalThis, (await import('webgpu')).globals)` before creating the device you pass");
  }
  const handle = options.device ? await wrapDevice(options.device, options.adapter) : await requestDevice();
  return new Engine(handle, options);
}
