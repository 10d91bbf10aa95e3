// The per-image noise seed of extraction, DifFeed and the example page, with no Node import.
import { hashSeeds } from '../engine/random.ts';

/**
 * Per-image noise seed, so a feature never depends on batch composition or sharding. The seed is
 * mixed (murmur3's finaliser) before the image joins it: XORed in as they were, seeds b and b′ gave
 * image i the noise of image i ⊕ b ⊕ b′ (DifFeed's epochs, bases seed + epoch + 1, drew 224 distinct
 * ε for 200 images × 28 epochs, and two extraction seeds the same ε for other images).
 */
export function noiseSeed(seed: number, image: number, t: number): number {
  return hashSeeds(seed, image, t);
}
