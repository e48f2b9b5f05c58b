"""Issue 14.1, server side: a version the server's user cannot read is reported as such.

TensorFlow words an unreadable version as a missing one ("SavedModel file does not exist" for a
0700 directory of another user, "not a valid checkpoint" for unreadable variables). The loading
code runs here as uid 10001 (TF Serving's), since root reads everything regardless of modes.
"""

from __future__ import annotations

import json
import os
import shutil

from otheruser import OTHER_UID, run_as, shared_dir, skip_unless_root

PRELOAD = """
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from serving.config import ModelConfig
from serving.manager import ModelManager
tf.compat.v1.saved_model.loader.load, tf.compat.v1.Session, tf.saved_model.SERVING
"""

LOAD_AND_REPORT = """
bases = json.loads(sys.argv[2])
manager = ModelManager([ModelConfig(name, base) for name, base in bases.items()])
manager.poll()
print(json.dumps({
    name: [[s.state, s.code.name, s.message] for _, s in manager.status(name)] for name in bases
}))
"""


def test_unreadable_version_is_reported_as_permission_denied_with_its_path(exported):
    skip_unless_root()
    with shared_dir() as shared:
        bases, unreadable = {}, {}
        for name in ("readable", "dir_0700", "variables_no_x", "index_000"):
            base = shared / name
            version = shutil.copytree(exported.path, base / "1")
            base.chmod(0o755)
            bases[name] = str(base)
            target = {
                "dir_0700": version,
                "variables_no_x": version / "variables",
                "index_000": version / "variables" / "variables.index",
            }.get(name)
            if target is not None:
                target.chmod({"dir_0700": 0o700, "variables_no_x": 0o644}.get(name, 0))
                unreadable[name] = target

        report = run_as(OTHER_UID, LOAD_AND_REPORT, json.dumps(bases), preload=PRELOAD)

    assert report["readable"] == [["AVAILABLE", "OK", ""]]
    for name, path in unreadable.items():
        [[state, code, message]] = report[name]
        assert (state, code) == ("END", "PERMISSION_DENIED"), (name, message)
        assert message.startswith(f"permission denied: {path} "), (name, message)
        assert f"uid {OTHER_UID}" in message


FIX_AND_RETRY = """
base, variables = sys.argv[2], sys.argv[3]
manager = ModelManager([ModelConfig("m", base)], warmup=False)
manager.poll()
[(_, before)] = manager.status("m")
os.chmod(variables, 0o755)  # the fix: the owner gives variables/ its x back
states = []
for _ in range(3):  # one poll finds the change, the next (nothing changed since) retries it
    manager.poll()
    [(_, status)] = manager.status("m")
    states.append(status.state)
print(json.dumps({"before": [before.state, before.code.name, before.message], "after": states}))
"""


def test_a_version_denied_for_its_modes_is_retried_once_they_are_fixed(exported):
    """Issue 14.7: `chmod` on variables/ after a PERMISSION_DENIED failure counts as a change."""
    skip_unless_root()
    with shared_dir() as shared:
        base = shared / "m"
        version = shutil.copytree(exported.path, base / "1")
        for path in [base, *base.rglob("*")]:  # the server's user owns it, and so may chmod it
            os.chown(path, OTHER_UID, OTHER_UID)
        (version / "variables").chmod(0o644)
        report = run_as(
            OTHER_UID, FIX_AND_RETRY, str(base), str(version / "variables"), preload=PRELOAD
        )

    state, code, message = report["before"]
    assert (state, code) == ("END", "PERMISSION_DENIED"), message
    assert "load attempt 1 failed" in message
    assert report["after"] == ["END", "AVAILABLE", "AVAILABLE"]
