import shutil

import pytest

from export.data.dataset import assign_split


def names_in_two_splits(prefix: str) -> tuple[str, str]:
    """Two file names that the stable hash puts in different splits (train and not train)."""
    train = other = None
    i = 0
    while train is None or other is None:
        name = f"{prefix}{i}.png"
        if assign_split(name) == "train":
            train = train or name
        else:
            other = other or name
        i += 1
    return train, other


@pytest.fixture(scope="session")
def dup_root(shapes_root, tmp_path_factory):
    """The shapes data plus exact copies: one within a split, one across splits (leakage)."""
    root = tmp_path_factory.mktemp("dups") / "images"
    shutil.copytree(shapes_root, root)
    source = (root / "red" / "img_001.png").read_bytes()
    in_train, elsewhere = names_in_two_splits("copy_")
    (root / "red" / in_train).write_bytes(source)
    (root / "green" / elsewhere).write_bytes(source)  # same bytes, another class and split
    (root / "blue" / "empty.png").write_bytes(b"")
    return root
