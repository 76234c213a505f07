import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';

/** Writes `size` random bytes to `path`. */
export async function writeRandomFile(path: string, size: number): Promise<Buffer> {
  const data = randomBytes(size);
  await writeFile(path, data);
  return data;
}
