"""What people write into the workflow (a request's reason, a review's comment, a rollback's reason): one bound,
which the API's serializers and the services (so the web UI's forms too) apply. The audit log keeps the text for
good, so an oversized one is refused, not stored."""

from core.errors import InvalidInput

MAX_CHARS = 5000


def check(field: str, text: str) -> None:
    if len(text) > MAX_CHARS:
        problem = f"Ensure this field has no more than {MAX_CHARS} characters (it has {len(text)})."
        raise InvalidInput(f"Invalid {field}: {problem}", detail={field: [problem]})
