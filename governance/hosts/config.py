"""Validation of a target's host configuration, shared by the host modules."""

from core.errors import InvalidInput

SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential", "authorization")


def check_fields(config, *, kind: str, required: dict[str, type], optional: dict[str, type]) -> dict:
    """Exact keys with the right types; secret-looking keys are refused (use credentials_ref)."""
    if not isinstance(config, dict):
        raise InvalidInput(f"config for {kind} must be an object.", detail={"config": ["Must be an object."]})
    allowed = {**required, **optional}
    errors = {}
    for key in config:
        if any(word in key.lower() for word in SECRET_WORDS):
            errors[f"config.{key}"] = ["Secrets never go in config: name them in credentials_ref (env:VAR_NAME)."]
        elif key not in allowed:
            errors[f"config.{key}"] = [f"Unknown field for {kind}. Allowed: {', '.join(sorted(allowed))}."]
    for key in required:
        if key not in config:
            errors[f"config.{key}"] = [f"Required for {kind}."]
    for key, value in config.items():
        typ = allowed.get(key)
        if typ is None:
            continue
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if not ok or (isinstance(value, str) and not value.strip()):
            errors[f"config.{key}"] = [f"Must be a non-empty {typ.__name__}."]
    if errors:
        first = next(iter(errors))
        raise InvalidInput(f"Invalid {kind} config: {first}: {errors[first][0]}", detail=errors)
    return dict(config)
