from collections import Counter

import pytest

from export.data.dataset import (
    DatasetError,
    SplitConfig,
    assign_split,
    scan,
    split_key,
)


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_split_key_drops_nohash_suffix():
    assert split_key("leonard_nohash_1.jpg") == "leonard.jpg"
    assert split_key("sub/leonard_nohash_2.png") == "sub/leonard.png"
    assert split_key("plain.jpg") == "plain.jpg"
    assert (
        assign_split("a_nohash_1.jpg") == assign_split("a_nohash_99.jpg") == assign_split("a.jpg")
    )


def test_split_proportions_near_80_10_10():
    counts = Counter(assign_split(f"img_{i}.jpg") for i in range(20_000))
    assert 0.78 < counts["train"] / 20_000 < 0.82
    assert 0.09 < counts["validation"] / 20_000 < 0.11
    assert 0.09 < counts["test"] / 20_000 < 0.11


def test_split_percentages_are_configurable_and_validated():
    counts = Counter(assign_split(f"img_{i}.jpg", SplitConfig(30, 0)) for i in range(5_000))
    assert counts["test"] == 0 and 0.27 < counts["validation"] / 5_000 < 0.33
    with pytest.raises(ValueError, match="must leave room for training; received 60 \\+ 40"):
        SplitConfig(60, 40)


def test_adding_images_never_moves_an_existing_one(tmp_path):
    for i in range(50):
        touch(tmp_path / "cat" / f"c{i}.jpg")
        touch(tmp_path / "dog" / f"d{i}.jpg")
    before = {e.path: e.split for e in scan(tmp_path).examples}
    for i in range(50, 200):
        touch(tmp_path / "cat" / f"c{i}.jpg")
    touch(tmp_path / "bird" / "b0.jpg")  # a new class too
    after = {e.path: e.split for e in scan(tmp_path).examples}
    assert all(after[path] == split for path, split in before.items())


def test_labels_sorted_and_hidden_files_ignored(tmp_path):
    touch(tmp_path / "zebra" / "1.jpg")
    touch(tmp_path / "ant" / "1.jpg")
    touch(tmp_path / "ant" / ".DS_Store")
    touch(tmp_path / ".cache" / "x.jpg")
    dataset = scan(tmp_path)
    assert dataset.labels == ["ant", "zebra"]
    assert [(e.label, e.label_id) for e in dataset.examples] == [("ant", 0), ("zebra", 1)]


def test_empty_class_is_an_error_naming_the_folder(tmp_path):
    touch(tmp_path / "cat" / "1.jpg")
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'dog'}: class folder is empty"):
        scan(tmp_path)


def test_fewer_than_two_classes_is_an_error_naming_the_folder(tmp_path):
    touch(tmp_path / "cat" / "1.jpg")
    with pytest.raises(DatasetError, match=f"{tmp_path}: need at least 2 class folders, found 1"):
        scan(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        scan(tmp_path / "missing")


def test_explicit_train_and_test_roots(tmp_path):
    for i in range(30):
        touch(tmp_path / "train" / "cat" / f"{i}.jpg")
        touch(tmp_path / "train" / "dog" / f"{i}.jpg")
    touch(tmp_path / "test" / "cat" / "t.jpg")
    touch(tmp_path / "test" / "dog" / "t.jpg")
    dataset = scan(tmp_path)
    assert dataset.explicit_splits and dataset.labels == ["cat", "dog"]
    test = [e for e in dataset.examples if e.split == "test"]
    assert sorted(e.path for e in test) == sorted(
        str(tmp_path / "test" / c / "t.jpg") for c in ("cat", "dog")
    )
    # Validation is carved from train/ by the same stable hash; nothing from train/ is test.
    train_side = [e for e in dataset.examples if "/train/" in e.path]
    assert {e.split for e in train_side} == {"train", "validation"}


def test_explicit_test_class_missing_from_train_is_an_error(tmp_path):
    touch(tmp_path / "train" / "cat" / "1.jpg")
    touch(tmp_path / "train" / "dog" / "1.jpg")
    touch(tmp_path / "test" / "bird" / "1.jpg")
    with pytest.raises(DatasetError, match="\\['bird'\\] do not exist in the training folder"):
        scan(tmp_path)
