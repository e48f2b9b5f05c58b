"""Streaming readers: every kind of INPUT becomes a generator of `Item`s, read one at a time.

Nothing here holds the whole input list: directories are walked, lists are read line by line and
TFRecords record by record, so memory stays flat however many millions of images there are.
Any path `tf.io.gfile` reads works (gs://, s3:// with the right plugins); plain local paths are
read with the standard library (faster, no TensorFlow file system round trip).
"""

from __future__ import annotations

import csv
import glob as globlib
import io
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from client.config import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")
TFRECORD_MARKERS = (".tfrecord", ".tfrecords", ".tfr")
ENCODED_FEATURE = "image/encoded"
URI_FEATURE = "image/uri"
LABEL_FEATURES = ("label", "image/class/text", "image/label")


@dataclass
class Item:
    """One input image: its URI, optional ground-truth label, and bytes or why it has none."""

    uri: str
    label: str | None = None
    data: bytes | None = None
    error: str | None = None
    mtime: float | None = None  # the local file's modification time (seconds since the epoch)

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else 0


def _is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # only for remote paths and TFRecords

    return tf.io.gfile


def is_dir(path: str) -> bool:
    return _gfile().isdir(path) if _is_remote(path) else os.path.isdir(path)


def read_bytes(uri: str) -> bytes:
    return read_file(uri)[0]


def read_file(uri: str) -> tuple[bytes, float | None]:
    """The file's bytes and, for a local file, its mtime (fstat of the open file: no second
    lookup); None for a remote one, whose mtime would cost another round trip."""
    if _is_remote(uri):
        with _gfile().GFile(uri, "rb") as f:
            return f.read(), None
    with open(uri, "rb") as f:
        return f.read(), os.fstat(f.fileno()).st_mtime


def _open_text(path: str):
    if _is_remote(path):
        return io.TextIOWrapper(_gfile().GFile(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not _hidden(posixpath.basename(path))


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def is_tfrecord(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return any(marker in name for marker in TFRECORD_MARKERS)


def folder_label(uri: str) -> str:
    """Ground truth by convention: the image's parent folder name (`images/cat/1.jpg` → cat)."""
    return posixpath.basename(posixpath.dirname(uri.replace(os.sep, "/")))


def walk_images(root: str) -> Iterator[str]:
    """Image files under `root`, recursively, in sorted order (hidden files and folders skipped)."""
    if _is_remote(root):
        for dirpath, dirnames, filenames in _gfile().walk(root):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d.rstrip("/")))
            for name in sorted(filenames):
                if is_image_name(name):
                    yield posixpath.join(dirpath, name)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if is_image_name(name):
                yield os.path.join(dirpath, name)


def expand_glob(pattern: str) -> Iterator[str]:
    if _is_remote(pattern):
        yield from sorted(_gfile().glob(pattern))
    else:
        yield from globlib.iglob(pattern, recursive=True)


def read_uri_list(path: str) -> Iterator[tuple[str, str | None]]:
    """`uri[,label]` rows of a text or CSV list; a `uri` header is skipped; blank/# lines ignored.

    Relative URIs are relative to the list file, so a list travels with its images.
    """
    base = posixpath.dirname(path) if _is_remote(path) else os.path.dirname(path)
    with _open_text(path) as f:
        for row in csv.reader(f):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            uri = row[0].strip()
            if uri.lower() == "uri":
                continue
            label = row[1].strip() if len(row) > 1 and row[1].strip() else None
            if not _is_remote(uri) and not os.path.isabs(uri):
                uri = posixpath.join(base, uri) if _is_remote(base) else os.path.join(base, uri)
            yield uri, label


def read_tfrecords(path: str) -> Iterator[Item]:
    """tf.Examples with `image/encoded`; URI: `image/uri`, else `<file>@<index>` (resume-stable)."""
    import tensorflow as tf

    compression = "GZIP" if path.lower().endswith(".gz") else ""
    dataset = tf.data.TFRecordDataset(path, compression_type=compression)
    for index, record in enumerate(dataset.as_numpy_iterator()):
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        uri = f"{path}@{index}"
        if feature[URI_FEATURE].bytes_list.value:
            uri = feature[URI_FEATURE].bytes_list.value[0].decode("utf-8", "replace")
        label = None
        for key in LABEL_FEATURES:
            if key in feature and feature[key].bytes_list.value:
                label = feature[key].bytes_list.value[0].decode("utf-8", "replace")
                break
        encoded = feature[ENCODED_FEATURE].bytes_list.value if ENCODED_FEATURE in feature else []
        if not encoded:
            yield Item(uri, label, error=f"{path}: record {index} has no {ENCODED_FEATURE!r}")
        else:
            yield Item(uri, label, data=encoded[0])


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


class InputNotFound(ValueError):
    """An INPUT names nothing: no such file or directory, or a local glob matching no file."""


def check_inputs(inputs: Iterable[str]) -> None:
    """Raise `InputNotFound` naming the first INPUT that names nothing, before any work.

    A local path must exist and a local glob match at least one path (the first match ends the
    search); a remote path (gs://...) must exist. Remote globs are not listed twice: one that
    matches nothing yields no rows. Files named inside lists and TFRecords are not checked here:
    each one that cannot be read is its own error row.
    """
    for source in inputs:
        if _has_glob(source):
            if not _is_remote(source) and next(globlib.iglob(source, recursive=True), None) is None:
                raise InputNotFound(f"no such input: {source!r} (the pattern matches no file)")
        elif not (_gfile().exists(source) if _is_remote(source) else os.path.exists(source)):
            raise InputNotFound(f"no such input: {source!r} (no such file or directory)")


def canonical_uri(uri: str, cwd: str | None = None) -> str:
    """What `--resume` compares: a local path made absolute and normalised (`many/a.jpg`,
    `./many/a.jpg` and `/work/many/a.jpg` are one image); a URL (`gs://...`) as given.

    Symbolic links are deliberately not resolved: a row names the image by the path the user
    gave, and a link (`current -> batch-7`) is part of that name. Resolving would cost a system
    call per path component per image and make the comparison depend on where links point at
    resume time. The same file reached through two different links thus counts as two inputs.
    """
    if _is_remote(uri):
        return uri
    return os.path.normpath(os.path.join(cwd or os.getcwd(), uri))


def iter_sources(inputs: Iterable[str]) -> Iterator[tuple[str, str | None] | Item]:
    """Each INPUT expanded lazily: (uri, label) pairs, or ready Items for TFRecords."""
    for source in inputs:
        if _has_glob(source):
            for path in expand_glob(source):
                if is_tfrecord(path):
                    yield from read_tfrecords(path)
                else:
                    yield path, None
        elif is_dir(source):
            for path in walk_images(source):
                yield path, None
        elif is_tfrecord(source):
            yield from read_tfrecords(source)
        elif source.lower().endswith(LIST_SUFFIXES):
            yield from read_uri_list(source)
        else:
            yield source, None  # a single image


def iter_items(
    inputs: Iterable[str],
    *,
    labels_from_folders: bool = False,
    skip: set[str] | frozenset[str] = frozenset(),
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[Item]:
    """Items with their bytes read, in input order.

    An input whose `canonical_uri` is in `skip` is not read at all (`on_skip(uri)` is called
    for it). A file that cannot be read becomes an Item with an error naming it, never an
    exception.
    """
    cwd = os.getcwd()

    def skipped(uri: str) -> bool:
        if skip and canonical_uri(uri, cwd) in skip:
            if on_skip is not None:
                on_skip(uri)
            return True
        return False

    for entry in iter_sources(inputs):
        if isinstance(entry, Item):
            item = entry
            if skipped(item.uri):
                continue
        else:
            uri, label = entry
            if skipped(uri):
                continue
            item = Item(uri, label)
            try:
                item.data, item.mtime = read_file(uri)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is an error record
                item.error = f"cannot read: {type(exc).__name__}: {exc}"
        if labels_from_folders:
            item.label = folder_label(item.uri)
        yield item
