// Run by device-instance.test.ts: an app that makes its own Dawn device in Node but never installs
// Dawn's globals (GPUBufferUsage, …), then hands the device to difrep.
import { create } from 'webgpu';
import { createEngine } from '../../../src/index.ts';

process.env.XDG_RUNTIME_DIR ??= '/tmp';
const device = await (await create([]).requestAdapter())!.requestDevice();
try {
  await createEngine({ device });
  console.log('created');
} catch (e) {
  console.log(`${(e as Error).name}: ${(e as Error).message}`);
}
device.destroy();
