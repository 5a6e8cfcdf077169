"""Queue mode's job store: one interface, an embedded SQLite backend and a Redis backend.

``model`` (the job and its status table), ``rules`` (what each operation does to a job),
``ordering`` (which kinds a lease takes first), ``policy`` (limits from the settings), ``url``
(FASTVLM_QUEUE_URL), ``codec`` (a job as flat fields), ``store`` (the JobStore protocol and
``open_store``), ``notices`` (wake-ups when jobs are queued or finish), ``sqlite_store`` and
``redis_store`` (+ ``redis_lua``). Importing this package
loads neither sqlite3 nor redis; ``open_store`` imports the backend it needs.
"""

from .model import TERMINAL, IllegalTransition, Job, JobEvent, JobKind, JobStatus, apply_event, is_job_id
from .policy import JobPolicy, resolve_state_dir
from .store import JobStore, SweepReport, open_store, open_store_from_settings

__all__ = [
    "TERMINAL",
    "IllegalTransition",
    "Job",
    "JobEvent",
    "JobKind",
    "JobPolicy",
    "JobStatus",
    "JobStore",
    "SweepReport",
    "apply_event",
    "is_job_id",
    "open_store",
    "open_store_from_settings",
    "resolve_state_dir",
]
