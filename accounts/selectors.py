from accounts.models import ApiToken


def tokens_of(*, user):
    """A user's own tokens; the hash never leaves the database layer."""
    return ApiToken.objects.filter(user=user).select_related("user").defer("token_hash")
