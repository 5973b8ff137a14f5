// The library against a real gateway: futures, errors, cancel, list, the watch iterator, auth.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import http from "node:http";
import path from "node:path";
import {
  GatewayClient, JobCancelledError, JobFailedError, JobState, RpcError, WebhookEvent, jobStateName, webhookEvent,
} from "../src/index.js";
import { AUTH_CONFIG, ECHO_CONFIG, scratch, startGateway, waitFor, within } from "./gateway.mjs";

const revisions = (jobs) => jobs.map((j) => Number(j.revision));
const consecutive = (list) => list.every((r, i) => i === 0 || r === list[i - 1] + 1);

describe("GatewayClient", () => {
  let dir;
  let gateway;
  let client;

  before(async () => {
    dir = scratch();
    gateway = await startGateway({ dataDir: path.join(dir.dir, "data") });
    client = new GatewayClient(gateway.target, { timeout: 10 });
  });

  after(async () => {
    client?.close();
    await gateway?.stop();
    dir?.remove();
  });

  test("submit answers a future that resolves with the echo output, every revision seen once", async () => {
    const inputs = { delay_ms: 200, steps: 4, text: "héllo", nested: { a: [1, "two", null, true] } };
    const future = await client.submit("echo", inputs, { labels: { test: "future" } });
    assert.equal(future.job.state, JobState.QUEUED);
    assert.equal(future.job.revision, 1n);
    assert.equal(future.job.id.length, 32);
    const seen = [];
    future.onUpdate((job) => seen.push(job));
    const output = await within(future.result(), 30_000, "the future");
    assert.deepEqual(output, inputs);
    assert.equal(future.done, true);
    assert.ok(seen.length >= 6, `revisions: ${revisions(seen)}`); // running, 4 steps..., succeeded
    assert.equal(seen[0].revision, 2n);
    assert.ok(consecutive(revisions(seen)), `revisions: ${revisions(seen)}`);
    const last = seen.at(-1);
    assert.equal(last.done, true);
    assert.equal(jobStateName(last.state), "JOB_STATE_SUCCEEDED");
    assert.deepEqual(last.labels, { test: "future" });
  });

  test("a repeated requestId answers the same job (existing)", async () => {
    const first = await client.submit("echo", { x: 1 }, { requestId: "node-idempotent" });
    const again = await client.submit("echo", { x: 1 }, { requestId: "node-idempotent" });
    assert.equal(again.jobId, first.jobId);
    assert.equal(again.existing, true);
    assert.deepEqual(await within(again.result(), 30_000), { x: 1 });
  });

  test("a FAILED job rejects its future with JobFailedError and the reason", async () => {
    const future = await client.submit("echo", { delay_ms: 50, fail_with: "the model fell over" });
    const err = await within(future.result().then(() => null, (e) => e), 30_000, "the future");
    assert.ok(err instanceof JobFailedError, String(err));
    assert.equal(err.reason, "ECHO_FAILURE");
    assert.equal(err.codeName, "UNKNOWN");
    assert.equal(err.details, "the model fell over");
    assert.equal(err.domain, "gateway.inferencegateway.dev");
    assert.equal(err.job.state, JobState.FAILED);
    assert.equal(err.job.done, true);
  });

  test("a job past its runTimeout fails with RUN_TIMEOUT; queueTimeout and runTimeout are on the job", async () => {
    const future = await client.submit("echo", { delay_ms: 60_000, steps: 100 }, { runTimeout: 0.5, queueTimeout: 30 });
    assert.equal(future.job.runTimeout.nanos, 500_000_000);
    assert.equal(future.job.queueTimeout.seconds, 30n);
    assert.equal(future.job.priority, 3);
    const err = await within(future.result().then(() => null, (e) => e), 30_000, "the future");
    assert.ok(err instanceof JobFailedError, String(err));
    assert.equal(err.reason, "RUN_TIMEOUT");
    assert.equal(err.codeName, "DEADLINE_EXCEEDED");
  });

  test("priority goes with the Submit and comes back on the job; out of range is refused here", async () => {
    const { job } = await client.submitJob("echo", {}, { priority: 1 });
    assert.equal(job.priority, 1);
    assert.throws(() => client.submitJob("echo", {}, { priority: 7 }), RangeError);
  });

  test("retryJob runs a failed job again as a new job linked to it; a second retry answers the same", async () => {
    const future = await client.submit("echo", { fail_with: "flaky" }, { labels: { retry: "node" } });
    await within(future.result().then(() => null, (e) => e), 30_000, "the future");
    const { job, existing } = await client.retryJob(future.jobId);
    assert.equal(existing, false);
    assert.equal(job.retryOf, future.jobId);
    assert.equal(job.attempt, 1);
    assert.deepEqual(job.labels, { retry: "node" });
    const again = await client.retryJob(future.jobId);
    assert.equal(again.existing, true);
    assert.equal(again.job.id, job.id);
    assert.equal((await client.get(future.jobId)).retriedBy, job.id);
  });

  test("cancel: a running job ends CANCELLED and its future rejects", async () => {
    const future = await client.submit("echo", { delay_ms: 20_000, steps: 100 });
    await waitFor(() => future.job.state === JobState.RUNNING, { what: "the job to run" });
    const job = await client.cancel(future.jobId);
    assert.equal(job.id, future.jobId);
    const err = await within(future.result().then(() => null, (e) => e), 30_000, "the future");
    assert.ok(err instanceof JobCancelledError, String(err));
    assert.equal(err.reason, "CANCELLED");
    assert.equal(err.job.state, JobState.CANCELLED);
    assert.equal(await future.cancel(), false); // already done
  });

  test("RPC errors carry code, reason, metadata (ErrorInfo from the status details trailer)", async () => {
    const missing = "0".repeat(32);
    const err = await client.get(missing).then(() => null, (e) => e);
    assert.ok(err instanceof RpcError);
    assert.equal(err.codeName, "NOT_FOUND");
    assert.equal(err.code, 5);
    assert.equal(err.reason, "JOB_NOT_FOUND");
    assert.deepEqual(err.metadata, { jobId: missing });
    assert.equal(err.retryAfter, null);
    assert.match(err.message, /^NOT_FOUND JOB_NOT_FOUND: /);

    const bad = await client.submitJob("echo", { delay_ms: -1, steps: "x" }).then(() => null, (e) => e);
    assert.equal(bad.codeName, "INVALID_ARGUMENT");
    assert.deepEqual(bad.fieldViolations.map((v) => v.field), ["inputs.delay_ms", "inputs.steps"]);

    const running = await client.submit("echo", { delay_ms: 20_000 });
    const notDone = await client.fetch(running.jobId).then(() => null, (e) => e);
    assert.equal(notDone.codeName, "FAILED_PRECONDITION");
    assert.equal(notDone.reason, "JOB_NOT_DONE");
    const waited = await client.fetch(running.jobId, { wait: 0.3 }); // waits, then answers the job as it is
    assert.equal(waited.job.done, false);
    assert.equal(waited.result.case, undefined);
    await client.cancel(running.jobId);
    await running.result().catch(() => {});
  });

  test("fetch with wait answers the result once the job ends", async () => {
    const { job } = await client.submitJob("echo", { delay_ms: 300, v: "w" });
    const fetched = await client.fetch(job.id, { wait: 30 });
    assert.equal(fetched.job.done, true);
    assert.equal(fetched.result.case, "output");
  });

  test("list filters by label, state and route, and pages", async () => {
    const label = { suite: `list-${process.pid}` };
    const futures = [
      await client.submit("echo", { n: 1 }, { labels: label }),
      await client.submit("echo", { n: 2 }, { labels: label }),
      await client.submit("echo", { fail_with: "nope" }, { labels: label }),
    ];
    await within(Promise.allSettled(futures.map((f) => f.result())), 30_000, "three jobs");
    const first = await client.list({ labels: label, pageSize: 2 });
    assert.equal(first.jobs.length, 2);
    assert.ok(first.nextPageToken);
    assert.equal(first.jobs[0].id, futures[2].jobId); // newest first
    const second = await client.list({ labels: label, pageSize: 2, pageToken: first.nextPageToken });
    assert.equal(second.jobs.length, 1);
    assert.equal(second.nextPageToken, "");
    assert.equal(second.jobs[0].id, futures[0].jobId);
    const failed = await client.list({ labels: label, states: ["failed"], route: "echo" });
    assert.deepEqual(failed.jobs.map((j) => j.id), [futures[2].jobId]);
    const all = [];
    for await (const job of client.listAll({ labels: label, pageSize: 1 })) all.push(job.id);
    assert.deepEqual(all, futures.map((f) => f.jobId).reverse());
    const none = await client.list({ labels: label, route: "nope" }).catch((e) => e);
    assert.ok(none instanceof RpcError || none.jobs.length === 0);
  });

  test("watch iterates every revision once, in order, ending with the terminal one", async () => {
    const { job } = await client.submitJob("echo", { delay_ms: 400, steps: 5 });
    const seen = [];
    for await (const snapshot of client.watch(job.id)) seen.push(snapshot);
    const revs = revisions(seen);
    assert.ok(revs[0] <= 2, `revisions: ${revs}`); // the whole job first, as it is now (queued or just running)
    assert.ok(consecutive(revs), `revisions: ${revs}`);
    assert.equal(new Set(revs).size, revs.length);
    assert.equal(seen.at(-1).done, true);
    assert.equal(seen.at(-1).state, JobState.SUCCEEDED);
    assert.ok(seen.slice(0, -1).every((j) => !j.done));
    // After a revision: only what follows it, each once (the whole history after revision 1).
    const history = [];
    for await (const snapshot of client.watch(job.id, { afterRevision: 1 })) history.push(snapshot);
    assert.deepEqual(revisions(history), Array.from({ length: revs.at(-1) - 1 }, (_, i) => i + 2));
    const tail = [];
    for await (const snapshot of client.watch(job.id, { afterRevision: revs.at(-2) })) tail.push(snapshot);
    assert.deepEqual(revisions(tail), [revs.at(-1)]);
  });

  test("a future for an existing job id", async () => {
    const { job } = await client.submitJob("echo", { delay_ms: 100, k: "v" });
    const future = await client.future(job.id);
    assert.deepEqual(await within(future.result(), 30_000), { delay_ms: 100, k: "v" });
  });
});

describe("GatewayClient with auth", () => {
  test("the bearer token rides on every call", async () => {
    const dir = scratch();
    const gateway = await startGateway({ dataDir: path.join(dir.dir, "data"), config: AUTH_CONFIG });
    const anonymous = new GatewayClient(gateway.target, { timeout: 10 });
    const authed = new GatewayClient(gateway.target, { timeout: 10, token: "tok" });
    try {
      const err = await anonymous.submitJob("echo", {}).then(() => null, (e) => e);
      assert.equal(err?.codeName, "UNAUTHENTICATED");
      const future = await authed.submit("echo", { a: 1 });
      assert.deepEqual(await within(future.result(), 30_000), { a: 1 });
    } finally {
      anonymous.close();
      authed.close();
      await gateway.stop();
      dir.remove();
    }
  });
});

describe("GatewayClient with a webhook", () => {
  test("submitJob's webhook option reaches the gateway, which delivers start and completed, signed", async () => {
    const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const received = [];
    const receiver = http.createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        received.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
        res.writeHead(204).end();
      });
    });
    await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${receiver.address().port}/`;
    const dir = scratch();
    const config = `${ECHO_CONFIG}[webhooks]\nallowed_prefixes = ["${url}"]\nallowed_networks = ["127.0.0.1/32"]\n` +
      `secret = "${secret}"\npoll_interval_seconds = 0.1\n`;
    const gateway = await startGateway({ dataDir: path.join(dir.dir, "data"), config });
    const client = new GatewayClient(gateway.target, { timeout: 10 });
    try {
      assert.throws(() => webhookEvent("finished"), /unknown webhook event 'finished'/);
      const { job } = await client.submitJob("echo", { delay_ms: 100 }, { webhook: { url: `${url}hook`, events: ["start", "completed"] } });
      assert.equal(job.webhook.url, `${url}hook`);
      assert.deepEqual(job.webhook.events, [WebhookEvent.START, WebhookEvent.COMPLETED]);
      await waitFor(() => received.length === 2, { what: "two deliveries" });
      const key = Buffer.from(secret.slice("whsec_".length), "base64");
      for (const { headers, body } of received) {
        const signed = `${headers["webhook-id"]}.${headers["webhook-timestamp"]}.${body}`;
        const expected = `v1,${createHmac("sha256", key).update(signed).digest("base64")}`;
        assert.ok(headers["webhook-signature"].split(" ").includes(expected));
      }
      assert.deepEqual(received.map((r) => JSON.parse(r.body).state), ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]);
      await assert.rejects(client.submitJob("echo", {}, { webhook: "https://elsewhere.example.com/" }),
        (err) => err.reason === "WEBHOOK_URL_NOT_ALLOWED");
    } finally {
      client.close();
      await gateway.stop();
      receiver.close();
      dir.remove();
    }
  });
});
