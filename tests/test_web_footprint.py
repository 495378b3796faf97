"""What a web worker imports before its first request: libraries that only some requests use are loaded on use.

Every web worker pays for what the application imports (bench/README.md, section 5). cryptography (the
webhook secrets' Fernet key, 6.5 MB), jsonschema (model card validation, 2.4 MB), and the signing and host
client libraries are imported where they are used, so a worker that never uses them never holds them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ON_USE = ["cryptography", "jsonschema", "model_signing", "sigstore", "huggingface_hub", "replicate", "modal", "boto3"]

PROBE = """
import json, os, sys, traceback
ON_USE = set(sys.argv[1:])
importers = {}


class WhoImports:
    # Not a loader: notes which code first imports an on-use library, then lets the import go on.
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ON_USE and top not in importers:
            stack = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack() if "<frozen" not in f.filename]
            importers[top] = stack[-6:-1]
        return None


sys.meta_path.insert(0, WhoImports())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
from config.wsgi import application
from django.urls import get_resolver
get_resolver().url_patterns  # every view, serializer and service module, as the first request loads them
print(json.dumps({"loaded": sorted({name.partition(".")[0] for name in sys.modules}), "importers": importers}))
"""


def test_the_loaded_application_holds_no_library_it_imports_on_use():
    env = {**os.environ, "DJANGO_DEBUG": "0", "SECRET_KEY": "footprint-" + "x" * 50, "ARTIFACT_STORAGE": "local"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *ON_USE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-3000:]
    probe = json.loads(result.stdout.splitlines()[-1])
    loaded = set(probe["loaded"])
    assert {"django", "rest_framework", "registry", "governance"} <= loaded  # the probe did load the application
    assert loaded.isdisjoint(ON_USE), f"imported when the application loads, by: {probe['importers']}"
