import assert from 'node:assert/strict';
import { freePort } from '../../src/lab/ports';

describe('freePort', () => {
  // Regression: a replica's gRPC and admin ports, asked for one after the other, came out equal
  // once (the kernel handed the just-closed port out again), and the replica could not listen.
  it('never gives this process the same port twice in a row of many calls', async () => {
    const ports: number[] = [];
    for (let i = 0; i < 200; i++) ports.push(await freePort());
    assert.equal(new Set(ports).size, ports.length);
  });
});
