// Streams cut under a waiting future: the gateway restarted mid-job (SIGTERM, then serving again on
// the same address and data dir), and connections recycled by max connection age. The future, the
// watch iterator and the CLI's watch resume after the last revision seen: every revision once.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { GatewayClient, JobState } from "../src/index.js";
import { ECHO_CONFIG, nodeCli, scratch, startGateway, waitFor, within } from "./gateway.mjs";

const consecutiveFrom = (list, first) => list.every((r, i) => r === first + i);

async function collect(iterator) {
  const out = [];
  for await (const job of iterator) out.push(job);
  return out;
}

test("a future, watch() and the CLI's watch survive a gateway restart mid-watch", async () => {
  const dir = scratch();
  const dataDir = path.join(dir.dir, "data");
  // A short drain, so that SIGTERM stops the gateway while the job still runs (it is resumed after).
  const config = `shutdown_grace_seconds = 0.2\n${ECHO_CONFIG}`;
  let gateway = await startGateway({ dataDir, config });
  const client = new GatewayClient(gateway.target, { timeout: 10 });
  try {
    const inputs = { delay_ms: 4000, steps: 20 };
    const future = await client.submit("echo", inputs);
    const seen = [];
    future.onUpdate((job) => seen.push(Number(job.revision)));
    const watched = collect(client.watch(future.jobId, { afterRevision: 1 }));
    const cli = nodeCli(gateway.target, ["watch", future.jobId, "--after-revision", "1", "--timeout", "60"],
      { timeoutMs: 90_000 });
    await waitFor(() => seen.length >= 3, { what: "three revisions before the restart" });

    const stopped = await within(gateway.stop(), 30_000, "the gateway to stop");
    assert.equal(stopped.code, 0);
    const beforeRestart = seen.length;
    assert.equal(future.done, false);
    gateway = await startGateway({ dataDir, config, listen: gateway.target });

    const output = await within(future.result(), 60_000, "the future after the restart");
    assert.deepEqual(output, inputs);
    assert.ok(seen.length > beforeRestart, "revisions arrived after the restart");
    assert.ok(consecutiveFrom(seen, 2), `future revisions: ${seen}`);

    const jobs = await within(watched, 60_000, "watch() after the restart");
    const revs = jobs.map((j) => Number(j.revision));
    assert.ok(consecutiveFrom(revs, 2), `watch revisions: ${revs}`);
    assert.equal(revs.at(-1), seen.at(-1));
    assert.equal(jobs.at(-1).state, JobState.SUCCEEDED);

    const { code, stdout, stderr } = await within(cli, 90_000, "the CLI's watch");
    assert.equal(code, 0, stderr);
    const lines = stdout.trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.update);
    const cliRevs = lines.map((m) => Number(m.update.job.revision));
    assert.ok(consecutiveFrom(cliRevs, 2), `CLI revisions: ${cliRevs}`);
    assert.equal(cliRevs.at(-1), seen.at(-1));
    assert.match(stderr, /gateway-client-node: the stream was cut \(.*\); resuming after revision \d+/);
  } finally {
    client.close();
    await gateway.stop();
    dir.remove();
  }
});

test("a future survives connections recycled by max connection age", async () => {
  const dir = scratch();
  const config = `max_connection_age_seconds = 1.0\nmax_connection_age_grace_seconds = 0.3\n${ECHO_CONFIG}`;
  const gateway = await startGateway({ dataDir: path.join(dir.dir, "data"), config });
  const client = new GatewayClient(gateway.target, { timeout: 10 });
  try {
    const future = await client.submit("echo", { delay_ms: 3000, steps: 15 });
    const seen = [];
    future.onUpdate((job) => seen.push(Number(job.revision)));
    const watched = collect(client.watch(future.jobId, { afterRevision: 1 }));
    let cuts = 0;
    const raw = collect(client.watchResponses(future.jobId, { afterRevision: 1, onResume: () => { cuts += 1; } }));
    assert.deepEqual(await within(future.result(), 60_000, "the future"), { delay_ms: 3000, steps: 15 });
    assert.ok(consecutiveFrom(seen, 2), `future revisions: ${seen}`);
    const revs = (await within(watched, 60_000, "watch()")).map((j) => Number(j.revision));
    assert.deepEqual(revs, seen);
    const rawRevs = (await within(raw, 60_000, "watchResponses()")).filter((m) => m.event.case === "update")
      .map((m) => Number(m.event.value.job.revision));
    assert.deepEqual(rawRevs, seen);
    assert.ok(cuts >= 1, "the connection was recycled at least once");
  } finally {
    client.close();
    await gateway.stop();
    dir.remove();
  }
});
