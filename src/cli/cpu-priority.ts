// The CLI's engines give a CPU adapter's threads the cores (yieldCoresToCpuAdapter: Dawn's Node
// binding busy-polls on the main thread, which then runs at nice 19) unless DIFREP_KEEP_PRIORITY=1:
// on a machine busy with other work, that thread yields to the other work too, and the kernels
// wait for it between submissions.
import { yieldCoresToCpuAdapter } from '../engine/device.ts';
import type { Engine } from '../engine/engine.ts';

/** Whether the main thread now yields to the adapter's threads. */
export async function yieldCoresUnlessKept(e: Engine): Promise<boolean> {
  if (process.env.DIFREP_KEEP_PRIORITY === '1') return false;
  return yieldCoresToCpuAdapter(e.handle.info);
}
