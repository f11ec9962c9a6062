export function loadDist(worker: string): Promise<typeof import('../../src/index.js')>;
export function random(seed: number): () => number;
