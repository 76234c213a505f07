import { constants, open, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileDevice } from '../../src/io/FileDevice.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();

/** True when the file system here takes O_DIRECT at all (tmpfs does not). */
async function directWorks(path: string): Promise<boolean> {
  try {
    await (await open(path, constants.O_RDONLY | constants.O_DIRECT)).close();
    return true;
  } catch {
    return false;
  }
}

describe('FileDevice', () => {
  it('hands out buffers an O_DIRECT write accepts, even on a new file that is all hole', async () => {
    const dir = await scratch();
    const path = join(dir, 'new.img');
    await (await open(path, 'w')).close();
    await truncate(path, 8 * MiB);
    if (!(await directWorks(path))) return; // no O_DIRECT here: nothing to align for
    const device = await FileDevice.open({ kind: 'file', path, writable: true, direct: true, role: 'target' });
    const raw = await open(path, constants.O_RDWR | constants.O_DIRECT);
    try {
      for (let i = 0; i < 4; i++) {
        const buf = await device.allocBuffer(MiB);
        buf.fill(i + 1);
        // Through a handle of our own, so a misaligned buffer fails instead of falling back to the page cache.
        await expect(raw.write(buf, 0, MiB, i * MiB)).resolves.toMatchObject({ bytesWritten: MiB });
      }
    } finally {
      await raw.close();
      await device.close();
    }
  });
});
