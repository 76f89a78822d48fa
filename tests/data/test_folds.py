"""k-fold splits: every photo tested once, stratified, near-duplicates together, seeded, order-free."""

import random
from collections import Counter

import pytest

from product_cnn.data.folds import assign_folds, kfold_split
from product_cnn.errors import DataError

CLASSES = ["A", "B", "C"]


def _samples(sizes=(84, 28, 65), root="/data"):
    return [(f"{root}/{CLASSES[c]}/{i:04d}.jpg", c) for c, n in enumerate(sizes) for i in range(n)]


def _groups():  # near-duplicate groups of 2..4 photos, one across two classes
    return [["/data/A/0000.jpg", "/data/A/0001.jpg", "/data/A/0002.jpg", "/data/A/0003.jpg"],
            ["/data/B/0005.jpg", "/data/B/0006.jpg"], ["/data/C/0010.jpg", "/data/A/0050.jpg"]]


@pytest.mark.parametrize("folds", [3, 5])
def test_every_photo_is_in_exactly_one_test_fold(folds):
    samples = _samples()
    tests = [kfold_split(samples, CLASSES, "/data", folds=folds, fold=k,
                         groups=_groups())["test"] for k in range(folds)]
    tested = [p for t in tests for p, _ in t]
    assert sorted(tested) == sorted(p for p, _ in samples)  # once each, none left out
    for k in range(folds):
        parts = kfold_split(samples, CLASSES, "/data", folds=folds, fold=k, groups=_groups())
        train, val, test = ({p for p, _ in parts[s]} for s in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert len(train) + len(val) + len(test) == len(samples)
        assert len(val) > 0 and len(train) > len(val)


def test_folds_are_stratified_within_one_photo_or_the_largest_group():
    samples = _samples()
    plain = assign_folds(samples, CLASSES, "/data", folds=5, seed=3)
    grouped = assign_folds(samples, CLASSES, "/data", folds=5, seed=3, groups=_groups())
    for fold_of, slack in ((plain, 1), (grouped, 4)):  # 4: the largest group
        for label in range(3):
            counts = Counter(fold_of[p] for p, y in samples if y == label)
            assert max(counts.values()) - min(counts.values()) <= slack, counts


def test_near_duplicate_groups_never_cross_folds():
    fold_of = assign_folds(_samples(), CLASSES, "/data", folds=5, groups=_groups())
    for group in _groups():
        assert len({fold_of[p] for p in group}) == 1
    parts = kfold_split(_samples(), CLASSES, "/data", folds=5, fold=0, groups=_groups())
    split_of = {p: s for s, samples in parts.items() for p, _ in samples}
    for group in _groups():  # inside the training folds, validation keeps groups whole too
        assert len({split_of[p] for p in group}) == 1


def test_same_seed_same_folds_whatever_the_file_order():
    samples = _samples()
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    seven = assign_folds(samples, CLASSES, "/data", folds=5, seed=7)
    assert seven == assign_folds(shuffled, CLASSES, "/data", folds=5, seed=7)
    assert seven != assign_folds(samples, CLASSES, "/data", folds=5, seed=8)


def test_bad_fold_settings_are_one_line_errors():
    with pytest.raises(DataError, match=r"data.fold=5 is not one of 0..4"):
        kfold_split(_samples(), CLASSES, "/data", folds=5, fold=5)
    with pytest.raises(DataError, match="at least 2 folds"):
        kfold_split(_samples(), CLASSES, "/data", folds=1, fold=0)
    with pytest.raises(DataError, match=r"C \(3\) have fewer distinct photos than data.folds=5"):
        kfold_split(_samples((10, 10, 3)), CLASSES, "/data", folds=5, fold=0)


def test_presplit_trees_are_refused_in_one_line(tree_factory):
    from product_cnn.data.datamodule import ProductDataModule

    root = tree_factory({"Bags": 10, "Cups": 10}, layout="presplit")
    dm = ProductDataModule(str(root), image_size=32, folds=5, fold=0)
    with pytest.raises(DataError, match=r"data.folds needs one folder per class: .* is already split"):
        dm.setup("fit")


def test_the_data_module_tests_the_fold(tree_factory):
    from product_cnn.data.datamodule import ProductDataModule

    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})
    tested = []
    for k in range(5):
        dm = ProductDataModule(str(root), image_size=32, folds=5, fold=k)
        dm.setup("fit")
        assert dm.counts()["test"] == [2, 2, 2]
        assert f"fold {k} of 5 folds" in dm.describe()
        tested += [p for p, _ in dm.split_samples["test"]]
    assert len(tested) == len(set(tested)) == 30
