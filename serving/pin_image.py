"""Pin the serving image of one kustomize overlay by digest, at release (`make k8s-pin-image`).

    python -m serving.pin_image --overlay serving/k8s/overlays/gpu \\
        tensorflow/serving:2.21.0-gpu@sha256:<64 hex digits>

The same as `kustomize edit set image tensorflow/serving=IMAGE` run in the overlay: the overlay's
`images:` entry for `tensorflow/serving` becomes exactly `newName` (and `newTag` when IMAGE has
a tag) and `digest`, so the rendered Deployment runs `NAME[:TAG]@sha256:...` and a re-pushed tag
cannot change what runs. With `--kustomize PATH` that command itself is run; otherwise this module
makes the edit (kubectl embeds kustomize's build, not its `edit` command), leaving the rest of the
file, comments included, as it was. Only the standard library: it runs with any python3.

IMAGE must carry a digest (`@sha256:` and 64 hex digits): pinning is the point, and it is what
lets `make k8s-check` skip checkov's image-digest check (CKV_K8S_43).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MANIFEST_IMAGE = "tensorflow/serving"  # the image name written in serving/k8s/base
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ITEM = re.compile(r"^(\s*)- ")


class PinError(ValueError):
    """A usage error: a reference without a digest, or an overlay that is not one."""


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None
    digest: str

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + "@" + self.digest


def parse_image(ref: str) -> ImageRef:
    """`NAME[:TAG]@DIGEST`, checked; a reference without a digest is refused."""
    rest, at, digest = ref.strip().partition("@")
    if not at:
        raise PinError(f"{ref!r} has no digest: give NAME[:TAG]@sha256:<64 hex digits>")
    if not _DIGEST.fullmatch(digest):
        raise PinError(f"{digest!r} is not a digest (sha256: and 64 lowercase hex digits)")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    name, tag = (rest[:colon], rest[colon + 1 :]) if colon > slash else (rest, None)
    if not _NAME.fullmatch(name):
        raise PinError(f"{name!r} is not an image name")
    if tag is not None and not _TAG.fullmatch(tag):
        raise PinError(f"{tag!r} is not an image tag")
    return ImageRef(name, tag, digest)


def _entry_lines(indent: str, image: ImageRef, manifest_name: str) -> list[str]:
    lines = [f"{indent}- name: {manifest_name}", f"{indent}  newName: {image.name}"]
    if image.tag:
        lines.append(f'{indent}  newTag: "{image.tag}"')
    lines.append(f"{indent}  digest: {image.digest}")
    return lines


def _item_name(lines: list[str]) -> str | None:
    for line in lines:
        key, sep, value = line.strip().removeprefix("- ").partition(":")
        if sep and key.strip() == "name":
            return value.split("#")[0].strip().strip("'\"")
    return None


def set_image(text: str, image: ImageRef, manifest_name: str = MANIFEST_IMAGE) -> str:
    """The kustomization text with `manifest_name`'s `images:` entry replaced by `image`."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.fullmatch(r"images:\s*", line))
    except StopIteration:
        body = "\n".join(lines + ["images:", *_entry_lines("  ", image, manifest_name)])
        return body + "\n"
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t-"):
        end += 1
    # Items of the block: a dash line, and the lines below it indented deeper (or blank).
    items: list[tuple[int, int]] = []
    i = start + 1
    while i < end:
        match = _ITEM.match(lines[i])
        if not match:
            i += 1
            continue
        depth, last = len(match.group(1)), i + 1
        while last < end and (
            not lines[last].strip() or len(lines[last]) - len(lines[last].lstrip()) > depth
        ):
            last += 1
        while last > i + 1 and not lines[last - 1].strip():
            last -= 1
        items.append((i, last))
        i = last
    indent = _ITEM.match(lines[items[0][0]]).group(1) if items else "  "
    for first, last in items:
        if _item_name(lines[first:last]) == manifest_name:
            indent = _ITEM.match(lines[first]).group(1)
            lines[first:last] = _entry_lines(indent, image, manifest_name)
            return "\n".join(lines) + "\n"
    at = items[-1][1] if items else start + 1
    lines[at:at] = _entry_lines(indent, image, manifest_name)
    return "\n".join(lines) + "\n"


def pin(overlay: Path, image: ImageRef, *, kustomize: str | None = None) -> None:
    """Edit `overlay`'s kustomization.yaml (with the kustomize CLI when given)."""
    kustomization = overlay / "kustomization.yaml"
    if not kustomization.is_file():
        raise PinError(f"{overlay} is not a kustomize overlay (no kustomization.yaml)")
    if kustomize:
        subprocess.run(
            [kustomize, "edit", "set", "image", f"{MANIFEST_IMAGE}={image}"],
            cwd=overlay,
            check=True,
        )
        return
    kustomization.write_text(set_image(kustomization.read_text(), image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.pin_image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--overlay", required=True, type=Path, help="e.g. serving/k8s/overlays/gpu")
    parser.add_argument("--kustomize", help="run this kustomize CLI's `edit set image` instead")
    parser.add_argument("image", help="NAME[:TAG]@sha256:DIGEST")
    args = parser.parse_args(argv)
    try:
        image = parse_image(args.image)
        pin(args.overlay, image, kustomize=args.kustomize)
    except PinError as e:
        print(f"k8s-pin-image: {e}", file=sys.stderr)
        return 2
    print(f"{args.overlay}: {MANIFEST_IMAGE} -> {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
