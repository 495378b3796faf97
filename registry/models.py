from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from core.etags import etag_of
from registry.choices import VersionStatus

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
slug_validator = RegexValidator(
    SLUG_PATTERN,
    "Use 1-64 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit.",
)


class RegisteredModel(models.Model):
    """A named model (namespace/name) whose versions CI registers. The unit of access control."""

    namespace = models.CharField(max_length=64, validators=[slug_validator])
    name = models.CharField(max_length=64, validators=[slug_validator])
    description = models.TextField(blank=True)
    owner_group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The last version number handed out; bumped under a row lock so numbers have no gaps.
    latest_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "name"], name="registry_model_unique_name")]
        permissions = [
            ("register_version", "Can register versions, upload artifacts and add card revisions"),
            ("request_promotion", "Can request promotion of versions"),
            ("manage_registeredmodel", "Can manage the model: description, protected aliases, status, access"),
        ]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def etag(self) -> str:
        """The model's entity tag: it changes when what a PATCH changes does (its description). core.etags."""
        return etag_of({"model": self.pk, "description": self.description})


class RegisteredModelUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE)


class RegisteredModelGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE)


class ModelVersion(models.Model):
    """An immutable, content-addressed version. Content columns are protected by triggers (0002)."""

    # no index of its own: every index below starts with it (migration 0006)
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions", db_index=False)
    number = models.PositiveIntegerField()
    digest = models.CharField(max_length=71)  # "sha256:" + 64 hex
    manifest = models.JSONField()
    artifact_uri = models.CharField(max_length=1000)
    framework = models.CharField(max_length=100, blank=True)
    task = models.CharField(max_length=100, blank=True)
    params = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)  # {name: number}
    metric_sources = models.JSONField(default=dict)  # {name: {"dataset", "split"}} where given
    source = models.JSONField(default=dict)  # repository, commit, branch, ci_run_url
    # The OpenLineage run that produced this version, as declared at registration (lineage/ reads it).
    run_id = models.UUIDField(null=True, blank=True, db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Mutable, every change audited:
    tags = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=VersionStatus.choices, default=VersionStatus.REGISTERED)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="registry_version_unique_number"),
            models.UniqueConstraint(fields=["model", "digest"], name="registry_version_unique_digest"),
        ]
        indexes = [
            models.Index(fields=["model", "status", "number"], name="registry_version_status_idx"),
            models.Index(fields=["model", "created_at"], name="registry_version_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.model}:{self.number}"

    @property
    def etag(self) -> str:
        """The version's entity tag: it changes when what can change of it does (tags, status, and created_by, which a
        deleted user's SET_NULL clears). core.etags."""
        return etag_of({"digest": self.digest, "tags": self.tags, "status": self.status, "by": self.created_by_id})


class ModelCardRevision(models.Model):
    """One revision of a version's model card. Append-only: a change is a new revision."""

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="card_revisions")
    revision = models.PositiveIntegerField()
    schema_version = models.CharField(max_length=20)
    content = models.JSONField()  # canonical form, validated against registry/card_schema
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "revision"], name="registry_card_unique_revision")]

    def __str__(self) -> str:
        return f"{self.version} card r{self.revision}"

    @property
    def etag(self) -> str:
        """A revision never changes (a change is a new one) but for created_by, which a deleted user's SET_NULL
        clears: its id and that tell it apart. core.etags."""
        return etag_of({"card_revision": self.pk, "by": self.created_by_id})


class Alias(models.Model):
    """A named, movable pointer to a version (champion, candidate, ...). Every move is audited."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64, validators=[slug_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    protected = models.BooleanField(default=False)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="registry_alias_unique_name")]

    def __str__(self) -> str:
        return f"{self.model}@{self.name}"

    @property
    def etag(self) -> str:
        """The alias's entity tag: it changes with every move (version, protection, who and when). core.etags."""
        at = self.updated_at.isoformat() if self.updated_at else None
        moved = {"version": self.version_id, "protected": self.protected, "by": self.updated_by_id, "at": at}
        return etag_of({"alias": self.pk, **moved})


class BlobHolding(models.Model):
    """A model that has shown it holds a stored blob: the bytes were sent for it and verified against their
    sha256. The blob store is shared by every model, and a sha256 alone is no proof of having the file: a
    manifest may name a registry-stored blob only when a model its registrant may view holds it."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    # When the bytes were last sent for the model again (null: only at created_at). A blob no version names is
    # pruned once every holding of it was last sent before the cutoff (registry.pruning).
    sent_again_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "sha256"], name="registry_blobholding_unique")]
        indexes = [models.Index(fields=["sha256"], name="registry_blobholding_sha_idx")]

    def __str__(self) -> str:
        return f"{self.model} holds {self.sha256}"


class ModelPerm:
    """Object permission codenames on a RegisteredModel (versions, cards and aliases follow it)."""

    VIEW = "view_registeredmodel"
    REGISTER = "register_version"
    PROMOTE = "request_promotion"
    MANAGE = "manage_registeredmodel"
    OWNER = (VIEW, REGISTER, PROMOTE, MANAGE)


class VersionSignature(models.Model):
    """One attached model-signing bundle and the registry's verdict on it. Append-only (database triggers).

    A version may carry several (a re-signed model, a rotated key): the latest is the current one.
    `verified` is True only when the signature verifies with a trusted key *and* the signed files
    are exactly the manifest's files with the same sha256 (registry/signing.py, docs/signing.md).
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="signatures")
    bundle = models.JSONField()  # the Sigstore bundle as sent
    bundle_sha256 = models.CharField(max_length=64)  # of the bundle's canonical JSON
    verified = models.BooleanField()
    reason = models.TextField()
    key_id = models.CharField(max_length=64, blank=True)  # sha256 hex of the trusted key the signature verified with
    files_checked = models.PositiveIntegerField(default=0)
    problems = models.JSONField(default=dict)  # {"mismatched", "missing", "extra"}: file paths
    verified_at = models.DateTimeField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.version} signature #{self.pk}"
