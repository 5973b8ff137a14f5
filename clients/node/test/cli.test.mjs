// The CLI against the Python gateway-client on the same gateway: the same JSON lines (as parsed
// JSON), the same exit codes and the same error lines, for submit, watch, fetch, cancel, list.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { GatewayClient, JobState } from "../src/index.js";
import { REPO_ROOT, nodeCli, pythonCli, scratch, startGateway, waitFor, within } from "./gateway.mjs";

const lines = (text) => text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
const stderrLines = (text) => text.split("\n").filter(Boolean).map((l) => l.replace(/^gateway-client-node:/, "gateway-client:"));
const golden = (name) => JSON.parse(readFileSync(path.join(REPO_ROOT, "tests", "golden", "cli", `${name}.json`), "utf8"));

/** The keys of a JSON value, recursively (arrays by their first element): its shape. */
function shape(value) {
  if (Array.isArray(value)) return value.length ? [shape(value[0])] : [];
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, shape(value[k])]));
  }
  return typeof value;
}

/** Placeholders for what differs between two jobs: ids, times, request ids. */
function normalize(value) {
  return JSON.parse(JSON.stringify(value), (key, v) => {
    if (typeof v !== "string") return v;
    if (key === "id" || key === "requestId") return "<id>";
    if (/Time$/.test(key)) return "<timestamp>";
    return v;
  });
}

describe("gateway-client-node", () => {
  let dir;
  let gateway;
  let client;
  const ids = {};

  /** Runs the same arguments through both CLIs and checks they agree; answers the node run. */
  async function same(args, { exitCode } = {}) {
    const [node, python] = await Promise.all([nodeCli(gateway.target, args), pythonCli(gateway.target, args)]);
    assert.equal(node.code, python.code, `exit codes of ${args.join(" ")}:\nnode: ${node.stderr}\npython: ${python.stderr}`);
    if (exitCode !== undefined) assert.equal(node.code, exitCode, node.stderr);
    assert.deepEqual(lines(node.stdout), lines(python.stdout), `stdout of ${args.join(" ")}`);
    assert.deepEqual(stderrLines(node.stderr), stderrLines(python.stderr), `stderr of ${args.join(" ")}`);
    return { ...node, messages: lines(node.stdout) };
  }

  before(async () => {
    dir = scratch();
    gateway = await startGateway({ dataDir: path.join(dir.dir, "data") });
    client = new GatewayClient(gateway.target, { timeout: 10 });
    const labels = { golden: "cli" };
    const done = await client.submit("echo", { delay_ms: 10, nested: { a: [1, "two", null, true] } }, { labels });
    const failed = await client.submit("echo", { delay_ms: 10, fail_with: "the model fell over" }, { labels });
    const third = await client.submit("echo", { delay_ms: 10 }, { labels });
    await within(Promise.allSettled([done, failed, third].map((f) => f.result())), 30_000, "the jobs");
    Object.assign(ids, { done: done.jobId, failed: failed.jobId, third: third.jobId });
  });

  after(async () => {
    client?.close();
    await gateway?.stop();
    dir?.remove();
  });

  test("submit prints the SubmitResponse; a repeated request id answers the existing job", async () => {
    const args = ["submit", "--route", "echo", "--inputs", '{"delay_ms": 10, "text": "héllo\\nworld"}',
      "--label", "golden=submit", "--label", "kind=a=b"];
    const [node, python] = await Promise.all([
      nodeCli(gateway.target, [...args, "--request-id", "node-submit"]),
      pythonCli(gateway.target, [...args, "--request-id", "python-submit"]),
    ]);
    assert.equal(node.code, 0, node.stderr);
    assert.equal(python.code, 0, python.stderr);
    assert.equal(node.stderr, "");
    const [nodeOut] = lines(node.stdout);
    const [pythonOut] = lines(python.stdout);
    assert.equal(nodeOut.job.requestId, "node-submit");
    assert.deepEqual(shape(nodeOut), shape(golden("submit")[0].stdout[0]));
    const comparable = (m) => normalize({ ...m, job: { ...m.job, queuePosition: 0, state: "", revision: "" } });
    assert.deepEqual(comparable(nodeOut), comparable(pythonOut));
    await within(client.future(nodeOut.job.id).then((f) => f.result()), 30_000, "the submitted job");
    // The same request id again, through either CLI: the same job, existing.
    const again = await same([...args, "--request-id", "node-submit"], { exitCode: 0 });
    assert.equal(again.messages[0].existing, true);
    assert.equal(again.messages[0].job.id, nodeOut.job.id);
    assert.deepEqual(shape(again.messages[0]), shape(golden("submit")[1].stdout[0]));
    // Inputs from a file (stdin).
    const fromStdin = await nodeCli(gateway.target, ["submit", "--route", "echo", "--inputs-file", "-"], { input: '{"a": 1}' });
    assert.equal(fromStdin.code, 0, fromStdin.stderr);
    assert.equal(lines(fromStdin.stdout)[0].job.route, "echo");
  });

  test("watch prints one WatchResponse per update and exits by how the job ended", async () => {
    const whole = await same(["watch", ids.done], { exitCode: 0 });
    assert.equal(whole.messages.length, 1);
    assert.deepEqual(shape(whole.messages[0]), shape(golden("watch")[1].stdout[0]));
    const history = await same(["watch", ids.done, "--after-revision", "1"], { exitCode: 0 });
    assert.deepEqual(history.messages.map((m) => m.update.job.revision), ["2", "3"]);
    const failed = await same(["watch", ids.failed], { exitCode: 3 });
    assert.deepEqual(shape(failed.messages[0]), shape(golden("watch")[2].stdout[0]));
    assert.match(failed.stderr, /^gateway-client-node: job \w+ failed: UNKNOWN ECHO_FAILURE: the model fell over\n$/);
  });

  test("fetch prints the FetchResponse", async () => {
    const ok = await same(["fetch", ids.done, "--timeout", "60"], { exitCode: 0 });
    assert.deepEqual(ok.messages[0].output, { delay_ms: 10, nested: { a: [1, "two", null, true] } });
    assert.deepEqual(shape(ok.messages[0]), shape(golden("fetch")[0].stdout[0]));
    await same(["fetch", ids.done], { exitCode: 0 });
    const failed = await same(["fetch", ids.failed, "--wait"], { exitCode: 3 });
    assert.deepEqual(shape(failed.messages[0]), shape(golden("fetch")[2].stdout[0]));
  });

  test("list prints one ListResponse per page", async () => {
    const paged = await same(["list", "--label", "golden=cli", "--page-size", "2"], { exitCode: 0 });
    assert.deepEqual(paged.messages.map((m) => m.jobs.length), [2, 1]);
    const [goldenFailed, goldenSucceeded] = golden("list")[0].stdout[0].jobs;
    const [nodeSucceeded, nodeFailed] = paged.messages[0].jobs; // newest first: the third job, then the failed one
    assert.deepEqual(shape(nodeSucceeded), shape(goldenSucceeded));
    assert.deepEqual(shape(nodeFailed), shape(goldenFailed));
    assert.deepEqual(Object.keys(paged.messages[0]).sort(), ["jobs", "nextPageToken"]);
    await same(["list", "--label", "golden=cli", "--page-size", "1", "--pages", "2"], { exitCode: 0 });
    const failed = await same(["list", "--label", "golden=cli", "--state", "failed", "--route", "echo"], { exitCode: 0 });
    assert.deepEqual(failed.messages[0].jobs.map((j) => j.id), [ids.failed]);
    await same(["list", "--label", "golden=cli", "--state", "SUCCEEDED", "--state", "JOB_STATE_FAILED"], { exitCode: 0 });
    const none = await same(["list", "--label", "golden=nothing"], { exitCode: 0 });
    assert.deepEqual(none.messages, [{ jobs: [], nextPageToken: "" }]);
  });

  test("cancel prints the CancelResponse; watch then exits 4", async () => {
    const { job } = await client.submitJob("echo", { delay_ms: 30_000, steps: 100 }, { labels: { golden: "cancel" } });
    await waitFor(async () => (await client.get(job.id)).state === JobState.RUNNING, { what: "the job to run" });
    const node = await nodeCli(gateway.target, ["cancel", job.id]);
    assert.equal(node.code, 0, node.stderr);
    assert.deepEqual(shape(lines(node.stdout)[0]), shape(golden("cancel")[0].stdout[0]));
    await waitFor(async () => (await client.get(job.id)).done, { what: "the job to end" });
    const again = await same(["cancel", job.id], { exitCode: 0 });
    assert.deepEqual(shape(again.messages[0]), shape(golden("cancel")[1].stdout[0]));
    const watched = await same(["watch", job.id], { exitCode: 4 });
    assert.match(watched.stderr, /job \w+ was cancelled: CANCELLED: the job was cancelled/);
  });

  test("retry prints the RetryResponse as the Python CLI does; a second retry the same job", async () => {
    const node = await nodeCli(gateway.target, ["retry", ids.failed]);
    assert.equal(node.code, 0, node.stderr);
    const [first] = lines(node.stdout);
    assert.equal(first.job.retryOf, ids.failed);
    assert.equal(first.existing, false);
    const python = await pythonCli(gateway.target, ["retry", ids.failed]);
    assert.equal(python.code, 0, python.stderr);
    const [second] = lines(python.stdout);
    assert.equal(second.job.id, first.job.id);
    assert.equal(second.existing, true);
    assert.deepEqual(Object.keys(first).sort(), Object.keys(second).sort()); // (the job may have run meanwhile)
    await same(["retry", ids.done], { exitCode: 1 }); // SUCCEEDED: FAILED_PRECONDITION JOB_NOT_RETRYABLE
  });

  test("-q and -o id print the ids alone, -o table the table, as the Python CLI does", async () => {
    const raw = (args) => Promise.all([nodeCli(gateway.target, args), pythonCli(gateway.target, args)]);
    for (const args of [["list", "--label", "golden=cli", "-q"], ["get", ids.failed, "-o", "id"],
      ["get", ids.failed, "-o", "table"]]) {
      const [node, python] = await raw(args);
      assert.equal(node.code, 0, node.stderr);
      assert.equal(node.stdout, python.stdout, args.join(" "));
    }
    const [node] = await raw(["list", "--label", "golden=cli", "-o", "table"]);
    const [head, ...rows] = node.stdout.trimEnd().split("\n");
    assert.deepEqual(head.split(/\s+/), ["ID", "ROUTE", "STATE", "PROGRESS", "AGE", "ERROR"]);
    const listed = new Set(rows.map((r) => r.split(/\s+/)[0]));
    for (const id of [ids.done, ids.failed, ids.third]) assert.ok(listed.has(id), id); // (and a retry of one)
    assert.ok(rows.some((r) => r.includes("ECHO_FAILURE: the model fell over")));
    const submitted = await nodeCli(gateway.target, ["submit", "--route", "echo", "--inputs", "{}", "-q"]);
    assert.match(submitted.stdout, /^[0-9a-f]{32}\n$/);
    const [badNode, badPython] = await raw(["--target", "localhost", "get", ids.done]);
    assert.equal(badNode.code, 2);
    assert.equal(badPython.code, 2);
    assert.match(badNode.stderr, /--target 'localhost' has no port/);
  });

  test("RPC errors print CODE REASON: message, the metadata, the field violations; exit 1", async () => {
    await same(["get", "0".repeat(32)], { exitCode: 1 });
    await same(["submit", "--route", "echo", "--inputs", '{"delay_ms": -1, "steps": "x"}'], { exitCode: 1 });
    await same(["submit", "--route", "nope", "--inputs", "{}"], { exitCode: 1 });
    // A webhook this gateway does not allow (it allows none).
    const refused = await same(["submit", "--route", "echo", "--inputs", "{}", "--webhook", "https://hooks.example.com/x",
      "--webhook-events", "start,completed"], { exitCode: 1 });
    assert.match(refused.stderr, /^INVALID_ARGUMENT WEBHOOK_URL_NOT_ALLOWED: /);
    await same(["watch", ids.done, "--after-revision", "99"], { exitCode: 1 });
    const { job } = await client.submitJob("echo", { delay_ms: 30_000 });
    await waitFor(async () => (await client.get(job.id)).state === JobState.RUNNING, { what: "the job to run" });
    const notDone = await same(["fetch", job.id], { exitCode: 1 });
    assert.match(notDone.stderr, /^FAILED_PRECONDITION JOB_NOT_DONE: .*\n\{"jobId":"\w+","state":"RUNNING"\}\n$/);
    // --timeout passing: exit 5, the job as it is.
    const [nodeWatch, pythonWatch] = await Promise.all([
      nodeCli(gateway.target, ["watch", job.id, "--timeout", "0.5"]),
      pythonCli(gateway.target, ["watch", job.id, "--timeout", "0.5"]),
    ]);
    assert.equal(nodeWatch.code, 5);
    assert.equal(pythonWatch.code, 5);
    assert.deepEqual(stderrLines(nodeWatch.stderr), stderrLines(pythonWatch.stderr));
    assert.match(nodeWatch.stderr, /timed out after 0.5 s: job \w+ is still JOB_STATE_RUNNING at revision 2/);
    const fetched = await same(["fetch", job.id, "--timeout", "0.5"], { exitCode: 5 });
    assert.equal(fetched.messages[0].job.done, false);
    await client.cancel(job.id);
  });

  test("usage errors exit 2", async () => {
    for (const args of [
      [],
      ["list", "--state", "bogus"],
      ["--token", "a", "--token-file", "/nonexistent", "list"],
      ["submit", "--inputs", "{}"],
      ["submit", "--route", "echo", "--inputs", "not json"],
      ["submit", "--route", "echo", "--inputs", "[1]"],
      ["submit", "--route", "echo", "--inputs", "{}", "--inputs-file", "x"],
      ["submit", "--route", "echo", "--inputs", "{}", "--webhook-events", "completed"],
      ["submit", "--route", "echo", "--inputs", "{}", "--webhook", "https://h.example.com/", "--webhook-events", "done"],
      ["fetch", ids.done, "--timeout", "-1"],
      ["fetch", ids.done, "--timeout", "1", "--wait"],
      ["watch"],
      ["nonsense"],
      ["--token-file", "/nonexistent/token", "list"],
    ]) {
      const [node, python] = await Promise.all([nodeCli(gateway.target, args), pythonCli(gateway.target, args)]);
      assert.equal(python.code, 2, `python ${args.join(" ")}`);
      assert.equal(node.code, 2, `node ${args.join(" ")}: ${node.stderr}`);
      assert.match(node.stderr, /gateway-client-node: error: /);
      assert.equal(node.stdout, "");
    }
    const both = await nodeCli(gateway.target, ["list"], { env: { GATEWAY_TOKEN: "a", GATEWAY_TOKEN_FILE: "/x" } });
    assert.equal(both.code, 2);
    const help = await nodeCli(gateway.target, ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Exit codes:/);
  });

  test("GATEWAY_TARGET sets the default target", async () => {
    const { run, CLI_BIN } = await import("./gateway.mjs");
    const viaEnv = await run(process.execPath, [CLI_BIN, "get", ids.done], { env: { GATEWAY_TARGET: gateway.target } });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.equal(lines(viaEnv.stdout)[0].job.id, ids.done);
  });
});
