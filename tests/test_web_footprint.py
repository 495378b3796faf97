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
import json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
from config.wsgi import application
from django.urls import get_resolver
get_resolver().url_patterns  # every view, serializer and service module, as the first request loads them
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_loaded_application_holds_no_library_it_imports_on_use():
    env = {**os.environ, "DJANGO_DEBUG": "0", "SECRET_KEY": "footprint-" + "x" * 50}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"django", "rest_framework", "registry", "governance"} <= loaded  # the probe did load the application
    assert loaded.isdisjoint(ON_USE), sorted(loaded & set(ON_USE))
