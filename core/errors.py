"""The one error hierarchy. Services raise these; core.api turns them into JSON responses."""


class DomainError(Exception):
    """A request the domain refuses. `code` is machine-readable, `message` tells a person what to do."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, detail: object = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.detail = detail


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"


class LengthRequired(DomainError):
    status = 411
    code = "length_required"


class PreconditionFailed(DomainError):
    status = 412
    code = "precondition_failed"
