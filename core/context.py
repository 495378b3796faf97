"""Per-request facts that audit events and logs carry: request id, the actor and the API token in use."""

from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="")
token_id: ContextVar[int | None] = ContextVar("token_id", default=None)
# The authenticated user of the current request (or None). audit.record() falls back to it for
# changes made where no actor is passed explicitly, e.g. admin edits caught by signals.
actor: ContextVar[object | None] = ContextVar("actor", default=None)
# The Celery task being run (name, id), set for the task's duration (config/celery.py): a thread the task starts
# gets it with the rest of the context (contextvars.copy_context), where Celery's own current task is not seen.
task: ContextVar[tuple[str, str] | None] = ContextVar("task", default=None)
