"""Every write to the registry. Each runs in one transaction with its audit event."""

import contextlib
import copy
import dataclasses
import hashlib
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from guardian.shortcuts import assign_perm

from accounts import access
from audit.chain import canonical_json
from audit.services import SUBJECT_REPR_LENGTH, insert_sql, json_text_around, linked, new_event, record, subject_text
from core import context
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.etags import check_if_match
from core.locks import lock_names
from registry import cards, selectors
from registry import manifest as manifests
from registry.choices import STATUS_TRANSITIONS, VersionStatus
from registry.models import (
    Alias,
    BlobHolding,
    ModelCardRevision,
    ModelPerm,
    ModelVersion,
    RegisteredModel,
    VersionSignature,
    slug_validator,
)
from registry.storage import StoredBlob, artifact_too_large, blob_store, bounded_upload

REGISTRY_URI = "registry://"
_VERSION_LABEL = ModelVersion._meta.label_lower


def _validate_slug(value: str, field: str) -> str:
    try:
        slug_validator(value)
    except DjangoValidationError as exc:
        raise InvalidInput(f"{field} '{value}': {exc.messages[0]}", detail={field: exc.messages}) from None
    return value


def model_create(*, actor, namespace: str, name: str, description: str = "", owner_group: str | None = None):
    """Create a model; its creator (and owner group, if named) get every object permission on it."""
    _validate_slug(namespace, "namespace")
    _validate_slug(name, "name")
    group = None
    if owner_group:
        group = Group.objects.filter(name=owner_group).first()
        if group is None:
            raise InvalidInput(f"No group named '{owner_group}'.", detail={"owner_group": ["Unknown group."]})
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(
                namespace=namespace, name=name, description=description, owner_group=group, created_by=actor
            )
            for perm in ModelPerm.OWNER:
                assign_perm(perm, actor, model)
                if group is not None:
                    assign_perm(perm, group, model)
            record(
                action="model.created",
                subject=model,
                actor=actor,
                after={
                    "namespace": namespace,
                    "name": name,
                    "description": description,
                    "owner_group": owner_group,
                    "granted": {"user": actor.get_username(), "group": owner_group, "perms": list(ModelPerm.OWNER)},
                },
            )
    except IntegrityError:
        raise _name_taken(actor, namespace, name) from None
    return model


def _name_taken(actor, namespace: str, name: str) -> Conflict:
    """Names are unique across the registry, so taken is taken; one taken by a model the actor may not view says
    so, or registry-cli's --create-model went on to a 404 whose remedy is to create the model."""
    taken = selectors.model_at(namespace, name, user=actor)
    if taken is None or access.has_perm(actor, ModelPerm.VIEW, taken):
        return Conflict(f"A model named {namespace}/{name} already exists.", code="already_exists")
    return Conflict(
        f"The name {namespace}/{name} is taken by a model you may not view: ask its owners for access, or choose "
        "another name.",
        code="name_taken",  # not already_exists: a "create unless it exists" client must not go on to use it
    )


def model_update(*, actor, model: RegisteredModel, description: str, if_match: str | None = None) -> RegisteredModel:
    """Change a model's description, audited. With `if_match` (an If-Match header) only if the model is still the
    one that ETag was read from, or already as asked. The same description again writes and records nothing."""
    with transaction.atomic():
        model = RegisteredModel.objects.select_for_update(no_key=True).get(pk=model.pk)
        if description == model.description:
            return model
        check_if_match(if_match, model.etag, f"Model {model}")
        before = {"description": model.description}
        model.description = description
        model.save(update_fields=["description"])
        record(action="model.updated", subject=model, actor=actor, before=before, after={"description": description})
    return model


@dataclass(frozen=True)
class VersionContent:
    """What a client declares about a version; everything but tags is immutable once registered."""

    manifest: dict
    artifact_uri: str = ""
    framework: str = ""
    task: str = ""
    params: dict | None = None
    metrics: dict | None = None
    source: dict | None = None
    run_id: uuid.UUID | None = None


def _split_metrics(metrics: dict) -> tuple[dict, dict]:
    """{name: number | {"value", "dataset"?, "split"?}} -> ({name: number}, {name: {dataset, split}})."""
    values, sources = {}, {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            values[name] = value["value"]
            sources[name] = {k: value[k] for k in ("dataset", "split") if value.get(k)}
        else:
            values[name] = value
    return values, sources


def _check_registry_files(manifest: dict, *, actor) -> None:
    """For the registry's own storage: every file must be stored, with the declared size, and held by a model
    the registrant may view (BlobHolding): a stored blob another model holds counts as not uploaded until its
    bytes are sent for this one, so a sha256 learnt elsewhere opens no file. Run in the transaction that inserts
    the version: the blobs' locks (lock_blobs) keep the pruning from deleting what was found here until the version
    naming them commits."""
    shas = sorted({f["sha256"] for f in manifest["files"]})
    lock_blobs(shas, shared=True)
    held = selectors.blobs_held(user=actor, shas=shas)
    missing, wrong = selectors.stored_file_problems(manifest, look_up=[sha for sha in shas if sha in held])
    sizes = {f["path"]: f["size"] for f in manifest["files"]}
    too_large = [path for path in missing if sizes[path] > settings.MAX_ARTIFACT_BYTES]
    if too_large:  # said now: their upload would be refused (413) before a byte of it is read
        problem = artifact_too_large(f"{sizes[too_large[0]]} bytes")
        raise InvalidInput(f"{', '.join(too_large[:20])}: {problem}", code="too_large", detail={"too_large": too_large})
    if missing or wrong:
        parts = []
        if missing:
            parts.append("not uploaded: " + ", ".join(missing[:20]))
        if wrong:
            parts.append("size differs: " + ", ".join(wrong[:20]))
        raise InvalidInput(
            "Manifest names files the registry does not hold for this model; upload them first "
            "(PUT …/artifacts/sha256:<hex>). " + "; ".join(parts) + ".",
            code="artifacts_missing",
            detail={"missing": missing, "size_mismatch": wrong},
        )


def blob_upload(*, model: RegisteredModel, chunks, sha256: str, size: int | None = None, actor=None) -> StoredBlob:
    """Store bytes sent for `model`, verified against their sha256 (and size) and at most MAX_ARTIFACT_BYTES, and
    record that it holds them (_blob_received). `actor` defaults to the one the request context names
    (audit.services.new_event)."""
    blob = blob_store().put(bounded_upload(chunks, expected_size=size), expected_sha256=sha256, expected_size=size)
    return _blob_received(model=model, blob=blob, actor=actor)


def lock_blobs(shas, *, shared: bool) -> None:
    """Lock stored blobs by sha256 until the transaction ends: shared by whoever relies on their bytes staying
    stored (a holding recorded, a version registered), exclusive by the pruning that deletes them
    (registry.pruning). One lock per first byte of the sha256 (as the store's folders), not per blob: a manifest of
    10,000 files took 10,000 locks, beyond PostgreSQL's shared lock table (max_locks_per_transaction x
    connections, about 6,400 by default), and failed; now at most 256. A pruning then waits for registrations
    of other blobs of its byte too, which costs nothing that matters."""
    lock_names("registry.blob", {sha256[:2] for sha256 in shas}, shared=shared)


def _blob_received(*, model: RegisteredModel, blob: StoredBlob, actor) -> StoredBlob:
    """Record that `model` holds a blob whose bytes were just sent for it (and verified), or, for a presigned
    upload completed with nothing PUT, whose bytes a model the sender may view holds (upload_complete checks). A
    model's first upload of some bytes is audited (`artifact.uploaded`: sha256, size and whether the store already
    had them, never the bytes), since holding them lets its viewers use them; sending them again for it is noted
    (sent_again_at, which keeps an unnamed blob from the pruning a while longer: a CI job that skipped the PUT
    because the bytes were stored is about to name them) but not audited: it changes no one's access.

    Returns the blob as the sender is told of it: `created` (201) unless a model the sender may view held these
    bytes before. Whether a model hidden from them holds a file they have is not told (the store's "already had
    them" said so), as upload_start does not; the audit event's `new_to_store` keeps the store's answer.

    Bytes found already stored may have been pruned since (registry.pruning deletes a blob no version names once
    its holdings are old): under the blob's lock the store is asked again, and a 409 asks for the file again
    rather than a holding of nothing."""
    told = blob  # new to the store is new to the sender; else it is new unless a model they may view had it
    if not blob.created:
        sender = actor if actor is not None else context.actor.get()
        told = dataclasses.replace(blob, created=not selectors.blobs_held(user=sender, shas=[blob.sha256]))
    with transaction.atomic():
        lock_blobs([blob.sha256], shared=True)
        if not blob.created and blob_store().size(blob.sha256) is None:
            raise Conflict(
                f"The registry deleted the stored copy of {blob.sha256} (no version named it) while these bytes "
                "were being received; nothing was recorded. Send the file again.",
                code="artifact_pruned",
            )
        holding, held_now = BlobHolding.objects.get_or_create(model=model, sha256=blob.sha256)
        if held_now:
            after = {"sha256": blob.sha256, "size": blob.size, "new_to_store": blob.created}
            record(action="artifact.uploaded", subject=model, actor=actor, after=after)
        else:
            BlobHolding.objects.filter(pk=holding.pk).update(sent_again_at=timezone.now())
    return told


def _s3_store():
    from registry.s3 import S3BlobStore  # boto3 is imported only where S3 is used

    store = blob_store()
    if not isinstance(store, S3BlobStore):
        raise Conflict(
            "presigned uploads need ARTIFACT_STORAGE=s3; this registry stores artifacts on its local filesystem. "
            "Upload the file through the API instead: PUT …/artifacts/sha256:<hex>.",
            code="presign_unsupported",
        )
    return store


def upload_start(*, user, sha256: str, size: int):
    """A presigned PUT URL for one large file (S3 storage only). It says the bytes are already stored (the PUT
    may be skipped) only when a model the user may view holds them: a sha256 learnt elsewhere is no file."""
    store = _s3_store()
    if size > settings.MAX_ARTIFACT_BYTES:
        problem = artifact_too_large(f"{size} bytes")
        raise InvalidInput(problem, code="too_large", detail={"size": [problem]})
    upload = store.presign_put(sha256=sha256, size=size)
    if upload.already_stored and not selectors.blobs_held(user=user, shas=[sha256]):
        upload = dataclasses.replace(upload, already_stored=False)
    return upload


def upload_complete(*, user, model: RegisteredModel, upload_id: str) -> StoredBlob:
    """Verify a presigned upload's staged bytes and store them for `model`. Completing with nothing PUT is
    only for bytes a model the user may view already holds (404 otherwise, as if nothing were stored)."""
    blob = _s3_store().complete(upload_id)
    if not blob.received and not selectors.blobs_held(user=user, shas=[blob.sha256]):
        from registry.s3 import nothing_uploaded

        raise nothing_uploaded(upload_id)  # the answer for bytes no model holds: whether one does is not told
    return _blob_received(model=model, blob=blob, actor=user)


def _normalize_uri(uri: str, model: RegisteredModel, digest: str) -> str:
    """A registry:// URI is the registry's to write: `registry://<ns>/<name>@<digest>` of this model and version,
    which the verified-digest rule trusts and whose part after "@" a managed host would deploy as its revision. A
    client sends nothing, `registry://`, or exactly that; another model, digest or branch is refused."""
    canonical = f"{REGISTRY_URI}{model.namespace}/{model.name}@{digest}"
    if uri in ("", REGISTRY_URI, canonical):
        return canonical
    if uri.startswith(REGISTRY_URI):
        message = (
            f"artifact_uri '{uri[:200]}' is not this version's own: a registry:// URI names the model and digest it "
            f'is registered as. Send "registry://" (or no artifact_uri) and the registry stores {canonical}.'
        )
        raise InvalidInput(message, detail={"artifact_uri": [message]})
    return uri


def same_json(stored, given) -> bool:
    """Equal as JSON values, numbers by value: jsonb keeps 1.5e23 as 150000000000000000000000, which
    reads back as an int unequal to the float sent (a CI re-run then drew a digest_conflict). Walks with a
    stack of its own, not recursion: params nested a few hundred levels deep are valid JSON."""
    pairs = [(stored, given)]
    while pairs:
        a, b = pairs.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if type(a) is not type(b) or a != b:
                return False
        elif isinstance(a, int | float) and isinstance(b, int | float):
            if Decimal(repr(a)) != Decimal(repr(b)):
                return False
        elif isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return False
            pairs.extend((a[k], b[k]) for k in a)
        elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
            if len(a) != len(b):
                return False
            pairs.extend(zip(a, b, strict=True))
        elif a != b:
            return False
    return True


def _existing_version(model: RegisteredModel, digest: str, fields: dict) -> tuple[ModelVersion, bool]:
    """The version already registered with `digest`: (it, False) if its content matches, else 409."""
    existing = ModelVersion.objects.select_related("model").get(model=model, digest=digest)
    differing = [k for k, v in fields.items() if k != "manifest" and not same_json(getattr(existing, k), v)]
    if differing:
        raise Conflict(
            f"Version {existing.number} of {existing.model} already has digest {digest} with different "
            f"{', '.join(differing)}. Versions are immutable: the same files cannot be registered with "
            "other metadata. Change the files to register a new version.",
            code="digest_conflict",
            detail={"number": existing.number, "fields": differing},
        )
    return existing, False


_VERSION_FIELDS = [f for f in ModelVersion._meta.concrete_fields if f.attname not in ("id", "number")]
# names from the models' _meta, values bound
_INSERT_NUMBERED = (
    f"WITH bumped AS (UPDATE {RegisteredModel._meta.db_table} SET latest_number = latest_number + 1 "  # noqa: S608
    "WHERE id = %s RETURNING latest_number), "
    f"version AS (INSERT INTO {ModelVersion._meta.db_table} ({', '.join(f.column for f in _VERSION_FIELDS)}, number) "
    f"VALUES ({', '.join(['%s'] * len(_VERSION_FIELDS))}, (SELECT latest_number FROM bumped)) RETURNING id, number), "
    "event AS ({event}) "
    "SELECT version.id, version.number, event.seq, event.at, event.prev_hash, event.hash FROM version, event"
)


def _insert_numbered(version: ModelVersion, actor, audit_after: dict) -> None:
    """PostgreSQL: bump the model's number, insert the version and append its audit event in one statement.

    The model row is then locked from that one statement to COMMIT (the statement's own end in autocommit
    mode), with no round trip and no Python work in between (as three statements the lock also covered the
    version INSERT, the audit payload and the event INSERT): under concurrent registrations of one model,
    that lock is what bounds them. In autocommit mode the event's post_save listeners run after the commit."""
    model = version.model
    event = new_event(action="version.registered", subject_type=_VERSION_LABEL, subject_id="", actor=actor)
    prefix, suffix = json_text_around(audit_after, "number")
    repr_prefix = subject_text(f"{model}:")
    event_sql, event_params = insert_sql(
        event,
        {
            "subject_id": ("(SELECT id::text FROM version)", []),
            "subject_repr": ("left(%s || (SELECT number FROM version)::text, %s)", [repr_prefix, SUBJECT_REPR_LENGTH]),
            "after": ("%s || (SELECT number FROM version)::text || %s", [prefix, suffix]),
        },
    )
    params = [model.pk, *(f.get_db_prep_save(f.pre_save(version, True), connection) for f in _VERSION_FIELDS)]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_NUMBERED.replace("{event}", event_sql), [*params, *event_params])
        version.pk, version.number, *links = cursor.fetchone()
    model.latest_number = version.number
    version._state.adding, version._state.db = False, connection.alias
    event.subject_id, event.subject_repr = str(version.pk), f"{repr_prefix}{version.number}"[:SUBJECT_REPR_LENGTH]
    event.after = f"{prefix}{version.number}{suffix}"
    linked(event, *links)


def _next_number(model: RegisteredModel) -> int:
    """Lock the model row and bump its latest number in one statement; the lock lasts until commit."""
    table = RegisteredModel._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET latest_number = latest_number + 1 WHERE id = %s RETURNING latest_number",  # noqa: S608
            [model.pk],
        )
        row = cursor.fetchone()
    if row is None:
        raise RegisteredModel.DoesNotExist("RegisteredModel matching query does not exist.")
    return row[0]


# Checks another app makes on the run a new version names (`run_id`), added from its AppConfig.ready(): lineage
# decides who may name a run (a run that produced other models' versions speaks for them; docs/lineage.md,
# "Visibility"). Registry never imports lineage (the dependency runs the other way).
_RUN_CLAIM_CHECKS: list = []


def register_run_claim_check(check) -> None:
    """check(actor=, run_uuid=, claimed_for=) raises a DomainError to refuse the registration. It runs in the
    registration's transaction, before the model row lock, and may lock the run until commit (claims on one run
    are serialized)."""
    if check not in _RUN_CLAIM_CHECKS:
        _RUN_CLAIM_CHECKS.append(check)


# Checks another app makes before a version is archived, added from its AppConfig.ready(): governance refuses while
# a release of the version serves or is on its way (archived is final: never served again).
_ARCHIVE_CHECKS: list = []


def register_archive_check(check) -> None:
    """check(actor=, version=) raises a DomainError to refuse the archive. It runs in the archive's transaction,
    under the version's row lock, and may lock rows that come after it in the lock order (docs/architecture.md)."""
    if check not in _ARCHIVE_CHECKS:
        _ARCHIVE_CHECKS.append(check)


def version_register(*, actor, model: RegisteredModel, content: VersionContent, tags: dict | None = None):
    """Register a version. Same digest again -> (existing, False); same digest, other content -> 409.

    The model row lock serializes registrations per model so numbers stay gapless; it is taken as
    late as possible and held as briefly as possible: everything that needs no number is done before,
    then the row is locked and the number bumped, the version inserted and the audit event appended,
    and that commits (on PostgreSQL one statement, _insert_numbered, which is its own transaction when
    no transaction is open; with a run_id, in a transaction that first checks the claim on the run and so
    locks the run's claims, see register_run_claim_check). A digest the model already has is caught by the
    (model, digest) unique constraint: the write rolls back (the number bump with it) and the existing version
    is returned, or 409 if its content differs.
    """
    manifest = manifests.normalize(content.manifest)
    digest = manifests.digest(manifest)
    metrics, metric_sources = _split_metrics(content.metrics or {})
    artifact_uri = _normalize_uri(content.artifact_uri, model, digest)
    stored_here = artifact_uri.startswith(REGISTRY_URI)
    fields = {
        "manifest": manifest,
        "artifact_uri": artifact_uri,
        "framework": content.framework,
        "task": content.task,
        "params": content.params or {},
        "metrics": metrics,
        "metric_sources": metric_sources,
        "source": content.source or {},
        "run_id": content.run_id,
    }
    tags = tags or {}
    audit_after = {
        "number": None,
        "digest": digest,
        "artifact_uri": artifact_uri,
        "files": len(manifest["files"]),
        "metrics": metrics,
        "source": fields["source"],
        "tags": tags,
        "run_id": content.run_id,
    }
    model = copy.copy(model)  # the caller's instance keeps its latest_number; the version's model is current
    version = ModelVersion(model=model, digest=digest, created_by=actor, tags=tags, **fields)
    try:
        if connection.vendor == "postgresql":
            # One statement: in autocommit mode it is its own transaction, with no BEGIN and COMMIT round
            # trips; inside a caller's transaction (atomic() turns autocommit off), a savepoint keeps that
            # one usable when the digest repeats. A run_id's claim and the registry's own files are checked in
            # the same transaction (both take locks that must last until the version commits).
            alone = connection.get_autocommit() and content.run_id is None and not stored_here
            with contextlib.nullcontext() if alone else transaction.atomic():
                _check_before_insert(actor, model, manifest, stored_here, content.run_id)
                _insert_numbered(version, actor, audit_after)
        else:
            with transaction.atomic():
                _check_before_insert(actor, model, manifest, stored_here, content.run_id)
                model.latest_number = version.number = _next_number(model)
                version.save(force_insert=True)
                record(
                    action="version.registered",
                    subject=version,
                    actor=actor,
                    after={**audit_after, "number": version.number},
                )
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
        if constraint not in (None, "registry_version_unique_digest"):
            raise
        try:
            return _existing_version(model, digest, fields)
        except ModelVersion.DoesNotExist:
            raise exc from None
    return version, True


def _check_before_insert(actor, model: RegisteredModel, manifest: dict, stored_here: bool, run_id) -> None:
    """The run claim first: a registration naming a run it may not is refused before its files are asked for (the
    CLI uploaded every file, then was told 403), and the claim's lock comes first, as docs/lineage.md has it. No
    cycle with the blobs' locks: the pruning takes no run lock, and a lineage ingest no blob lock."""
    if run_id is not None:
        for check in _RUN_CLAIM_CHECKS:  # lineage: who may name a run as a model's producer
            check(actor=actor, run_uuid=run_id, claimed_for=f"a version of {model}")
    if stored_here:
        _check_registry_files(manifest, actor=actor)


def _check_no_alias_points_at(version: ModelVersion) -> None:
    """Archived is final and no alias may point at an archived version, so one pointing at it must move first
    (CI resolving `champion` would otherwise keep shipping the archived version)."""
    names = sorted(Alias.objects.filter(version=version).values_list("name", flat=True))
    if names:
        raise Conflict(
            f"Version {version} cannot be archived while aliases point at it: {', '.join(names)}. "
            "Move them to another version first.",
            code="version_in_use",
            detail={"aliases": names},
        )


def version_update(
    *,
    actor,
    version: ModelVersion,
    tags: dict | None = None,
    status: str | None = None,
    reason: str = "",
    if_match: str | None = None,
) -> ModelVersion:
    """Change the mutable parts of a version (tags, status); each change audited with before/after. With
    `if_match` (an If-Match header) only if the version is still the one that ETag was read from, or already as
    asked: a retry whose first answer was lost is told it succeeded (RFC 9110, 13.1.1)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update(no_key=True).select_related("model").get(pk=version.pk)
        asked = {"tags": tags, "status": status}
        if any(value is not None and value != getattr(version, field) for field, value in asked.items()):
            check_if_match(if_match, version.etag, f"Version {version}")
        before, after = {}, {}
        if tags is not None and tags != version.tags:
            before["tags"], after["tags"] = version.tags, tags
            version.tags = tags
        if status is not None and status != version.status:
            allowed = STATUS_TRANSITIONS[VersionStatus(version.status)]
            if status not in allowed:
                raise Conflict(
                    f"Version {version} is {version.status}; it can move to "
                    f"{', '.join(sorted(allowed)) or 'no other status'}, not {status}.",
                    code="invalid_transition",
                )
            if status == VersionStatus.ARCHIVED:
                _check_no_alias_points_at(version)
                for check in _ARCHIVE_CHECKS:
                    check(actor=actor, version=version)
            before["status"], after["status"] = version.status, status
            version.status = status
        if after:
            version.save(update_fields=list(after))
            record(action="version.updated", subject=version, actor=actor, before=before, after=after, reason=reason)
    return version


def alias_set(
    *, actor, model: RegisteredModel, name: str, number: int, protected: bool | None = None, if_match: str | None = None
) -> tuple[Alias, bool]:
    """Point alias `name` at version `number`. Protected aliases move only for model managers. With `if_match` (an
    If-Match header) only if the alias is still the one that ETag was read from, or already as asked: two CI jobs
    moving one alias, the slower one would otherwise move it back to its older version unseen."""
    _validate_slug(name, "alias")
    with transaction.atomic():
        # The model row serializes alias writes of the model: two first PUTs of one name would both find no
        # alias and one would fail on the unique constraint (a 500). The version row is held against an archive.
        RegisteredModel.objects.select_for_update(no_key=True).filter(pk=model.pk).first()
        version = ModelVersion.objects.select_for_update(no_key=True).filter(model=model, number=number).first()
        if version is None:
            raise InvalidInput(f"{model} has no version {number}.", detail={"version": ["No such version."]})
        alias = Alias.objects.select_for_update(no_key=True).filter(model=model, name=name).first()
        was_protected = alias is not None and alias.protected
        wanted = was_protected if protected is None else protected
        if (was_protected or wanted) and not access.has_perm(actor, ModelPerm.MANAGE, model):
            raise Forbidden(f"Alias '{name}' is protected: only managers of {model} may move it or change that.")
        created = alias is None
        before = None if created else {"version": alias.version.number, "protected": alias.protected}
        if before == {"version": number, "protected": wanted}:
            return alias, False  # already so: nothing written, nothing to audit (not even updated_by)
        check_if_match(if_match, None if created else alias.etag, f"Alias '{name}' of {model}")
        if version.status == VersionStatus.ARCHIVED:
            raise Conflict(f"Version {version} is archived; an alias cannot point at it.", code="version_archived")
        if created:
            alias = Alias(model=model, name=name)
        alias.protected = wanted
        alias.version = version
        alias.updated_by = actor
        alias.save()
        record(
            action="alias.moved" if not created else "alias.created",
            subject=alias,
            actor=actor,
            before=before,
            after={"version": number, "digest": version.digest, "protected": alias.protected},
        )
    return alias, created


def alias_delete(*, actor, model: RegisteredModel, name: str, if_match: str | None = None) -> None:
    """Remove an alias (before archiving the only version it could point at, say). Protected: managers only. With
    `if_match`, only if the alias is still the one that ETag was read from."""
    with transaction.atomic():
        alias = Alias.objects.select_for_update(no_key=True).select_related("version").filter(model=model, name=name)
        alias = alias.first()
        if alias is None:
            raise NotFound(f"{model} has no alias '{name}'.", code="no_alias")
        if alias.protected and not access.has_perm(actor, ModelPerm.MANAGE, model):
            raise Forbidden(f"Alias '{name}' is protected: only managers of {model} may remove it.")
        check_if_match(if_match, alias.etag, f"Alias '{name}' of {model}")
        record(
            action="alias.deleted",
            subject=alias,
            actor=actor,
            before={"version": alias.version.number, "digest": alias.version.digest, "protected": alias.protected},
        )
        alias.delete()


# --- Model cards -------------------------------------------------------------------------------


def _same_card(stored: dict, posted: dict) -> bool:
    """Whether `posted` (validated) repeats the revision holding `stored`. A revision stored before the card's
    normal form last changed is compared in today's form too: a CI re-run posting the same card must not make
    a new revision, which would also void the approvals given on the last one."""
    if same_json(stored, posted):
        return True
    try:
        return same_json(cards.validate(stored), posted)
    except InvalidInput:  # not valid today: posting it again would be refused, so this post differs
        return False


def card_revision_add(
    *, actor, version: ModelVersion, content: dict, if_match: str | None = None
) -> tuple[ModelCardRevision, bool]:
    """Append a model card revision to a version: validated, numbered last + 1, audited.

    Posting the content of the latest revision again is idempotent: (latest, False). With `if_match` (an
    If-Match header) a new revision is made only if the latest is still the one that ETag was read from: a card
    is sent whole, so one edited from an older read would undo the revision made since.

    Revisions are append-only (database triggers): a change to a card is always a new revision.
    The audit event names the revision, its sections and completeness, and the sha256 of the
    canonical JSON content, not the text itself.
    """
    content = cards.validate(content)
    with transaction.atomic():
        # The version row lock serializes revisions of one card: numbers have no gaps or duplicates.
        locked = ModelVersion.objects.select_for_update(no_key=True).select_related("model").get(pk=version.pk)
        latest = locked.card_revisions.order_by("-revision").first()
        if latest is not None and _same_card(latest.content, content):
            return latest, False  # a CI re-run posting the same card: nothing changes, nothing to audit
        check_if_match(if_match, latest.etag if latest else None, f"The model card of {locked}")
        last = locked.card_revisions.aggregate(last=Max("revision"))["last"] or 0
        revision = ModelCardRevision.objects.create(
            version=locked,
            revision=last + 1,
            schema_version=cards.SCHEMA_VERSION,
            content=content,
            created_by=actor,
        )
        report = cards.completeness(content)
        record(
            action="card.revised",
            subject=revision,
            actor=actor,
            after={
                "model": str(locked.model),
                "version": locked.number,
                "revision": revision.revision,
                "schema_version": revision.schema_version,
                "sections": cards.present_sections(content),
                "other_sections": [s["title"] for s in content.get("other_sections", [])],
                "missing": report["missing"],
                "empty": report["empty"],
                "content_sha256": hashlib.sha256(canonical_json(content)).hexdigest(),
            },
        )
    return revision, True


# --- Signatures --------------------------------------------------------------------------------


def signature_attach(*, actor, version: ModelVersion, bundle: dict) -> tuple[VersionSignature, bool]:
    """Verify a model-signing bundle against the version's manifest and record the verdict: (record, created).

    A malformed or unsupported bundle raises InvalidInput and nothing is stored. A well-formed one is
    always recorded, verified or not: the result is a fact about the version. The audit event names
    the verdict and the bundle's sha256, never the bundle itself. The bundle of the latest record again, with
    the same verdict, is that record (a CI job's retry after a lost answer); the same bundle judged otherwise
    (the trusted keys changed) is a new fact, recorded.
    """
    from registry import signing  # model-signing and sigstore are imported on use (tens of MB)

    result = signing.verify_bundle(bundle, version.manifest, signing.trusted_public_keys())
    verified_at = timezone.now()
    bundle_sha256 = signing.bundle_sha256(bundle)
    with transaction.atomic():
        # The version row lock orders concurrent attaches to one version: the latest is well defined.
        locked = ModelVersion.objects.select_for_update(no_key=True).select_related("model").get(pk=version.pk)
        latest = selectors.latest_signature(locked)
        if latest is not None and latest.bundle_sha256 == bundle_sha256 and _verdict(latest) == _verdict(result):
            return latest, False
        signature = VersionSignature.objects.create(
            version=locked,
            bundle=bundle,
            bundle_sha256=bundle_sha256,
            verified=result.verified,
            reason=result.reason,
            key_id=result.key_id,
            files_checked=result.files_checked,
            problems=result.problems,
            verified_at=verified_at,
            created_by=actor,
        )
        record(
            action="version.signature_attached",
            subject=signature,
            actor=actor,
            after={
                "model": str(locked.model),
                "version": locked.number,
                "digest": locked.digest,
                "verified": result.verified,
                "reason": result.reason,
                "key_id": result.key_id,
                "files_checked": result.files_checked,
                "bundle_sha256": bundle_sha256,
            },
        )
    return signature, True


def _verdict(judged) -> tuple:
    """What a verification said: of a stored VersionSignature, or of signing's result (the same names)."""
    return (judged.verified, judged.reason, judged.key_id, judged.files_checked, judged.problems)
