// Drives the real Trigger.dev SDK against a sessionstream server; prints one JSON line.
//
//   node subscribe.mjs '<json config>'
//
// config: {baseURL, runId, token, key?, abortAfter?, resumeTimeoutSeconds?,
//          foreignToken?, badToken?, deadlineMs?}
// Phase "watch": configure({baseURL, accessToken}) then
//   for await (const part of runs.subscribeToRun(runId).withStreams()) ...
// collecting run updates and stream chunks until the run has finished and the
// stream has delivered its terminal event. With abortAfter, the loop breaks
// after that many chunks and resumes with streams.read(runId, key,
// {startIndex: lastSeq + 1}) (the SDK sends Last-Event-ID: lastSeq).
// Phase "refused": a token for another run must get nothing; the SDK says
// nothing on 401/403, so direct fetches record the statuses the server sent.
import { auth, configure, runs, streams } from "@trigger.dev/sdk";

const cfg = JSON.parse(process.argv[2]);
const key = cfg.key ?? "chat";
const TERMINAL = new Set(["run.completed", "run.failed", "run.canceled"]);
const result = { runs: [], chunks: [], resumed: [], refused: null, errors: [] };

process.on("unhandledRejection", (error) => {
  result.errors.push(`unhandledRejection: ${error?.status ?? ""} ${error?.message ?? error}`);
});

function withDeadline(ms, work) {
  let timer;
  const deadline = new Promise((resolve) => {
    timer = setTimeout(() => resolve("timeout"), ms);
  });
  return Promise.race([work.then(() => "done"), deadline]).finally(() => clearTimeout(timer));
}

function summary(run) {
  return {
    id: run.id,
    status: run.status,
    taskIdentifier: run.taskIdentifier,
    isCompleted: run.isCompleted,
    isSuccess: run.isSuccess,
    isFailed: run.isFailed,
    finishedAt: run.finishedAt ? run.finishedAt.toISOString() : null,
    createdAt: run.createdAt instanceof Date && !isNaN(run.createdAt) ? run.createdAt.toISOString() : null,
    output: run.output ?? null,
    metadata: run.metadata ?? null,
    realtimeStreams: run.realtimeStreams,
  };
}

async function watch() {
  configure({ baseURL: cfg.baseURL, accessToken: cfg.token });
  const subscription = runs.subscribeToRun(cfg.runId);
  let finished = false;
  let terminal = false;
  for await (const part of subscription.withStreams()) {
    if (part.type === "run") {
      result.runs.push(summary(part.run));
      finished = Boolean(part.run.finishedAt);
    } else {
      result.chunks.push({ key: part.type, chunk: part.chunk });
      terminal = terminal || TERMINAL.has(part.chunk?.type);
      if (cfg.abortAfter && result.chunks.length >= cfg.abortAfter) break; // drop mid-stream
    }
    if (finished && terminal) break;
  }
  if (cfg.abortAfter) {
    const lastSeq = result.chunks.at(-1).chunk.seq;
    const stream = await streams.read(cfg.runId, key, {
      startIndex: lastSeq + 1,
      timeoutInSeconds: cfg.resumeTimeoutSeconds,
    });
    for await (const chunk of stream) {
      result.resumed.push(chunk);
    }
  }
}

async function refused() {
  const out = { direct: {}, sdkParts: 0, sdkOutcome: null };
  for (const [name, token] of [["foreign", cfg.foreignToken], ["bad", cfg.badToken]]) {
    for (const path of [`runs/${cfg.runId}?offset=-1`, `streams/${cfg.runId}/${key}`]) {
      const response = await fetch(`${cfg.baseURL}/realtime/v1/${path}`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      const body = await response.json().catch(() => null);
      out.direct[`${name} ${path.split("/")[0]}`] = { status: response.status, body };
    }
  }
  // The SDK itself, with the foreign token: it must yield nothing (and here, says nothing).
  const controller = new AbortController();
  const work = auth.withAuth({ baseURL: cfg.baseURL, accessToken: cfg.foreignToken }, async () => {
    const subscription = runs.subscribeToRun(cfg.runId, { signal: controller.signal });
    for await (const _part of subscription.withStreams()) {
      out.sdkParts += 1;
    }
  });
  out.sdkOutcome = await withDeadline(1500, work.catch((e) => out.errors = String(e)));
  controller.abort();
  result.refused = out;
}

const deadlineMs = cfg.deadlineMs ?? 60000;
result.watch = await withDeadline(deadlineMs, watch().catch((e) => result.errors.push(`watch: ${e}`)));
if (cfg.foreignToken) await refused();
console.log(JSON.stringify(result));
process.exit(0);
