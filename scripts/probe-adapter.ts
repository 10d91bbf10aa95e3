// Prints the WebGPU adapter this machine gives difrep: vendor, architecture, features and limits.
// Exit status 1 (with the setup hint) when there is none.
import { NoAdapterError, requestDevice } from '../src/engine/device.ts';

try {
  const { device, info } = await requestDevice();
  console.log(`[setup] WebGPU adapter: ${info.description || info.device} (vendor ${info.vendor || '?'}, architecture ${info.architecture || '?'})`);
  console.log(`[setup] features: ${info.features.join(', ')}`);
  console.log(`[setup] limits: ${Object.entries(info.limits).map(([k, v]) => `${k}=${v}`).join(', ')}`);
  device.destroy();
} catch (e) {
  if (e instanceof NoAdapterError) {
    console.error(`[setup] ${e.message}`);
    process.exit(1);
  }
  throw e;
}
