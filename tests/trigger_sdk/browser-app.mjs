// A React page using useRealtimeRunWithStreams exactly as Trigger.dev's docs show,
// with baseURL pointed at sessionstream. Bundled by esbuild; the test reads window.RESULT.
import { createElement as h, useEffect } from "react";
import { createRoot } from "react-dom/client";
import { useRealtimeRunWithStreams } from "@trigger.dev/react-hooks";

const cfg = window.TRIGGER_CONFIG;
const TERMINAL = ["run.completed", "run.failed", "run.canceled"];
window.RESULT = { statuses: [], chunks: [], output: null, error: null, done: false };

function TurnProgress() {
  const { run, streams, error } = useRealtimeRunWithStreams(cfg.runId, {
    accessToken: cfg.token,
    baseURL: cfg.baseURL,
  });
  const chat = streams.chat ?? [];
  useEffect(() => {
    const result = window.RESULT;
    if (run && result.statuses.at(-1) !== run.status) result.statuses.push(run.status);
    result.error = error ? String(error) : null;
    result.chunks = chat;
    result.output = run?.output ?? null;
    result.done = Boolean(run?.isCompleted) && chat.some((e) => TERMINAL.includes(e.type));
  });
  const text = chat
    .filter((e) => e.type === "message.delta")
    .map((e) => e.data.text)
    .join("");
  return h("pre", { id: "text" }, text);
}

createRoot(document.getElementById("root")).render(h(TurnProgress));
