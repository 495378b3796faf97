"""Verifying OpenSSF model-signing signatures (Sigstore bundles) against a version's manifest.

A bundle made by `model_signing sign key` (or `model_signing.signing.Config().use_elliptic_key_signer`)
is a Sigstore bundle whose DSSE envelope carries an in-toto statement; its predicate lists every
signed file as a resource descriptor (name + sha256). Verification here is **key-based**: the
envelope signature must verify with one of the registry's trusted elliptic-curve public keys
(settings.MODEL_SIGNING_PUBLIC_KEYS). The cryptography (DSSE PAE, ECDSA, key hint, in-toto statement
and its root digest) is model_signing's own verifier; the registry then compares the signed
per-file digests with the version's manifest instead of re-hashing files on disk.

Keyless Sigstore signatures (Fulcio certificate + Rekor transparency log) are not verified: they
need Sigstore's public services, which this deployment does not reach. See docs/signing.md.

Three outcomes:
- `verify_bundle` raises `InvalidInput` (400) for a bundle that is not a well-formed key-based
  model-signing bundle the registry can check (nothing is stored);
- it returns `SignatureResult(verified=False, reason=...)` when the bundle is well formed but the
  signature does not verify with a trusted key or the signed files differ from the manifest;
- it returns `SignatureResult(verified=True, ...)` when the signature verifies with a trusted key and
  the signed files are exactly the manifest's files with the same sha256.
"""

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from model_signing._signing import sign_ec_key, sign_sigstore_pb
from model_signing._signing import signing as ms_signing
from sigstore_models.bundle import v1 as bundle_pb

from audit.chain import canonical_json
from core.errors import InvalidInput
from registry.manifest import SHA256_HEX

# model_signing's public API verifies a model *directory*; the registry holds only the manifest, so
# it uses the library's key verifier and bundle types (model_signing._signing) directly. They are
# internal modules: the dependency is pinned to model-signing 1.1.x and tests/registry/test_signing.py
# signs with the real library, so an incompatible upgrade fails there.

BUNDLE_MEDIA_TYPE = sign_sigstore_pb._BUNDLE_MEDIA_TYPE  # application/vnd.dev.sigstore.bundle.v0.3+json
PAYLOAD_TYPE = ms_signing._IN_TOTO_JSON_PAYLOAD_TYPE  # application/vnd.in-toto+json
STATEMENT_TYPE = ms_signing._IN_TOTO_STATEMENT_TYPE  # https://in-toto.io/Statement/v1
PREDICATE_TYPES = (ms_signing._PREDICATE_TYPE, ms_signing._PREDICATE_TYPE_COMPAT)
LISTED = 20  # file names spelled out per category in a reason


@dataclass(frozen=True)
class SignatureResult:
    verified: bool
    reason: str
    key_id: str = ""  # sha256 hex of the trusted key's PEM (SubjectPublicKeyInfo), as model_signing's hint
    files_checked: int = 0  # files of the version's manifest compared with the signed digests
    mismatched: list[str] = field(default_factory=list)  # signed, in the manifest, other sha256
    missing: list[str] = field(default_factory=list)  # signed, but not in the version's manifest
    extra: list[str] = field(default_factory=list)  # in the manifest, but not covered by the signature

    @property
    def problems(self) -> dict:
        return {"mismatched": self.mismatched, "missing": self.missing, "extra": self.extra}


def _malformed(message: str, where: str, code: str = "malformed_bundle"):
    raise InvalidInput(f"Signature bundle: {message}", code=code, detail={where: [message]})


def bundle_sha256(bundle: dict) -> str:
    """sha256 hex of the bundle's canonical JSON: how audit events name a bundle without copying it."""
    return hashlib.sha256(canonical_json(bundle)).hexdigest()


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """model_signing's key hint: sha256 hex of the key's PEM SubjectPublicKeyInfo."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def load_public_key(pem: bytes, *, source: str = "public key") -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise ImproperlyConfigured(f"{source} must be an elliptic-curve key on P-256, P-384 or P-521.")
    return key


def trusted_public_keys() -> list[bytes]:
    """PEM bytes of every key in settings.MODEL_SIGNING_PUBLIC_KEYS (file paths), read on each call."""
    keys = []
    for path in settings.MODEL_SIGNING_PUBLIC_KEYS:
        try:
            keys.append(Path(path).read_bytes())
        except OSError as exc:
            raise ImproperlyConfigured(f"MODEL_SIGNING_PUBLIC_KEYS: cannot read {path}: {exc.strerror}") from None
    return keys


class _KeyVerifier(sign_ec_key.Verifier):
    """model_signing's elliptic-key verifier, built from a loaded key instead of a file path."""

    def __init__(self, public_key: ec.EllipticCurvePublicKey):
        # The parent's __init__ only reads a PEM file and sets this attribute.
        self._public_key = public_key


def _b64(value, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        _malformed("must be a non-empty base64 string.", where)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return _malformed("is not valid base64.", where)


def _check_entries(entries, where: str, *, name_key: str) -> None:
    """Every signed file: a unique name and a sha256 digest (64 lowercase hex)."""
    if not isinstance(entries, list) or not entries:
        _malformed("must be a non-empty list of signed files.", where)
    seen = set()
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get(name_key), str) or not entry[name_key]:
            _malformed("each signed file needs a non-empty name.", here)
        if "digest" in entry and isinstance(entry["digest"], dict):  # pre-1.0: {"digest": {"sha256": hex}}
            algorithm, value = "sha256", entry["digest"].get("sha256")
        else:
            algorithm, value = entry.get("algorithm"), entry.get("digest")
        if algorithm != "sha256" or not isinstance(value, str) or not SHA256_HEX.match(value):
            _malformed("each signed file needs a sha256 digest (64 lowercase hex characters).", here)
        if entry[name_key] in seen:
            _malformed(f"'{entry[name_key]}' is signed more than once.", here)
        seen.add(entry[name_key])


def _parse(bundle) -> tuple[dict, dict]:
    """Structural checks on the untrusted bundle. Returns (normalized bundle dict, in-toto statement)."""
    if not isinstance(bundle, dict):
        _malformed("the request body must be the bundle, a JSON object.", "bundle")
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        _malformed(f"mediaType must be '{BUNDLE_MEDIA_TYPE}' (as model_signing writes it).", "mediaType")
    material = bundle.get("verificationMaterial")
    if not isinstance(material, dict):
        _malformed("verificationMaterial must be an object.", "verificationMaterial")
    if "certificate" in material or "x509CertificateChain" in material:
        _malformed(
            "this bundle is signed with a certificate (keyless Sigstore or a certificate chain); the registry "
            "verifies only signatures made with a private key ('model_signing sign key'). See docs/signing.md.",
            "verificationMaterial",
            code="unsupported_signature",
        )
    public_key = material.get("publicKey")
    if not isinstance(public_key, dict):
        _malformed("verificationMaterial.publicKey must be an object (a key-based signature).", "verificationMaterial")
    hint = public_key.get("hint")
    if hint is not None and not isinstance(hint, str):
        _malformed("must be a string (sha256 hex of the signing key).", "verificationMaterial.publicKey.hint")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        _malformed("dsseEnvelope must be an object (model_signing signs a DSSE envelope).", "dsseEnvelope")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        _malformed(f"payloadType must be '{PAYLOAD_TYPE}'.", "dsseEnvelope.payloadType")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures or not isinstance(signatures[0], dict):
        _malformed("must be a non-empty list of {sig, keyid}.", "dsseEnvelope.signatures")
    _b64(signatures[0].get("sig"), "dsseEnvelope.signatures[0].sig")
    payload = _b64(envelope.get("payload"), "dsseEnvelope.payload")
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):  # nesting too deep to parse is no statement either
        _malformed("does not decode to JSON.", "dsseEnvelope.payload")
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        _malformed(f"must be an in-toto statement ({STATEMENT_TYPE}).", "dsseEnvelope.payload")
    if statement.get("predicateType") not in PREDICATE_TYPES:
        _malformed(f"predicateType must be '{PREDICATE_TYPES[0]}'.", "dsseEnvelope.payload.predicateType")
    if statement["predicateType"] == PREDICATE_TYPES[0]:
        predicate = statement.get("predicate")
        serial = predicate.get("serialization") if isinstance(predicate, dict) else None
        if not isinstance(serial, dict) or not isinstance(predicate.get("resources"), list):
            _malformed("must hold 'serialization' and 'resources'.", "dsseEnvelope.payload.predicate")
        if serial.get("method") != "files" or serial.get("hash_type") != "sha256":
            _malformed(
                f"the model was signed with method '{serial.get('method')}' and hash '{serial.get('hash_type')}'; "
                "the registry compares whole-file sha256 digests, so sign with the defaults "
                "(file serialization, sha256).",
                "dsseEnvelope.payload.predicate.serialization",
                code="unsupported_signature",
            )
        _check_entries(predicate["resources"], "dsseEnvelope.payload.predicate.resources", name_key="name")
    else:  # the pre-1.0 predicate lists the files as subjects
        _check_entries(statement.get("subject"), "dsseEnvelope.payload.subject", name_key="name")
    # model_signing's reader accepts these older spellings; normalize the same way.
    # Copies of the two objects changed, not of the whole bundle: a deep copy of a key nested as deep as the
    # request parser takes (~900 levels) ran out of stack (a 500).
    material = {**bundle["verificationMaterial"], "publicKey": {**bundle["verificationMaterial"]["publicKey"]}}
    normalized = {**bundle, "verificationMaterial": material}
    key = material["publicKey"]
    material.setdefault("tlogEntries", [])
    key.setdefault("hint", None)
    for obsolete in ("rawBytes", "keyDetails"):
        key.pop(obsolete, None)
    return normalized, statement


def _signed_files(signed_manifest) -> dict[str, str]:
    return {rd.identifier: rd.digest.digest_hex for rd in signed_manifest.resource_descriptors()}


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:LISTED])
    return shown + (f" and {len(paths) - LISTED} more" if len(paths) > LISTED else "")


def verify_bundle(bundle: dict, manifest: dict, public_keys: list[bytes]) -> SignatureResult:
    """Verify a model-signing bundle with trusted keys and compare its signed files with `manifest`.

    Raises InvalidInput for a malformed or unsupported bundle; otherwise returns the result.
    """
    normalized, _statement = _parse(bundle)
    try:
        signature = sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(normalized))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        _malformed(f"not a Sigstore bundle: {' '.join(first[:3])}", "bundle")
    files = {f["path"]: f["sha256"] for f in manifest["files"]}

    keys = [load_public_key(pem, source=f"trusted key #{i + 1}") for i, pem in enumerate(public_keys)]
    if not keys:
        return SignatureResult(
            False,
            "The registry trusts no signing keys (MODEL_SIGNING_PUBLIC_KEYS is empty): nothing to verify with.",
        )
    hint = signature.bundle.verification_material.public_key.hint
    candidates = [k for k in keys if key_id(k) == hint] if hint else keys
    if not candidates:
        return SignatureResult(False, f"Signed by a key the registry does not trust (key hint {hint}).")

    signed_manifest, used, errors = None, "", []
    for key in candidates:
        try:
            signed_manifest = _KeyVerifier(key).verify(signature)
        except (InvalidSignature, ValueError, KeyError, TypeError) as exc:
            errors.append(str(exc) or type(exc).__name__)
            continue
        used = key_id(key)
        break
    if signed_manifest is None:
        which = f"trusted key {hint}" if hint else f"any of the {len(keys)} trusted keys"
        detail = f" ({errors[0]})" if errors and errors[0] != "InvalidSignature" else ""
        return SignatureResult(False, f"The signature does not verify with {which}{detail}.")

    signed = _signed_files(signed_manifest)
    mismatched = sorted(p for p in signed.keys() & files.keys() if signed[p] != files[p])
    missing = sorted(signed.keys() - files.keys())
    extra = sorted(files.keys() - signed.keys())
    result = {"key_id": used, "files_checked": len(files), "mismatched": mismatched, "missing": missing}
    if not (mismatched or missing or extra):
        return SignatureResult(
            True, f"Signature by trusted key {used} covers exactly the {len(files)} files of the manifest.", **result
        )
    parts = []
    if mismatched:
        parts.append(f"sha256 differs for {_names(mismatched)}")
    if missing:
        parts.append(f"signed but not in the version: {_names(missing)}")
    if extra:
        parts.append(f"in the version but not signed: {_names(extra)}")
    return SignatureResult(
        False,
        f"The signature by trusted key {used} is valid, but the signed files differ from the manifest: "
        + "; ".join(parts)
        + ".",
        extra=extra,
        **result,
    )
