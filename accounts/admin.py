from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import router, transaction

from accounts import services
from accounts.models import ApiToken
from core.errors import DomainError


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their owners (API, CLI); operators can see them here and revoke those that
    accounts.services.token_revoke lets them revoke: their own, or anyone's as a superuser."""

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

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        """All the selected tokens or none: a selection holding a token the user may not revoke (another user's,
        for staff who are not superusers) revokes nothing and says which."""
        tokens = list(queryset.filter(revoked_at__isnull=True).select_related("user").order_by("pk"))
        refused = [token for token in tokens if not services.token_revocable_by(request.user, token)]
        if refused:
            names = ", ".join(f"{token.prefix} ({token.user.get_username()})" for token in refused)
            self.message_user(
                request,
                f"Nothing was revoked: only a superuser may revoke another user's token ({names}).",
                messages.ERROR,
            )
            return
        if not tokens:
            self.message_user(request, "The selected tokens were already revoked.", messages.WARNING)
            return
        try:
            with transaction.atomic(using=router.db_for_write(ApiToken)):
                for token in tokens:
                    services.token_revoke(actor=request.user, token_id=token.pk, reason="revoked in admin")
        except DomainError as exc:  # e.g. revoked meanwhile by someone else: the whole selection rolls back
            self.message_user(request, f"Nothing was revoked: {exc.message}", messages.ERROR)
            return
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)


User = get_user_model()


class AuditedUserAdmin(UserAdmin):
    """Django's user admin, with the password form in one transaction, so that the password change and its audit
    event (accounts.signals) commit together, as the add, change and delete views already do."""

    def get_deleted_objects(self, objs, request):
        """Deleting a user takes its API tokens with it, each live one audited as revoked (accounts.signals). The
        tokens' admin deletes no token by itself, which Django read as a permission the deletion lacked: a user
        holding a token could not be deleted at all."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed.discard(ApiToken._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    def user_change_password(self, request, id, form_url=""):
        with transaction.atomic(using=router.db_for_write(self.model)):
            return super().user_change_password(request, id, form_url)


if admin.site.is_registered(User) and type(admin.site.get_model_admin(User)) is UserAdmin:
    admin.site.unregister(User)
    admin.site.register(User, AuditedUserAdmin)
