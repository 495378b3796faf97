from django.contrib import admin, messages

from accounts import services
from accounts.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their owners (API, CLI); operators can see and revoke them here."""

    list_display = ["prefix", "name", "user", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "name", "user__username"]
    exclude = ["token_hash"]
    readonly_fields = [f for f in list_display]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset.filter(revoked_at__isnull=True):
            services.token_revoke(actor=request.user, token_id=token.pk, reason="revoked in admin")
        messages.success(request, "Tokens revoked.")
