// Upload: audio over uploadAbove (or given as a file) goes in chunks, read from the file as they are
// sent. The gateway here receives at most 1 MiB in one message, so a job that runs proves its 3 MiB
// of audio came by Upload.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { GatewayClient, RpcError } from "../src/index.js";
import { REPO_ROOT, nodeCli, scratch, startGateway, within } from "./gateway.mjs";

const MiB = 1024 * 1024;
const TEXT = "She sells seashells by the seashore.";
const CONFIG = `max_receive_bytes = ${MiB}\nmax_inflight_submit_bytes = ${4 * MiB}\n`
  + '[routes.echo]\nbackend = "echo"\n[routes.whisper]\nbackend = "whisper"\n';

/** The seashells WAV followed by silence, about `size` bytes (its format chunk kept as it is). */
function paddedWav(size) {
  const source = readFileSync(path.join(REPO_ROOT, "tests", "fixtures", "seashells_44k_stereo.wav"));
  const at = source.indexOf("data");
  const pcm = source.subarray(at + 8, at + 8 + source.readUInt32LE(at + 4));
  const padded = Buffer.alloc(Math.max(pcm.length, size - at - 8) & ~3);
  pcm.copy(padded);
  const head = Buffer.from(source.subarray(0, at + 8));
  head.writeUInt32LE(head.length - 8 + padded.length, 4);
  head.writeUInt32LE(padded.length, at + 4);
  return Buffer.concat([head, padded]);
}

describe("Upload", () => {
  let dir;
  let gateway;
  let file;

  before(async () => {
    dir = scratch();
    gateway = await startGateway({ dataDir: path.join(dir.dir, "data"), config: CONFIG, timeoutMs: 120_000 });
    file = path.join(dir.dir, "big.wav");
    writeFileSync(file, paddedWav(3 * MiB));
  });

  after(async () => {
    await gateway?.stop();
    dir?.remove();
  });

  test("a file over uploadAbove goes by Upload and its future resolves with the transcript", async () => {
    const client = new GatewayClient(gateway.target, { timeout: 60, uploadAbove: MiB });
    try {
      const future = await client.submit("whisper", undefined, { audioFile: file, labels: { via: "node" } });
      const transcript = await within(future.result(), 120_000, "the transcript");
      assert.equal(transcript.text.trim(), TEXT);
    } finally {
      client.close();
    }
  });

  test("bytes over uploadAbove go by Upload too; under it, Submit refuses them as too large", async () => {
    const audio = readFileSync(file);
    const client = new GatewayClient(gateway.target, { timeout: 60, uploadAbove: MiB });
    const whole = new GatewayClient(gateway.target, { timeout: 60, uploadAbove: Infinity });
    try {
      const future = await client.submit("whisper", undefined, { transcription: { audio, languageCode: "en" } });
      assert.equal((await within(future.result(), 120_000, "the transcript")).text.trim(), TEXT);
      await assert.rejects(whole.submitJob("whisper", undefined, { transcription: { audio } }),
        (err) => err instanceof RpcError && err.reason === "REQUEST_TOO_LARGE");
    } finally {
      client.close();
      whole.close();
    }
  });

  test("an upload the server refuses rejects with its reason", async () => {
    const client = new GatewayClient(gateway.target, { timeout: 60, uploadAbove: 0 });
    try {
      await assert.rejects(client.submitJob("echo", undefined, { audioFile: file }),
        (err) => err instanceof RpcError && err.reason === "UPLOAD_NOT_SUPPORTED");
    } finally {
      client.close();
    }
  });

  test("the CLI's submit --audio uploads a large file", async () => {
    const big = path.join(dir.dir, "bigger.wav");
    writeFileSync(big, paddedWav(5 * MiB)); // over the CLI's 4 MiB
    const done = await nodeCli(gateway.target, ["submit", "--route", "whisper", "--audio", big]);
    assert.equal(done.code, 0, done.stderr);
    assert.match(done.stdout, /"state": "JOB_STATE_QUEUED"|JOB_STATE_QUEUED/);
  });
});
