// Checkpoint element types to f32. Expected values: torch.tensor([v]).float() in PyTorch 1.13.
import t from 'tap';
import { toFloat32 } from '../../src/model/checkpoint/dtype.ts';

// Number(v) rounded to a double first, which past 2⁵³ can land on an f32 tie that v is not on.
t.test('I64 converts to the nearest f32 as PyTorch does, past 2⁵³ too', async (t) => {
  const cases: [bigint, number][] = [
    [2n ** 60n + 2n ** 36n + 1n, 1.1529216420458004e18],
    [2n ** 54n + 2n ** 30n + 1n, 1.801440065696563e16],
    [-(2n ** 60n + 2n ** 36n + 1n), -1.1529216420458004e18],
    [2n ** 63n - 1n, 9.223372036854776e18],
    [-(2n ** 63n), -9.223372036854776e18],
    [2n ** 53n + 1n, 9007199254740992],
    [2n ** 24n + 1n, 16777216],
    [2n ** 60n + 2n ** 36n, 1.152921504606847e18], // a tie, to even
    [2n ** 60n + 3n * 2n ** 36n, 1.152921779484754e18], // a tie, to even (up)
    [12345678901234567n, 1.2345678407663616e16],
    [-7n, -7],
  ];
  const bytes = new Uint8Array(8 * cases.length);
  const view = new DataView(bytes.buffer);
  cases.forEach(([v], i) => view.setBigInt64(8 * i, v, true));
  const got = Array.from(toFloat32('I64', bytes, cases.length));
  t.same(got, cases.map(([, want]) => want));
});
