// Worker thread for bench/bitmap.ts: marks the same random 4 KiB writes into a shared bitmap each
// time it is told to. Worker threads cannot load TypeScript, so this uses the build (`npm run bench`
// builds first).
import { parentPort, workerData } from 'node:worker_threads';
import { DirtyBitmap } from '../dist/bitmap/DirtyBitmap.js';

const { shared, count, write } = workerData;
const bitmap = DirtyBitmap.fromShared(shared);
const offsets = Float64Array.from({ length: count }, () => Math.floor(Math.random() * (bitmap.size / write)) * write);
parentPort.on('message', () => {
  for (let i = 0; i < count; i++) bitmap.mark(offsets[i], write);
  parentPort.postMessage('done');
});
parentPort.postMessage('ready');
