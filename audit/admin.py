from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the log is append-only in the database as well."""

    list_display = ["seq", "at", "actor_username", "action", "subject_type", "subject_id", "subject_repr"]
    list_filter = ["action", "subject_type"]
    search_fields = ["subject_id", "subject_repr", "actor_username", "request_id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
