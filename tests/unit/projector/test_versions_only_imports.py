"""Story: naming what every node was told needs no message builder.

``render_all(state, bodies=False)`` (what ``replay at --json`` and the walks render) reads the state into
render inputs and hashes them: the Envoy API (protobuf modules: a tenth of the CLI's start-up) is imported
only by the first ``build``. Run in a fresh interpreter, since this test process has imported them already.
"""

import subprocess
import sys

SCRIPT = """
import sys
import replay.cli  # what the `replay` console script imports before it parses its arguments
from projector.render_mesh import render_all
from tests.unit.projector.feature_mesh import feature_mesh

state = feature_mesh()
lean = render_all(state, bodies=False)
loaded = sorted(m for m in sys.modules if m.startswith(("envoy.", "google.protobuf")))
assert lean.versions and not lean.resources
assert loaded == [], loaded
full = render_all(state)  # the first build imports the builders, and the versions are the same
assert full.versions == lean.versions and full.resources
assert "projector.render_envoy" in sys.modules
print("ok")
"""


def test_a_versions_only_render_never_imports_the_envoy_api():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
