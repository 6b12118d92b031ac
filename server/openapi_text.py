"""What the OpenAPI document tells a reader about each operation: its tag and description.

Kept apart from the shapes in ``server/openapi.py`` because it is prose, read by people
and by client generators (which turn tags into modules and descriptions into
docstrings); a test checks that every operation the document has is described here.
"""

from __future__ import annotations

from typing import Final

#: The ``Idempotency-Key`` header, in prose beside its declared parameter, because a
#: client generator turns the description into the method's docstring.
IDEMPOTENT = (
    "An `Idempotency-Key` header makes it safe to retry: a retry with the same key "
    "returns the first response and starts nothing new."
)

#: the document's tags, in the order a reader meets them
TAGS: Final = (
    ("sessions", "The documented AI chat session API: the row, a turn, examples."),
    ("history", "Every event of a session and its runs; rollbacks as new revisions."),
    ("runs", "A turn or an example batch: its status, and cancelling it."),
    ("campaigns", "sessionstream's minimal campaigns and sequence nodes a session needs."),
    ("log", "Signed checkpoints and Merkle proofs over the whole log, for auditors."),
)

#: operationId -> (tag, description)
OPERATIONS: Final[dict[str, tuple[str, str]]] = {
    "forkSession": (
        "history",
        "A new session of the caller's, whose state is the source's as of a log position "
        "or session version; its row names the source in `forked_from`. The source is "
        "untouched, and a run in progress on it does not block the fork.",
    ),
    "sessionDiff": (
        "history",
        "What changed between two versions of a session: skeleton fields, the draft's "
        "subject and body as a unified diff, and the messages added.",
    ),
    "logCheckpoint": (
        "log",
        "The log's newest signed checkpoint (tree size and root hash) as a C2SP signed "
        "note, for auditors who verify exports offline.",
    ),
    "logInclusion": (
        "log",
        "An RFC 9162 inclusion proof for one of the caller's own events: hashes only, never data.",
    ),
    "logConsistency": (
        "log",
        "An RFC 9162 consistency proof between two tree sizes: that the log only grew.",
    ),
    "listSessions": (
        "sessions",
        "The caller's sessions of one campaign, oldest first (`created_at` ascending); "
        "an empty list when there are none.",
    ),
    "createSession": (
        "sessions",
        "An empty session for a node of one of the caller's campaigns; no model work "
        "happens. The `ETag` header carries its version. " + IDEMPOTENT,
    ),
    "getSession": (
        "sessions",
        "The session row; the `ETag` header carries its version, for `If-Match`. "
        "With `as_of`, the row as it was at that log position or time.",
    ),
    "patchSession": (
        "sessions",
        "Writes only the keys present (an explicit null writes null); unknown keys are "
        "400. Writing `skeleton` clears `generated_examples` unless the same body sets "
        "them. `If-Match` makes the change conditional on the version it is based on.",
    ),
    "deleteSession": (
        "sessions",
        "Deletes the session (a tombstone: its owner can still read its events) and "
        "cancels its active run.",
    ),
    "startTurn": (
        "sessions",
        "Claims the session (`task_status` becomes `chat_processing`, 409 while it is "
        "set) and starts a chat turn; answers at once with the run's id and a token for "
        "its realtime stream. If the run cannot be started the claim is released before "
        "the 500, so the session can be retried. " + IDEMPOTENT,
    ),
    "generateExamples": (
        "sessions",
        "Claims the session (`generating_examples`) and writes one example per lead from "
        "the current skeleton (400 without one); `isFirstBatch` false appends to "
        "`generated_examples` instead of replacing them. " + IDEMPOTENT,
    ),
    "sessionEvents": (
        "history",
        "The session's events and its runs' events in log order, each with its hash and "
        "what the hash covers, so an auditor can recompute every chain; page with "
        "`after` = the previous page's `next`.",
    ),
    "rollbackSkeleton": (
        "history",
        "Makes the skeleton of an earlier `framework_version` current again, as a new "
        "revision (history is never rewritten); 409 while a run is active.",
    ),
    "rollbackDraft": (
        "history",
        "Makes the draft at `index` of `draft_history` current again, as a new revision; "
        "409 while a run is active.",
    ),
    "getRun": ("runs", "A run's status, timestamps, progress and, once it ended, its output."),
    "cancelRun": (
        "runs",
        "Ends the run as canceled and frees its session; the answer is the run as it is then.",
    ),
    "listCampaigns": ("campaigns", "The caller's campaigns."),
    "createCampaign": ("campaigns", "A campaign to hang sequence nodes and sessions on."),
    "getCampaign": ("campaigns", "One of the caller's campaigns."),
    "deleteCampaign": ("campaigns", "Deletes one of the caller's campaigns."),
    "listNodes": ("campaigns", "The campaign's sequence nodes."),
    "addNode": (
        "campaigns",
        "Adds a sequence node to the campaign; a session is created for a node.",
    ),
}
