// React pages using the Trigger.dev hooks exactly as Trigger.dev's docs show, with
// baseURL pointed at sessionstream. Bundled by esbuild; the test reads window.RESULT.
//
// window.TRIGGER_CONFIG = {baseURL, runId, token | tokenUrl, mode, refreshUrl?}
//   mode "withStreams": useRealtimeRunWithStreams(runId, {accessToken, baseURL})
//   mode "hooks":       useRealtimeRun and useRealtimeStream(runId, "chat"), each given
//                       {accessToken, baseURL} (and refreshAccessToken with refreshUrl)
//   mode "provider":    the same two hooks with no options, inside
//                       <TriggerAuthContext.Provider value={{accessToken, baseURL, ...}}>
// tokenUrl: the page's own backend, asked for the first token as the page starts (so a
// short-lived one starts its life with the page); refreshUrl: the same backend, asked for
// a fresh token when the server answers 401 (the SDK's refreshAccessToken);
// window.RESULT.refreshes counts those calls.
import { createElement as h, useEffect } from "react";
import { createRoot } from "react-dom/client";
import {
  TriggerAuthContext,
  useRealtimeRun,
  useRealtimeRunWithStreams,
  useRealtimeStream,
} from "@trigger.dev/react-hooks";

const cfg = window.TRIGGER_CONFIG;
const TERMINAL = ["run.completed", "run.failed", "run.canceled"];
const RESULT = {
  run: { statuses: [], output: null, error: null, errors: [], finished: false },
  stream: { chunks: [], error: null, errors: [], ended: false },
  refreshes: 0,
  done: false,
};
window.RESULT = RESULT;

const refreshAccessToken = cfg.refreshUrl
  ? async () => {
      RESULT.refreshes += 1;
      return tokenFrom(cfg.refreshUrl);
    }
  : undefined;
async function tokenFrom(url) {
  const response = await fetch(url, { cache: "no-store" });
  return (await response.json()).token;
}
const auth = {
  accessToken: cfg.token ?? (await tokenFrom(cfg.tokenUrl)),
  baseURL: cfg.baseURL,
  refreshAccessToken,
};

function describe(error) {
  if (!error) return null;
  return { message: String(error.message ?? error), status: error.status ?? null, name: error.name ?? null };
}

function noteError(target, error) {
  const described = describe(error);
  target.error = described;
  if (described && target.errors.at(-1)?.message !== described.message) target.errors.push(described);
}

function noteRun(run, error) {
  const result = RESULT.run;
  if (run && result.statuses.at(-1) !== run.status) result.statuses.push(run.status);
  result.output = run?.output ?? null;
  result.finished = Boolean(run?.finishedAt);
  noteError(result, error);
}

function noteStream(chunks, error) {
  const result = RESULT.stream;
  result.chunks = chunks;
  result.ended = chunks.some((chunk) => TERMINAL.includes(chunk.type));
  noteError(result, error);
}

function text(chunks) {
  return chunks
    .filter((chunk) => chunk.type === "message.delta")
    .map((chunk) => chunk.data.text)
    .join("");
}

function WithStreams() {
  const { run, streams, error } = useRealtimeRunWithStreams(cfg.runId, auth);
  const chat = streams.chat ?? [];
  useEffect(() => {
    noteRun(run, error);
    noteStream(chat, error);
    RESULT.done = RESULT.run.finished && RESULT.stream.ended;
  });
  return h("pre", { id: "text" }, text(chat));
}

function RunOnly({ options }) {
  const { run, error } = useRealtimeRun(cfg.runId, options);
  useEffect(() => {
    noteRun(run, error);
    RESULT.done = RESULT.run.finished && RESULT.stream.ended;
  });
  return h("p", { id: "status" }, run?.status ?? "");
}

function StreamOnly({ options }) {
  const { parts, error } = useRealtimeStream(cfg.runId, "chat", options);
  useEffect(() => {
    noteStream(parts, error);
    RESULT.done = RESULT.run.finished && RESULT.stream.ended;
  });
  return h("pre", { id: "text" }, text(parts));
}

function Page() {
  if (cfg.mode === "withStreams") return h(WithStreams);
  const pair = (options) => [h(RunOnly, { key: "run", options }), h(StreamOnly, { key: "stream", options })];
  if (cfg.mode === "provider") {
    return h(TriggerAuthContext.Provider, { value: auth }, ...pair(undefined));
  }
  return h("div", null, ...pair(auth));
}

createRoot(document.getElementById("root")).render(h(Page));
