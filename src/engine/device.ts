// The one place that finds a WebGPU device: Node (Dawn through the `webgpu` package), Deno and
// browsers (`navigator.gpu`), or a GPUDevice handed in by an embedding application.

export const SETUP_HINT =
  'Run `npm run setup` (installs Mesa >= 25 lavapipe from bookworm-backports on Debian 12 and prints the adapter it finds).';

/** Thrown when no WebGPU adapter or device can be had. */
export class NoAdapterError extends Error {
  constructor(detail: string) {
    super(`No WebGPU adapter: ${detail}. ${SETUP_HINT}`);
    this.name = 'NoAdapterError';
  }
}

export interface AdapterDescription {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  features: string[];
  limits: Record<string, number>;
  /** The adapter's subgroup sizes, smallest and largest (0 where the runtime does not say). */
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
}

export interface DeviceHandle {
  device: GPUDevice;
  adapter?: GPUAdapter;
  /** Human-readable facts about the adapter (empty strings where the runtime hides them). */
  info: AdapterDescription;
  /** True when this module created the device (and may destroy it). */
  owned: boolean;
  /** The WGSL language features of the runtime (navigator.gpu.wgslLanguageFeatures), e.g. subgroup_id. */
  wgslFeatures: ReadonlySet<string>;
}

const languageFeatures = (gpu: GPU | undefined): ReadonlySet<string> => new Set(gpu?.wgslLanguageFeatures ?? []);

// Dawn's Node binding crashes the process (segfault) when the object returned by `create()` is
// garbage-collected while WebGPU is still in use, so the one instance made here lives as long as the
// process does, shared by every engine (an instance each leaked its threads: 27 → 72 after 12 engines).
let dawnInstance: GPU | undefined;

const LIMITS_TO_REQUEST = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

const FEATURES_TO_REQUEST: GPUFeatureName[] = ['timestamp-query', 'shader-f16', 'subgroups'];

/** Node, not Deno (which answers to `process.versions.node` too): WebGPU there is Dawn's `webgpu` package. */
const isNodeRuntime = () => typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string' && !('Deno' in globalThis);

async function findGpu(): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  if (!isNodeRuntime()) {
    throw new NoAdapterError('this runtime has no navigator.gpu (Deno needs --unstable-webgpu; browsers need WebGPU enabled)');
  }
  if (dawnInstance) return dawnInstance;
  let dawn: { create(options: string[]): GPU; globals: object };
  try {
    dawn = await import('webgpu');
  } catch (e) {
    throw new NoAdapterError(`the "webgpu" npm package (Dawn for Node) could not be loaded: ${(e as Error).message}`);
  }
  // Dawn's classes (GPUBufferUsage, GPUMapMode, ...) are what kernels and user code refer to.
  for (const [k, v] of Object.entries(dawn.globals)) {
    if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  }
  const proc = (globalThis as unknown as { process: { env: Record<string, string | undefined> } }).process;
  // The Vulkan loader warns (and some drivers fail) without a runtime dir.
  proc.env.XDG_RUNTIME_DIR ??= '/tmp';
  dawnInstance = dawn.create([]);
  return dawnInstance;
}

/**
 * The adapter families that kernels choose presets for: Mesa's llvmpipe (lavapipe) and Google's
 * SwiftShader run on the CPU and compile shaders differently (SwiftShader's JIT gives up on
 * shaders that lavapipe runs fastest), the GPU vendors by name.
 */
export type AdapterClass = 'llvmpipe' | 'swiftshader' | 'nvidia' | 'amd' | 'intel' | 'apple' | 'other';

export function adapterClass(info: AdapterDescription): AdapterClass {
  const text = [info.vendor, info.architecture, info.device, info.description].join(' ');
  if (/llvmpipe|lavapipe/i.test(text)) return 'llvmpipe';
  if (/swiftshader/i.test(text)) return 'swiftshader';
  if (/nvidia/i.test(text)) return 'nvidia';
  if (/\bamd\b|radeon|\bati\b/i.test(text)) return 'amd';
  if (/intel/i.test(text)) return 'intel';
  if (/apple/i.test(text)) return 'apple';
  return 'other';
}

/** A software adapter running on the CPU (lavapipe/llvmpipe, SwiftShader): kernels pick CPU-friendly variants. */
export function isCpuAdapter(info: AdapterDescription): boolean {
  return /llvmpipe|lavapipe|swiftshader|\bcpu\b/i.test([info.vendor, info.architecture, info.device, info.description].join(' '));
}

export function describeAdapter(adapter: GPUAdapter | undefined, device: GPUDevice): AdapterDescription {
  const info = (adapter?.info ?? (device as { adapterInfo?: GPUAdapterInfo }).adapterInfo) as GPUAdapterInfo | undefined;
  const limits: Record<string, number> = {};
  for (const key of LIMITS_TO_REQUEST) limits[key] = device.limits[key];
  return {
    vendor: info?.vendor ?? '',
    architecture: info?.architecture ?? '',
    device: info?.device ?? '',
    description: info?.description ?? '',
    features: [...device.features].sort(),
    limits,
    subgroupMinSize: (info as { subgroupMinSize?: number } | undefined)?.subgroupMinSize ?? 0,
    subgroupMaxSize: (info as { subgroupMaxSize?: number } | undefined)?.subgroupMaxSize ?? 0,
  };
}

export interface RequestDeviceOptions {
  powerPreference?: GPUPowerPreference;
}

/**
 * Gives a CPU adapter's worker threads the cores in Node: Dawn's Node binding waits for GPU work
 * (a read, onSubmittedWorkDone) by re-queueing its event polling with setImmediate on the main
 * thread, a busy loop while anything is pending. On a CPU adapter (lavapipe) that thread competes
 * with the adapter's own threads, which run the kernels: on 2 cores it took 2.8 s of CPU in a
 * 4.2 s wait, and a 1024³ matmul ran in 97 ms against 49 ms, the reference U-Net's training step
 * in 2.56 s against 1.65 s (npm run bench --quick, one after the other). Lowers the calling
 * thread's priority to nice 19 (Linux threads each have their own; the adapter's, made with its
 * device, keep theirs), so the polling takes what they leave. Without privileges a process cannot
 * raise it again: the CLI and the bench call this; an app decides for its own main thread.
 * Returns whether it did: only in Node (Dawn: difrep's instance or the app's), for a CPU adapter,
 * where os.setPriority works.
 */
export async function yieldCoresToCpuAdapter(info: AdapterDescription): Promise<boolean> {
  if (!isNodeRuntime() || !isCpuAdapter(info)) return false;
  try {
    (await import('node:os')).setPriority(19);
    return true;
  } catch {
    return false; // a platform or sandbox without setpriority: the run is only slower
  }
}

/**
 * Finds an adapter and creates a device with the adapter's largest storage-binding, buffer and
 * workgroup limits and the optional features the engine can use.
 */
export async function requestDevice(options: RequestDeviceOptions = {}): Promise<DeviceHandle> {
  const gpu = await findGpu();
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
  } catch (e) {
    throw new NoAdapterError(`requestAdapter failed: ${(e as Error).message}`);
  }
  if (!adapter) throw new NoAdapterError('navigator.gpu.requestAdapter() returned null (no Vulkan/Metal/D3D12 driver with WebGPU support)');
  const requiredLimits: Record<string, number> = {};
  for (const key of LIMITS_TO_REQUEST) requiredLimits[key] = adapter.limits[key];
  const requiredFeatures = FEATURES_TO_REQUEST.filter((f) => adapter!.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures, label: 'difrep' });
  return { device, adapter, info: describeAdapter(adapter, device), owned: true, wgslFeatures: languageFeatures(gpu) };
}

/**
 * Wraps a device the caller owns: the engine never destroys it. Its WGSL language features come
 * from navigator.gpu where there is one, else from the device itself: whether a module using
 * `subgroup_id` compiles (not from a Dawn instance another engine happened to make, which changed
 * the kernels an engine chose, and its results in the last bits, by what ran before it).
 */
export async function wrapDevice(device: GPUDevice, adapter?: GPUAdapter): Promise<DeviceHandle> {
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  const wgslFeatures = gpu ? languageFeatures(gpu) : await probeLanguageFeatures(device);
  return { device, adapter, info: describeAdapter(adapter, device), owned: false, wgslFeatures };
}

/** The language features difrep asks about (subgroup_id), by compiling a module that uses each. */
async function probeLanguageFeatures(device: GPUDevice): Promise<ReadonlySet<string>> {
  if (!device.features.has('subgroups')) return new Set();
  // The scope is popped before anything is awaited: error scopes are one stack per device, so the
  // app's own calls while this waited landed in it (its errors never reached its handlers).
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code: 'enable subgroups;\n@compute @workgroup_size(1) fn main(@builtin(subgroup_id) s: u32) { _ = s; }', label: 'difrep subgroup_id probe' });
  const popped = device.popErrorScope();
  const messages = (await module.getCompilationInfo()).messages;
  const failed = await popped;
  return new Set(!failed && !messages.some((m) => m.type === 'error') ? ['subgroup_id'] : []);
}
