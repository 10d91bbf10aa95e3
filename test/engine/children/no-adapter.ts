// Run by engine.test.ts with the Vulkan loader pointed at no driver.
import { createEngine } from '../../../src/index.ts';

try {
  await createEngine();
  console.log('got an adapter');
} catch (e) {
  console.log(`${(e as Error).name}: ${(e as Error).message}`);
}
