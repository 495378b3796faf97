"""Serializers share their bound fields per class (core.api.SharedFields): every instance, request and
thread validates against one set of fields, so results must never leak from one to another."""

import threading

import pytest

from core.api import SharedFields
from registry.api.serializers import VersionOutput, VersionRegisterInput

SHA = "ab" * 32


def body(n: int, *, valid: bool) -> dict:
    files = [{"path": f"f{n}.bin", "size": n, "sha256": SHA if valid else "not-hex"}]
    return {"artifact_uri": f"s3://bucket/{n}", "manifest": {"files": files}, "tags": {"n": str(n)}}


def test_instances_share_one_bound_set_of_fields():
    first, second = VersionRegisterInput(data=body(1, valid=True)), VersionRegisterInput(data=body(2, valid=True))
    assert first.fields is second.fields
    assert first.fields["manifest"].fields is second.fields["manifest"].fields
    assert isinstance(VersionOutput(), SharedFields) and VersionOutput().fields is VersionOutput().fields


def test_concurrent_validations_keep_their_own_results():
    """Threads validating valid and invalid bodies at once each get exactly their own data or errors."""
    wrong: list[str] = []
    barrier = threading.Barrier(8)

    def validate(worker: int) -> None:
        barrier.wait()
        for i in range(200):
            n = worker * 1000 + i
            valid = (n % 3) != 0
            serializer = VersionRegisterInput(data=body(n, valid=valid))
            if serializer.is_valid() != valid:
                wrong.append(f"{n}: valid={valid}, errors={serializer.errors}")
            elif valid and (
                serializer.validated_data["tags"] != {"n": str(n)}
                or serializer.validated_data["manifest"]["files"][0]["size"] != n
            ):
                wrong.append(f"{n}: validated {serializer.validated_data}")
            elif not valid and "sha256" not in str(serializer.errors["manifest"]):
                wrong.append(f"{n}: errors {serializer.errors}")
            unknown = VersionRegisterInput(data={**body(n, valid=True), f"extra{n}": 1})
            if unknown.is_valid() or list(unknown.errors) != [f"extra{n}"]:
                wrong.append(f"{n}: unknown field not named: {unknown.errors}")

    threads = [threading.Thread(target=validate, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


@pytest.mark.parametrize("kwargs", [{"partial": True}, {"context": {"request": None}}])
def test_what_shared_fields_cannot_see_is_refused(kwargs):
    """A partial update would still require every field, and fields would not see the context: refused loudly."""
    with pytest.raises(TypeError, match="shares its fields per class"):
        VersionRegisterInput(data=body(1, valid=True), **kwargs)
    with pytest.raises(TypeError, match="shares its fields per class"):
        VersionOutput(many=True, **kwargs)
