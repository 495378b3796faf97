from rest_framework import serializers

from accounts import scopes
from accounts.models import ApiToken
from core.api import OutputModelSerializer, StrictSerializer


class TokenCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=scopes.ALL), allow_empty=False)
    expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, required=False, allow_null=True)


class TokenRevokeInput(StrictSerializer):
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class TokenOutput(OutputModelSerializer):
    user = serializers.CharField(source="user.username")
    scopes = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "user", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at"]


class TokenCreatedOutput(TokenOutput):
    token = serializers.CharField(help_text="The token itself. Shown only in this response; store it now.")

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "token"]


class MeOutput(serializers.Serializer):
    username = serializers.CharField()
    is_superuser = serializers.BooleanField()
    groups = serializers.ListField(child=serializers.CharField())
    token_scopes = serializers.ListField(child=serializers.CharField(), allow_null=True)
