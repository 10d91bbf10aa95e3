export { createEngine, Engine, type EngineOptions, GpuError } from './engine.ts';
export { type AdapterClass, type AdapterDescription, NoAdapterError, requestDevice, SETUP_HINT, yieldCoresToCpuAdapter } from './device.ts';
export { type Shape, Tensor } from './tensor.ts';
export { checkTuning, type Tuning } from './tuning.ts';
export * as ops from './ops/index.ts';
