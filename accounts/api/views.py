from django.utils.cache import patch_cache_control
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from accounts import scopes, selectors, services
from accounts.api.serializers import (
    MeOutput,
    TokenCreatedOutput,
    TokenCreateInput,
    TokenOutput,
    TokenRevokeInput,
)
from accounts.models import ApiToken
from accounts.permissions import token_scopes
from core.api import BaseAPIView


class MeView(BaseAPIView):
    @extend_schema(responses=MeOutput, summary="Who am I: user, groups and the scopes of the token in use")
    def get(self, request):
        user = request.user
        return Response(
            MeOutput(
                {
                    "username": user.get_username(),
                    "is_superuser": user.is_superuser,
                    "groups": sorted(user.groups.values_list("name", flat=True)),
                    "token_scopes": token_scopes(request),
                }
            ).data
        )


class TokenListView(BaseAPIView):
    required_scopes = {"GET": scopes.READ, "POST": scopes.TOKENS_WRITE}

    @extend_schema(responses=TokenOutput(many=True), summary="List my API tokens")
    def get(self, request):
        return Response(TokenOutput(selectors.tokens_of(user=request.user), many=True).data)

    @extend_schema(
        request=TokenCreateInput,
        responses={201: TokenCreatedOutput},
        summary="Create an API token for myself (the token is shown once)",
    )
    def post(self, request):
        data = TokenCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.token_create(
            actor=request.user,
            user=request.user,
            max_scopes=token_scopes(request),
            max_expires_at=request.auth.expires_at if isinstance(request.auth, ApiToken) else None,
            **data.validated_data,
        )
        body = TokenOutput(issued.token).data | {"token": issued.plaintext}
        response = Response(body, status=status.HTTP_201_CREATED)
        patch_cache_control(response, no_store=True)  # the one answer holding the token: no cache keeps a copy
        return response


class TokenRevokeView(BaseAPIView):
    required_scopes = {"POST": scopes.TOKENS_WRITE}

    @extend_schema(request=TokenRevokeInput, responses=TokenOutput, summary="Revoke one of my API tokens")
    def post(self, request, token_id: int):
        data = TokenRevokeInput(data=request.data)
        data.is_valid(raise_exception=True)
        token = services.token_revoke(actor=request.user, token_id=token_id, **data.validated_data)
        return Response(TokenOutput(token).data)
