// mulberry32: the small seeded generator behind every reproducible draw in difrep (initial
// weights, shuffles, batches). Same seed, same sequence, on every runtime.
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** murmur3's 32-bit finaliser: every input bit moves every output bit. */
function mix32(v: number): number {
  let h = Math.imul(v ^ (v >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * A 32-bit seed hashed from a base seed and any further values (an image, a timestep): each value
 * joins the mixed state, so seeds that differ in any of them share no simple relation (XORed or
 * added as they were, seeds collided: base b's item i with base b′'s item i ⊕ b ⊕ b′).
 */
export function hashSeeds(seed: number, ...values: number[]): number {
  let h = mix32((seed ^ 0x9e3779b9) >>> 0);
  for (const v of values) h = mix32((h ^ v) >>> 0);
  return h;
}
