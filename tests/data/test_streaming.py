"""Shards (prepare_data) and data=streaming: what the shards hold, resuming, several ranks, s3://."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import socket
from pathlib import Path

import pytest
import torch

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.images import load_array
from product_cnn.data.streaming.datamodule import StreamingDataModule
from product_cnn.data.streaming.dataset import ShardDataset
from product_cnn.data.streaming.manifest import read_samples
from product_cnn.data.streaming.prepare import prepare_shards
from product_cnn.errors import DataError
from tests.helpers import NO_SAME_PHOTO, make_tree

SIZE = 32


def _folder(root: Path, cache: Path, **kw) -> ProductDataModule:
    return ProductDataModule(root=str(root), image_size=SIZE, cache_dir=str(cache), cache=False,
                             skip_bad_images=True, **kw)


def _prepare(folder: ProductDataModule, output: str, **kw):
    return prepare_shards(folder.photos, output, image_size=folder.hparams.image_size,
                          decode=folder.hparams.decode, **kw)


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "photos", {"Bags": 14, "Cups": 14, "Pens": 14})
    (root / "Cups" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shutil.copy(root / "Bags" / "img_000.jpg", root / "Bags" / "img_000_again.jpg")  # a near-duplicate
    return root


@pytest.mark.parametrize("store", ["image", "bytes"])
def test_shards_hold_every_photo_once_as_data_folder_reads_it(tmp_path, photos, store):
    manifest = _prepare(_folder(photos, tmp_path / "cache"), str(tmp_path / "shards"), store=store,
                              folds=3, num_workers=2)
    folder = _folder(photos, tmp_path / "cache")
    folder.setup("fit")
    assert manifest.class_names == folder.class_names == ["Bags", "Cups", "Pens"]
    assert manifest.counts == folder.counts()
    assert [Path(p).name for p, _ in manifest.bad] == ["broken.jpg"]  # listed and left out
    streaming = StreamingDataModule(str(tmp_path / "shards"), image_size=SIZE,
                                    cache_dir=str(tmp_path / "cache"))
    streaming.setup("fit")
    for split in ("train", "val", "test"):
        listed = read_samples(str(tmp_path / "shards"), split, manifest.class_names)
        assert sorted(listed) == sorted(folder.split_samples[split])  # the folder path's split
        assert len(streaming.dataset(split)) == len(listed)
        dataset = ShardDataset(str(tmp_path / "shards" / split), store, image_size=SIZE, with_index=True)
        items = {index: (image, label) for image, label, index in (dataset[i] for i in range(len(dataset)))}
        assert sorted(items) == list(range(len(listed)))  # every photo exactly once
        for index, (path, label) in enumerate(listed):  # the pixels and label data=folder would train on
            image, stored_label = items[index]
            assert stored_label == label
            assert torch.equal(image, torch.from_numpy(load_array(path, SIZE)))
    # the near-duplicates stayed in one split, and the k-fold assignment is the folder path's
    together = [s for s, samples in folder.split_samples.items()
                if any(Path(p).name.startswith("img_000") and label == 0 for p, label in samples)]
    assert len(together) == 1
    rows = {}
    for split in ("train", "val", "test"):
        text = (tmp_path / "shards" / f"{split}.csv").read_text().splitlines()[1:]
        rows.update({line.split(",")[1]: int(line.split(",")[3]) for line in text})
    for k in range(3):
        fold = _folder(photos, tmp_path / "cache", folds=3, fold=k)
        fold.setup("fit")
        in_fold = sorted(p for p, f in rows.items() if f == k)
        assert sorted(p for p, _ in fold.split_samples["test"]) == in_fold


def test_an_interrupted_run_resumes_and_other_photos_are_refused(tmp_path, photos):
    out = tmp_path / "shards"
    first = _prepare(_folder(photos, tmp_path / "cache"), str(out), num_workers=2)
    train_index = (out / "train" / "index.json").stat().st_mtime_ns
    # as if killed while writing val: the manifest (written last), val's list and its shards are gone
    (out / "product_cnn.json").unlink()
    (out / "val.csv").unlink()
    shutil.rmtree(out / "val")
    again = _prepare(_folder(photos, tmp_path / "cache"), str(out), num_workers=2)
    assert again == first
    assert (out / "train" / "index.json").stat().st_mtime_ns == train_index  # finished split kept
    # killed after val's chunks, before litdata's index.json (written last), or before val.csv
    for gone in ("val/index.json", "val.csv"):
        (out / "product_cnn.json").unlink()
        (out / gone).unlink()
        assert _prepare(_folder(photos, tmp_path / "cache"), str(out), num_workers=2) == first
        assert len(ShardDataset(str(out / "val"), "image", image_size=SIZE)) == sum(first.counts["val"])
    assert _prepare(_folder(photos, tmp_path / "cache"), str(out)) == first  # complete: nothing redone
    other = make_tree(tmp_path / "other", {"Bags": 6, "Cups": 6})
    with pytest.raises(DataError, match="already holds other shards"):
        _prepare(_folder(other, tmp_path / "cache"), str(out))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        _prepare(_folder(other, tmp_path / "cache"), str(tmp_path / "busy"))


def test_a_path_label_csv_makes_the_same_shards_as_its_folder(tmp_path):
    root = make_tree(tmp_path / "photos", {"Bags": 10, "Cups": 10})
    listing = root / "photos.csv"
    listing.write_text("path,label\n" + "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n"
                                                for p in sorted(root.rglob("*.jpg"))))
    manifest = _prepare(_folder(listing, tmp_path / "cache"), str(tmp_path / "shards"), num_workers=1)
    assert manifest.class_names == ["Bags", "Cups"] and sum(map(sum, manifest.counts.values())) == 20
    (root / "bad.csv").write_text("path,label\nBags/img_000.jpg,Bags\nmissing.jpg,Cups\n")
    with pytest.raises(DataError, match=r"bad.csv, line 3: missing.jpg is not a file"):
        _folder(root / "bad.csv", tmp_path / "cache").setup("fit")


def _flat(batches: list[list[str]]) -> list[str]:
    return [d for batch in batches for d in batch]


def _epoch(loader) -> list[list[str]]:
    return [[_digest(image) for image in images] for images, _ in loader]


def test_the_loader_resumes_mid_epoch_with_exactly_the_remaining_samples(tmp_path, photos):
    _prepare(_folder(photos, tmp_path / "cache"), str(tmp_path / "shards"), num_workers=2)

    def loader():
        dm = StreamingDataModule(str(tmp_path / "shards"), image_size=SIZE, batch_size=4,
                                 cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        return dm.train_dataloader()

    train = read_samples(str(tmp_path / "shards"), "train", ["Bags", "Cups", "Pens"])
    every = sorted(_digest(torch.from_numpy(load_array(p, SIZE))) for p, _ in train)
    whole = loader()
    first, second = _epoch(whole), _epoch(whole)
    assert sorted(_flat(first)) == sorted(_flat(second)) == every  # every photo once per epoch
    assert first != second  # reshuffled
    killed = loader()
    _epoch(killed)
    seen = []
    for images, _ in killed:
        seen.append([_digest(image) for image in images])
        if len(seen) == 3:
            break
    state = killed.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    # as Lightning does: the epoch's remaining batches, without running the iterator to its end
    rest = [[_digest(image) for image in images] for images, _ in
            itertools.islice(resumed, len(second) - len(seen))]
    assert seen + rest == second
    assert _epoch(resumed) == _epoch(whole)  # then the next epoch, as the uninterrupted loader's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server (moto) on 127.0.0.1 with an empty bucket; its endpoint URL."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install "
                                     "'moto[server]'): no S3-compatible server to test s3:// against")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    # litdata uploads through obstore, which refuses plain http (real S3 is https): allow it for moto
    from litdata.streaming import downloader

    monkeypatch.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", "true")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="shop")
    yield endpoint
    server.stop()


@pytest.mark.slow  # keeps the default suite under 10 minutes
def test_shards_in_s3_are_written_and_streamed_through_litdatas_s3_client(tmp_path, photos, s3_server):
    import boto3

    options = {"endpoint_url": s3_server}
    manifest = _prepare(_folder(photos, tmp_path / "cache"), "s3://shop/shards", num_workers=2,
                              storage_options=options)
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="shop")["Contents"]}
    assert {"shards/product_cnn.json", "shards/train/index.json", "shards/train.csv"} <= keys
    assert not (tmp_path / "shards").exists()

    dm = StreamingDataModule("s3://shop/shards", image_size=SIZE, batch_size=4,
                             cache_dir=str(tmp_path / "cache"), storage_options=options)
    dm.setup("fit")
    assert dm.class_names == manifest.class_names
    images = [image for batch, _ in dm.train_dataloader() for image in batch]
    train = read_samples("s3://shop/shards", "train", manifest.class_names, options)
    expected = sorted(_digest(torch.from_numpy(load_array(p, SIZE))) for p, _ in train)
    assert sorted(map(_digest, images)) == expected
    assert list((tmp_path / "cache" / "streaming" / "train").rglob("*.bin"))  # chunks came down to the cache


@pytest.mark.parametrize("store", ["image", "bytes"])
def test_the_image_size_comes_from_the_shards_unless_set(tmp_path, photos, store):
    from product_cnn.data.streaming.photos import photo_inputs

    shards = str(tmp_path / "shards")
    _prepare(_folder(photos, tmp_path / "cache"), shards, store=store, num_workers=1)
    unset = StreamingDataModule(shards, batch_size=4, augment="light", cache_dir=str(tmp_path / "cache"))
    unset.setup("fit")
    assert unset.hparams.image_size == SIZE and unset.model_args()["image_size"] == SIZE
    assert next(iter(unset.train_dataloader()))[0].shape[-2:] == (SIZE, SIZE)
    assert unset.augment is not None  # built at the shards' size
    assert len(photo_inputs(shards, SIZE)) == sum(map(sum, unset.manifest.counts.values()))
    other = StreamingDataModule(shards, image_size=48, batch_size=4, cache_dir=str(tmp_path / "cache"))
    if store == "image":  # a stored image cannot be resized back to the photo: one line
        with pytest.raises(DataError, match=r"hold 32x32 images, data\.image_size=48: data\.image_size=null"):
            other.setup("fit")
        with pytest.raises(DataError, match=r"hold 32x32 images, the model takes 48x48"):
            photo_inputs(shards, 48)
    else:  # the photo files are decoded at the size asked for
        other.setup("fit")
        images, _ = next(iter(other.train_dataloader()))
        assert images.shape[-2:] == (48, 48)
        first = photo_inputs(shards, 48)[0]
        assert first.load_array(48, "reduced").shape == (3, 48, 48)


def _rank_epochs(rank: int, world: int, port: int, shards: str, cache: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    dm = StreamingDataModule(shards, image_size=SIZE, batch_size=5, cache_dir=cache)  # 30 = 2 x 3 x 5
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = {"train": [_epoch(loader) for _ in range(2)],
            "test": [int(i) for _, _, index in dm.test_dataloader() for i in index]}
    Path(out, f"rank{rank}.json").write_text(__import__("json").dumps(seen))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # about 20 s: two processes
def test_two_ranks_see_every_training_photo_once_per_epoch_and_every_test_photo_once(tmp_path, photos):
    _prepare(_folder(photos, tmp_path / "cache"), str(tmp_path / "shards"), num_workers=2)
    torch.multiprocessing.spawn(_rank_epochs, args=(2, _free_port(), str(tmp_path / "shards"),
                                                    str(tmp_path / "cache"), str(tmp_path)), nprocs=2)
    import json

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    train = read_samples(str(tmp_path / "shards"), "train", ["Bags", "Cups", "Pens"])
    every = sorted(_digest(torch.from_numpy(load_array(p, SIZE))) for p, _ in train)
    assert len(every) == 30
    for epoch in range(2):
        parts = [[d for batch in r["train"][epoch] for d in batch] for r in ranks]
        assert len(parts[0]) == len(parts[1]) == 15  # the same number of steps on both ranks
        assert sorted(parts[0] + parts[1]) == every  # together: every photo exactly once
    assert ranks[0]["train"][0] != ranks[0]["train"][1]  # reshuffled per epoch
    tested = sorted(ranks[0]["test"] + ranks[1]["test"])
    test = read_samples(str(tmp_path / "shards"), "test", ["Bags", "Cups", "Pens"])
    assert tested == list(range(len(test)))


@pytest.mark.slow  # about 60 s: four commands
def test_cli_prepare_train_and_eval_from_shards(tmp_path, photos):
    import json
    import subprocess
    import sys

    from tests.helpers import REPO

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / script), *args,
                               f"paths.cache_dir={tmp_path / 'cache'}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    shards = tmp_path / "shards"
    made = run("prepare_data.py", f"data.root={photos}", NO_SAME_PHOTO, f"output={shards}",
               "data.image_size=64", f"hydra.run.dir={tmp_path / 'prep'}")
    assert made.returncode == 0, made.stderr[-3000:]
    log = (tmp_path / "prep" / "prepare_data.log").read_text()
    assert "broken.jpg" in log and f"python train.py data=streaming data.input_dir={shards}" in log
    # no data.image_size anywhere below: the shards' 64 px
    trained = run("train.py", "data=streaming", f"data.input_dir={shards}",
                  "data.batch_size=8", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                  "trainer.precision=32-true", "callbacks.rich_progress_bar=null",
                  "callbacks.model_summary=null",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Image size: 64 px, as the shards were made" in (tmp_path / "run" / "train.log").read_text()
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    folder = _folder(photos, tmp_path / "cache")
    folder.setup("fit")
    assert report["split_sizes"] == {s: sum(c) for s, c in folder.counts().items()}  # as data=folder
    rows = (tmp_path / "run" / "test_predictions.csv").read_text().splitlines()[1:]
    tested = sorted(p.removeprefix(f"{photos}/") for p, _ in folder.split_samples["test"])
    assert sorted(r.split(",")[0] for r in rows) == tested  # per-photo results name the files
    best = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    assert torch.load(best, weights_only=False)["hyper_parameters"]["image_size"] == 64
    evaluated = run("eval.py", f"ckpt_path={best}", "trainer.accelerator=cpu", "trainer.precision=32-true",
                    f"hydra.run.dir={tmp_path / 'eval'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["confusion_matrix"] == report["confusion_matrix"]  # the shards' test split, again
    predicted = run("predict.py", f"ckpt_path={best}", f"inputs={shards}", "runtime=torch",
                    f"output={tmp_path / 'preds.csv'}", f"hydra.run.dir={tmp_path / 'predict'}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len((tmp_path / "preds.csv").read_text().splitlines()) - 1 == sum(report["split_sizes"].values())
    wrong = run("train.py", "data=streaming", f"data.input_dir={shards}", "data.image_size=32",
                f"hydra.run.dir={tmp_path / 'wrong'}")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: the shards in") and \
        "64x64 images, data.image_size=32" in wrong.stderr


@pytest.mark.slow  # keeps the default suite under 10 minutes
def test_presets_compose_with_streaming_and_unknown_options_are_refused(tmp_path, photos, caplog):
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    _prepare(_folder(photos, tmp_path / "cache"), str(tmp_path / "shards"), num_workers=1)
    overrides = ["experiment=finetune", "data=streaming", f"data.input_dir={tmp_path / 'shards'}"]
    cfg = compose_cfg("train", overrides, tmp_path / "run", tmp_path / "cache")
    with caplog.at_level("INFO"):
        dm = instantiate(cfg.data, _convert_="all")  # the preset's data.root and val_fraction
    assert isinstance(dm, StreamingDataModule) and dm.hparams.image_size == 224
    assert "data.root, data.val_fraction ignored" in caplog.text
    with pytest.raises(DataError, match=r"data=streaming has no option data\.valfraction"):
        StreamingDataModule(str(tmp_path / "shards"), valfraction=0.1)
    with pytest.raises(DataError, match=r"hold 32x32 images, data\.image_size=224"):
        dm.setup("fit")  # the preset's size is the user's: store=image shards of another are refused
