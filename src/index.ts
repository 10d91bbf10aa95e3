// difrep's public surface.
export * from './engine/index.ts';
