import { randomBytes } from 'node:crypto';
import { truncate, writeFile } from 'node:fs/promises';

/** Writes `size` random bytes to `path`. */
export async function writeRandomFile(path: string, size: number): Promise<Buffer> {
  const data = randomBytes(size);
  await writeFile(path, data);
  return data;
}

/** Creates (or empties) `path` as a sparse file of `size` bytes that reads as zeros. */
export async function sparseFile(path: string, size: number): Promise<string> {
  await writeFile(path, '');
  await truncate(path, size);
  return path;
}
