// Type-checked by `npm run typecheck` only (tsc --noEmit): the declarations serve a TypeScript caller.
import { GatewayClient, JobFailedError, JobState, type Job } from "../src/index.js";

async function example(): Promise<void> {
  const client = new GatewayClient("127.0.0.1:50051", { token: "tok", timeout: 10 });
  const future = await client.submit("echo", { text: "hi" }, { labels: { team: "a" } });
  future.onUpdate((job: Job) => console.log(job.revision, job.state === JobState.RUNNING));
  try {
    console.log(await future.result());
  } catch (err) {
    if (err instanceof JobFailedError) console.log(err.reason, err.job.id);
  }
  for await (const job of client.watch(future.jobId)) console.log(job.progress, job.segments.length);
  const page = await client.list({ states: ["succeeded"], pageSize: 10 });
  console.log(page.nextPageToken, page.jobs.map((j) => j.id));
  client.close();
}
void example;
