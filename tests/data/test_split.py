import random

import pytest

from product_cnn.data.split import min_class_size, split_counts, stratified_split
from product_cnn.errors import DataError

CLASSES = ["A", "B", "C"]


def _samples(sizes=(100, 28, 65), root="/data"):
    return [(f"{root}/{CLASSES[c]}/{i:04d}.jpg", c) for c, n in enumerate(sizes) for i in range(n)]


def test_split_is_stratified_with_about_70_20_10():
    parts = stratified_split(_samples(), CLASSES, "/data")
    for label, n in enumerate((100, 28, 65)):
        got = tuple(sum(1 for _, y in parts[s] if y == label) for s in ("train", "val", "test"))
        assert got == split_counts(n, 0.2, 0.1)
        assert got[1] == round(n * 0.2) and got[2] == round(n * 0.1)
        assert all(count > 0 for count in got)


def test_split_is_disjoint_and_complete():
    samples = _samples()
    parts = stratified_split(samples, CLASSES, "/data")
    paths = [p for s in ("train", "val", "test") for p, _ in parts[s]]
    assert len(paths) == len(set(paths)) == len(samples)
    assert set(paths) == {p for p, _ in samples}


def test_split_does_not_depend_on_listing_order_or_location():
    samples = _samples()
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    a = stratified_split(samples, CLASSES, "/data", seed=7)
    b = stratified_split(shuffled, CLASSES, "/data", seed=7)
    assert a == b
    moved = stratified_split(_samples(root="/elsewhere/x"), CLASSES, "/elsewhere/x", seed=7)
    assert [p.replace("/elsewhere/x", "/data") for p, _ in moved["test"]] == [p for p, _ in a["test"]]


def test_seed_changes_the_split_and_the_order_is_mixed():
    a = stratified_split(_samples(), CLASSES, "/data", seed=1)
    b = stratified_split(_samples(), CLASSES, "/data", seed=2)
    assert a["test"] != b["test"]
    # not simply the first or last files of each class
    first_ten = {f"/data/A/{i:04d}.jpg" for i in range(10)}
    assert {p for p, y in a["test"] if y == 0} != first_ten


def test_adding_a_photo_keeps_the_others_in_place():
    base = _samples((100, 28, 65))
    grown = [*base, ("/data/A/9999.jpg", 0)]
    a = stratified_split(base, CLASSES, "/data")
    b = stratified_split(grown, CLASSES, "/data")
    moved = {p for p, _ in a["train"]} - {p for p, _ in b["train"]}
    assert len(moved) <= 1


def test_too_small_class_is_named_with_the_number_needed():
    with pytest.raises(DataError, match=r"B \(2\).*at least 3"):
        stratified_split(_samples((10, 2, 10)), CLASSES, "/data")
    assert min_class_size(0.2, 0.0) == 2
    parts = stratified_split(_samples((10, 2, 10)), CLASSES, "/data", val_fraction=0.2, test_fraction=0)
    assert parts["test"] == []


def test_bad_fractions_are_refused():
    with pytest.raises(DataError, match="fractions"):
        stratified_split(_samples(), CLASSES, "/data", val_fraction=0.6, test_fraction=0.5)
