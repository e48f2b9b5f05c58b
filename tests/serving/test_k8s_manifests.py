"""The Kubernetes deployment as kustomize renders it (issue 14, point 13): probes that name no
model, the NetworkPolicy's client rule, and pinning the image by digest at release.

The rendered manifests need `kubectl` (with its embedded kustomize); without it those tests skip,
saying so. `make k8s-check` validates the same renders against the Kubernetes schema and checkov.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.pin_image import ImageRef, PinError, parse_image, set_image

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "serving" / "k8s"
OVERLAYS = ("gpu", "cpu")
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
DIGEST = "sha256:" + "0123456789abcdef" * 4
CLIENT = {("xfer.io/client", "In", ("true",))}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize renders cannot be made")
    return kubectl


def render(overlay: Path) -> list[dict]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict], kind: str) -> dict:
    [found] = [d for d in docs if d["kind"] == kind]
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> list[dict]:
    return render(K8S / "overlays" / request.param)


def _server(docs: list[dict]) -> dict:
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _model_names() -> list[str]:
    text = (K8S / "base" / "config" / "models.config").read_text()
    return re.findall(r'name: "([^"]+)"', text)


def test_no_probe_names_a_model(rendered):
    server = _server(rendered)
    assert _model_names() == ["classifier"]  # what an old hard-coded path would have named
    for probe in PROBES:
        text = yaml.safe_dump(server[probe])
        assert "httpGet" not in server[probe], f"{probe} is an HTTP probe: {text}"
        assert "/v1/models" not in text, f"{probe} names a model path: {text}"
        for name in _model_names():
            assert name not in text, f"{probe} names the model {name!r}: {text}"


def test_probes_ask_grpc_health_on_the_serving_port(rendered):
    server = _server(rendered)
    [grpc_port] = [p["containerPort"] for p in server["ports"] if p["name"] == "grpc"]
    assert f"--port={grpc_port}" in server["args"]
    # tensorflow_model_server serves grpc.health.v1 only with this flag (default false).
    assert "--enable_grpc_healthcheck_service=true" in server["args"]
    for probe in PROBES:
        # No `service`: the overall status "", which TF Serving answers SERVING once its ports are
        # open (after the first load of every model), and xfer-serve once every model is loaded.
        assert server[probe]["grpc"] == {"port": grpc_port}, probe
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= (
        600
    ), "the first load (and warmup) gets at least 10 minutes"


def _requirements(selector: dict) -> set[tuple[str, str, tuple[str, ...]]]:
    """A label selector as (key, operator, values) triples: matchLabels and matchExpressions."""
    out = {(k, "In", (v,)) for k, v in selector.get("matchLabels", {}).items()}
    for e in selector.get("matchExpressions", []):
        out.add((e["key"], e["operator"], tuple(e.get("values", ()))))
    return out


def test_networkpolicy_admits_clients_from_labelled_namespaces(rendered):
    policy = one(rendered, "NetworkPolicy")
    [client_rule] = [
        rule
        for rule in policy["spec"]["ingress"]
        if {p["port"] for p in rule["ports"]} == {8500, 8501}
    ]
    peers = client_rule["from"]
    # Every peer asks of the client pod exactly xfer.io/client=true (kustomize's labels must not
    # have been added to it: a client would need the server's own labels to get in).
    for peer in peers:
        assert _requirements(peer["podSelector"]) == CLIENT, peer
    # Clients in the server's namespace, and in namespaces labelled xfer.io/client=true; no
    # `namespaceSelector: {}` (every namespace).
    assert [p for p in peers if "namespaceSelector" not in p], "no rule for the own namespace"
    cross = [p for p in peers if "namespaceSelector" in p]
    assert [_requirements(p["namespaceSelector"]) for p in cross] == [CLIENT]


def test_the_label_is_documented():
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "kubectl label namespace" in text and "xfer.io/client=true" in text


# ------------------------------------------------------------------------- pinning by digest


def test_a_reference_without_a_digest_is_refused():
    assert parse_image(f"tensorflow/serving:2.21.0-gpu@{DIGEST}") == ImageRef(
        "tensorflow/serving", "2.21.0-gpu", DIGEST
    )
    assert parse_image(f"registry.local:5000/ml/xfer-serving@{DIGEST}") == ImageRef(
        "registry.local:5000/ml/xfer-serving", None, DIGEST
    )
    for bad in ("tensorflow/serving:2.21.0", "tensorflow/serving@sha256:abc", f"Bad Name@{DIGEST}"):
        with pytest.raises(PinError):
            parse_image(bad)


def test_set_image_replaces_only_that_entry_and_keeps_comments():
    image = parse_image(f"tensorflow/serving:2.21.0@{DIGEST}")
    # kustomize's own layout (dashes at column 0, keys sorted), as `kustomize edit` writes it.
    text = (
        "# keep me\nresources:\n- ../../base\nimages:\n- name: busybox\n  newTag: '1'\n"
        "- digest: sha256:old\n  name: tensorflow/serving\n  newTag: 2.20.0\n"
        "# and me\npatches: []\n"
    )
    assert set_image(text, image) == (
        "# keep me\nresources:\n- ../../base\nimages:\n- name: busybox\n  newTag: '1'\n"
        "- name: tensorflow/serving\n  newName: tensorflow/serving\n"
        f'  newTag: "2.21.0"\n  digest: {DIGEST}\n# and me\npatches: []\n'
    )
    # No entry yet: one is added; no `images:` at all: the block is added.
    assert set_image("images:\n  - name: busybox\n", image).startswith(
        "images:\n  - name: busybox\n  - name: tensorflow/serving\n"
    )
    assert "images:\n  - name: tensorflow/serving\n" in set_image("resources: []\n", image)


def _make():
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed: `make k8s-pin-image` cannot run")
    return make


def _pin(k8s: Path, overlay: str, image: str, kustomize: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [_make(), "-s", "-C", str(ROOT), "k8s-pin-image", f"K8S_DIR={k8s}"]
        + [f"OVERLAY={overlay}", f"IMAGE={image}", f"KUSTOMIZE={kustomize}"],
        capture_output=True,
        text=True,
    )


def test_make_k8s_pin_image_pins_the_overlay_by_digest(tmp_path):
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    _kubectl()
    cpu_before = (k8s / "overlays" / "cpu" / "kustomization.yaml").read_text()

    result = _pin(k8s, "gpu", f"tensorflow/serving:2.21.0-gpu@{DIGEST}")
    assert result.returncode == 0, result.stdout + result.stderr
    image = _server(render(k8s / "overlays" / "gpu"))["image"]
    assert image == f"tensorflow/serving:2.21.0-gpu@{DIGEST}"
    assert (k8s / "overlays" / "cpu" / "kustomization.yaml").read_text() == cpu_before
    assert (
        "# TF Serving's GPU image" in (k8s / "overlays" / "gpu" / "kustomization.yaml").read_text()
    )

    # Pinning again (a new release, the project's own image) replaces the pin.
    other = "0" * 64
    result = _pin(k8s, "gpu", f"registry.local/ml/xfer-serving@sha256:{other}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _server(render(k8s / "overlays" / "gpu"))["image"] == (
        f"registry.local/ml/xfer-serving@sha256:{other}"
    )

    # A tag alone is refused, and the overlay is left as it was.
    before = (k8s / "overlays" / "cpu" / "kustomization.yaml").read_text()
    result = _pin(k8s, "cpu", "tensorflow/serving:2.21.0")
    assert result.returncode != 0 and "has no digest" in result.stderr
    assert (k8s / "overlays" / "cpu" / "kustomization.yaml").read_text() == before
    result = _pin(k8s, "", f"tensorflow/serving@{DIGEST}")
    assert result.returncode != 0 and "OVERLAY=gpu or OVERLAY=cpu" in result.stdout


def test_the_builtin_edit_renders_as_kustomize_edit_does(tmp_path):
    kustomize = shutil.which("kustomize")
    if kustomize is None:
        pytest.skip("the kustomize CLI is not installed (kubectl has no `kustomize edit`)")
    renders = {}
    for how in ("builtin", "cli"):
        k8s = tmp_path / how
        shutil.copytree(K8S, k8s)
        image = f"tensorflow/serving:2.21.0@{DIGEST}"
        result = _pin(k8s, "cpu", image, kustomize if how == "cli" else "")
        assert result.returncode == 0, result.stdout + result.stderr
        renders[how] = render(k8s / "overlays" / "cpu")
    assert renders["builtin"] == renders["cli"]


def test_the_checkov_digest_skip_is_justified_by_the_pin_target():
    deployment = (K8S / "base" / "deployment.yaml").read_text()
    [skip] = re.findall(r"checkov\.io/skip\d+: (CKV_K8S_43=.*)", deployment)
    assert "make k8s-pin-image" in skip
    assert "make k8s-pin-image" in (ROOT / "docs" / "kubernetes.md").read_text()
    assert "k8s-pin-image:" in (ROOT / "Makefile").read_text()
