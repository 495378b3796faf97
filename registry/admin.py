from django.contrib import admin

from registry.models import Alias, ModelCardRevision, ModelVersion, RegisteredModel


class ReadOnlyAdmin(admin.ModelAdmin):
    """Operators inspect registry data here; every change goes through the audited services (API/UI)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(ReadOnlyAdmin):
    list_display = ["namespace", "name", "owner_group", "latest_number", "created_at"]
    search_fields = ["namespace", "name"]


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["model", "number", "digest", "status", "created_by", "created_at"]
    list_filter = ["status"]
    search_fields = ["model__namespace", "model__name", "digest"]
    list_select_related = ["model", "created_by"]


@admin.register(Alias)
class AliasAdmin(ReadOnlyAdmin):
    list_display = ["model", "name", "version", "protected", "updated_at"]
    list_select_related = ["model", "version"]


@admin.register(ModelCardRevision)
class ModelCardRevisionAdmin(ReadOnlyAdmin):
    list_display = ["version", "revision", "schema_version", "created_by", "created_at"]
    list_select_related = ["version__model", "created_by"]
