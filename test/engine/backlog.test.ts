// What a long loop leaves behind: GPU commands queued ahead of the GPU (bounded by settle() and
// maxCommandsInFlight) and tensor labels (bounded in length).
import t from 'tap';
import { createEngine, Engine, ops, type Tensor } from '../../src/index.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();

t.test('a label fed back into itself stays short (add(x, x) would double it every step)', async (t) => {
  let x = e.tensor([1], [1], 'x');
  for (let i = 0; i < 40; i++) {
    const next = ops.add(x, x);
    x.dispose();
    x = next;
  }
  t.ok(x.label.length <= 160, `${x.label.length} characters`);
  t.ok(x.label.startsWith('add(add(add('), x.label.slice(0, 40));
  t.same(Array.from(await x.read()), [2 ** 40]);
  x.dispose();
});

t.test('recording past maxCommandsInFlight without waiting throws a message naming settle()', async (t) => {
  const small = await createEngine({ maxCommandsInFlight: 64 });
  const x = small.tensor([1, 2], [2]); // 1 command (the upload)
  const made: Tensor[] = [];
  t.throws(() => {
    for (let i = 0; i < 100; i++) made.push(ops.scale(x, 2));
  }, /64 GPU commands recorded without waiting for the GPU to run them; a long loop must await engine\.settle\(\).*where one step alone records this many .* give a smaller batch/);
  t.equal(made.length, 63, 'the upload and 63 dispatches fit, the 65th command is refused');
  await small.sync();
  t.equal(small.memoryStats().commandsInFlight, 0, 'sync() sees the GPU finish everything');
  t.same(Array.from(await ops.scale(x, 2).read()), [2, 4], 'the engine works on after the refusal');
  await small.dispose();
});

// The refusal asks for a read, which waits for the GPU; the read itself was refused at the limit.
t.test('at maxCommandsInFlight a read is still allowed, and frees the backlog', async (t) => {
  const small = await createEngine({ maxCommandsInFlight: 8 });
  const x = small.tensor([1, 2], [2]);
  let y = x;
  for (let i = 0; i < 7; i++) y = ops.scale(y, 2); // the upload and 7 dispatches: the limit
  t.throws(() => ops.scale(y, 2), /8 GPU commands recorded without waiting/);
  t.same(Array.from(await y.read()), [128, 256]);
  t.equal(small.memoryStats().commandsInFlight, 0);
  await small.dispose();
});

t.test('settle() in every iteration keeps the backlog under maxCommandsInFlight / 8 + one iteration', async (t) => {
  const small = await createEngine({ maxCommandsInFlight: 64 });
  let x = small.tensor([1], [1]);
  let worst = 0;
  for (let i = 0; i < 300; i++) {
    const next = ops.scale(x, 1);
    x.dispose();
    x = next;
    worst = Math.max(worst, small.memoryStats().commandsInFlight);
    await small.settle();
  }
  t.ok(worst <= 64 / 8 + 1, `at most ${worst} commands were queued ahead of the GPU`);
  t.same(Array.from(await x.read()), [1]);
  t.equal(small.memoryStats().commandsInFlight, 0, 'a read sees the GPU finish everything before it');
  await small.dispose();
});

t.test('maxCommandsInFlight must be a positive integer', async (t) => {
  for (const bad of [0, -1, 1.5, Number.NaN]) {
    t.throws(() => new Engine({ ...e.handle, owned: false }, { maxCommandsInFlight: bad }), /maxCommandsInFlight must be a positive integer/);
  }
});
