// The peer engine, in its own process (its global state and first-run cost stay out of difrep's
// numbers): @tensorflow/tfjs-backend-webgpu on the same adapter. Reads the list of PeerOps as
// JSON from argv[2], prints one JSON line per op: {i, firstMs, medianMs, reps} or {i, error}.
// Same protocol as bench/measure.ts: one warm-up call, then repetitions, each = the op run to
// completion.
import { describeAdapter, yieldCoresToCpuAdapter } from '../src/engine/device.ts';
import type { PeerOp } from './cases.ts';

const webgpu = await import('webgpu');
Object.assign(globalThis, webgpu.globals);
const gpu = webgpu.create([]);
(globalThis as unknown as { navigator: unknown }).navigator = { gpu, userAgent: 'node' };

const tf = await import('@tensorflow/tfjs-core');
await import('@tensorflow/tfjs-backend-webgpu');
await tf.setBackend('webgpu');
await tf.ready();
// As difrep's engine in the bench: on a CPU adapter, Dawn's busy event polling on this thread
// leaves the cores to the adapter's threads.
const peerDevice = (tf.backend() as unknown as { device?: GPUDevice }).device;
if (peerDevice) await yieldCoresToCpuAdapter(describeAdapter(undefined, peerDevice));

const list = JSON.parse(process.argv[2]) as (PeerOp & { minReps?: number; maxReps?: number })[];
for (const [i, op] of list.entries()) {
  try {
    const inputs: import('@tensorflow/tfjs-core').Tensor[] = [];
    let run: () => import('@tensorflow/tfjs-core').Tensor;
    if (op.op === 'matmul') {
      inputs.push(tf.randomNormal([op.m, op.k]), tf.randomNormal([op.k, op.n]));
      run = () => tf.matMul(inputs[0] as never, inputs[1] as never);
    } else if (op.op === 'conv2d') {
      // tfjs is channels-last: x [N, H, W, C], filter [k, k, Cin, Cout].
      // With a bias, as ours and PyTorch's (fused into the conv, as tfjs's layers run it).
      inputs.push(tf.randomNormal([op.n, op.h, op.w, op.cin]), tf.randomNormal([op.k, op.k, op.cin, op.cout]), tf.randomNormal([op.cout]));
      run = () => tf.fused.conv2d({ x: inputs[0] as never, filter: inputs[1] as never, strides: 1, pad: 'same', bias: inputs[2] });
    } else if (op.op === 'softmax') {
      inputs.push(tf.randomNormal([op.rows, op.cols]));
      run = () => tf.softmax(inputs[0] as never);
    } else if (op.op === 'add') {
      inputs.push(tf.randomNormal([op.size]), tf.randomNormal([op.size]));
      run = () => tf.add(inputs[0], inputs[1]);
    } else {
      throw new Error(`the tfjs peer has no ${op.op} (kernel ops only)`);
    }
    // As ours is timed: the op's commands submitted, then onSubmittedWorkDone (tfjs batches its
    // dispatches into one encoder until it submits). Reading an element back instead added a slice
    // kernel and a mapAsync round trip to every call (~0.3 ms on lavapipe).
    // These are tfjs-backend-webgpu's internals (4.22): a version without them times with the read-back.
    const backend = tf.backend() as unknown as { device?: GPUDevice; commandEncoder?: GPUCommandEncoder | null; endComputePassEncoder?(): void; submitQueue?(): void };
    const internals = !!(backend.device && backend.endComputePassEncoder && backend.submitQueue);
    if (!internals && i === 0) console.error('peer-tfjs: this tfjs has no submitQueue/device: each call also reads one value back (~0.3 ms on lavapipe)');
    const once = async () => {
      const t0 = performance.now();
      const r = run();
      if (internals) {
        backend.endComputePassEncoder!();
        if (backend.commandEncoder) backend.submitQueue!();
        await backend.device!.queue.onSubmittedWorkDone();
      } else {
        const one = tf.tidy(() => tf.slice(tf.reshape(r, [-1]), [0], [1]));
        await one.data();
        one.dispose();
      }
      const ms = performance.now() - t0;
      r.dispose();
      return ms;
    };
    const firstMs = await once();
    const times: number[] = [];
    let spent = 0;
    // As many repetitions as difrep's row takes (bench/main.ts repetitions), so both medians are alike.
    const [minReps, maxReps] = [op.minReps ?? 3, op.maxReps ?? 10];
    while (times.length < maxReps && (times.length < minReps || spent < 1000)) {
      const ms = await once();
      times.push(ms);
      spent += ms;
    }
    times.sort((a, b) => a - b);
    const m = Math.floor(times.length / 2);
    console.log(JSON.stringify({ i, firstMs, medianMs: times.length % 2 ? times[m] : (times[m - 1] + times[m]) / 2, reps: times.length }));
    for (const t of inputs) t.dispose();
  } catch (e) {
    console.log(JSON.stringify({ i, error: (e as Error).message }));
  }
}
process.exit(0);
