import numpy as np
import pytest
import torch
from torch import nn

from reward.builder import (SAMPLE_KINDS, BuildReport, PerturbationConfig, RewardDatasetBuilder, RewardSampleDataset,
                            RewardSampleStore, SourceSampleConfig, fourier_style)

H = W = 16


class _FixedActor(nn.Module):
    """Predicts a square of class 1 on images whose mean is high, background elsewhere."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b = x.shape[0]
        logits = torch.zeros(b, 3, H, W)
        square = torch.zeros(H, W, dtype=torch.bool)
        square[4:12, 4:12] = True
        logits[:, 0] = 5.0 + self.bias
        logits[:, 1] = torch.where(square, 10.0, 0.0) * (x.mean(dim=(1, 2, 3)) > 0.5).float()[:, None, None]
        return logits


class _Corrector:
    def correct(self, maps):
        return np.asarray(maps)

    def comparison_dice(self, preds, corrected):
        return np.ones(len(preds))


def _validity(maps):
    return np.asarray(maps).reshape(len(maps), -1).any(1)


def _builder(**kw):
    return RewardDatasetBuilder(_Corrector(), _validity, PerturbationConfig(**kw), batch_size=4, seed=0)


def test_sample_types_and_pseudo_labels(tmp_path):
    images = np.concatenate([np.full((3, H, W), 0.9, np.float32), np.full((2, H, W), 0.1, np.float32)])
    ids = [f"im{i}" for i in range(5)]
    store = RewardSampleStore(tmp_path / "rs")
    report, pseudo = _builder().build(_FixedActor(), images, ids, store, iteration=1)
    # bright images give a valid square -> pseudo-labels; dark ones predict nothing -> no sample
    assert sorted(pseudo) == ["im0", "im1", "im2"]
    assert report.images_seen == 5 and report.accepted == 3
    assert report.samples_by_kind["pseudo_label"] == 3
    assert report.samples_by_kind["weight_noise"] == 3 * 4
    assert report.samples_by_kind["contrast"] == 3 * 2 and report.samples_by_kind["image_noise"] == 3 * 2
    assert set(report.samples_by_kind) == set(SAMPLE_KINDS)
    ds = RewardSampleDataset(store)
    assert len(ds) == report.n_samples == len(store)
    img, pred, target = ds[0]
    assert img.shape == (1, H, W) and pred.shape == (H, W) and target.shape == (H, W)
    # a pseudo-label sample is correct everywhere
    first_pl = int(np.flatnonzero(ds.kinds == "pseudo_label")[0])
    assert torch.all(ds[first_pl][2] == 1)


def test_actor_weights_untouched(tmp_path):
    actor = _FixedActor()
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    _builder().build(actor, np.full((2, H, W), 0.9, np.float32), ["a", "b"], RewardSampleStore(tmp_path), 1)
    assert all(torch.equal(before[k], v) for k, v in actor.state_dict().items())


def test_rerun_of_interrupted_iteration_does_not_duplicate(tmp_path):
    store = RewardSampleStore(tmp_path)
    images, ids = np.full((4, H, W), 0.9, np.float32), list("abcd")
    # an interrupted iteration leaves shards but no done marker: invisible, then replaced
    w = store.begin(1)
    w.add(images[0], np.zeros((H, W)), np.zeros((H, W)), "pseudo_label", "a")
    w._flush()
    assert store.completed_iterations() == []
    report, _ = _builder().build(_FixedActor(), images, ids, store, iteration=1)
    assert len(store) == report.n_samples
    with pytest.raises(FileExistsError, match="already complete"):
        _builder().build(_FixedActor(), images, ids, store, iteration=1)
    report2, _ = _builder().build(_FixedActor(), images, ids, store, iteration=2)
    assert len(store) == report.n_samples + report2.n_samples  # accumulates across iterations


def test_bad_input_refused(tmp_path):
    bad = np.full((2, H, W), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        _builder().build(_FixedActor(), bad, ["a", "b"], RewardSampleStore(tmp_path), 1)
    with pytest.raises(ValueError, match="one id each"):
        _builder().build(_FixedActor(), np.zeros((2, H, W), np.float32), ["a"], RewardSampleStore(tmp_path), 1)


class _MarkingCorrector(_Corrector):
    def correct(self, maps):
        out = np.array(maps, copy=True)
        out[:, 0:2, 0:2] = 1
        return out


def test_invalid_but_correctable_gives_corrected_sample(tmp_path):
    builder = RewardDatasetBuilder(_MarkingCorrector(), lambda m: np.asarray(m)[:, 0, 0] == 1, batch_size=4)
    store = RewardSampleStore(tmp_path)
    report, pseudo = builder.build(_FixedActor(), np.full((2, H, W), 0.9, np.float32), ["a", "b"], store, 1)
    assert pseudo == {} and report.samples_by_kind["corrected"] == 2 and report.n_samples == 2
    data = store.load()
    assert np.all(data["references"][:, 0:2, 0:2] == 1)  # reference = corrected map
    assert set(data["kinds"]) == {"corrected"}


def _filled_store(root, n_iterations=3, per_iteration=10, shard_size=4):
    """A store of random samples: 3 iterations x 10 samples in shards of 4 (3 shards per iteration)."""
    from reward.builder import BuildReport

    store = RewardSampleStore(root, shard_size=shard_size)
    rng = np.random.default_rng(0)
    for it in range(1, n_iterations + 1):
        writer = store.begin(it)
        for k in range(per_iteration):
            writer.add(rng.random((H, W)).astype(np.float32), rng.integers(0, 3, (H, W)), rng.integers(0, 3, (H, W)),
                       "pseudo_label", f"im{it}_{k // 2}")
        writer.commit(BuildReport(it, images_seen=per_iteration, samples_by_kind={"pseudo_label": per_iteration}))
    return store


def test_reward_samples_are_read_lazily_through_a_bounded_cache(tmp_path):
    store = _filled_store(tmp_path)
    everything = store.load()
    ds = RewardSampleDataset(store, cache_mb=2 * 4 * H * W * 4 / 2**20)  # room for two shards of 4
    assert len(ds) == 30 and ds.block_shards == 2 and len(ds.files) == 9
    assert ds.ids.tolist() == everything["ids"].tolist()
    for i in [0, 29, 5, 17, 3, 22, 11]:
        image, pred, target = ds[i]
        assert len(ds._cache) <= 2
        assert np.array_equal(image[0].numpy(), everything["images"][i])
        assert np.array_equal(pred.numpy(), everything["preds"][i])
        assert np.array_equal(target.numpy(), everything["preds"][i] == everything["references"][i])
    shard = ds.files[4]
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ValueError, match=f"{shard}: unreadable reward-sample shard"):
        RewardSampleDataset(store)


def test_shard_block_sampler_shuffles_within_blocks_of_shards():
    from reward.training import ShardBlockSampler

    shard_of = np.repeat(np.arange(7), 5)
    gen = torch.Generator().manual_seed(0)
    sampler = ShardBlockSampler(shard_of, block_shards=3, generator=gen)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(35)) and first != second
    for order in (first, second):  # blocks of 3, 3, 1 shards, in that order, each block contiguous
        shards = shard_of[order]
        assert [len(set(shards[a:b])) for a, b in ((0, 15), (15, 30), (30, 35))] == [3, 3, 1]
    # every shard in one block: a plain shuffle of all positions
    assert sorted(ShardBlockSampler(shard_of, block_shards=7, generator=gen)) == list(range(35))


def _heart(size: int = 64) -> np.ndarray:
    """A left ventricle (1) inside a horseshoe myocardium (2) open at the bottom, as in an apical view."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot((yy - size * 0.45) / 1.6, xx - size / 2)
    label = np.zeros((size, size), np.uint8)
    label[r < size * 0.22] = 2
    label[r < size * 0.15] = 1
    label[yy > size * 0.62] = 0
    return label


@pytest.mark.parametrize("damage", ["break", "thin", "thicken", "lv_grow", "lv_shrink"])
def test_anatomical_negatives_damage_the_wall_where_they_say(damage):
    from scipy import ndimage

    from reward.builder import anatomical_negative

    label = _heart()
    out = anatomical_negative(label, damage, torch.Generator().manual_seed(3))
    changed = out != label
    assert changed.any() and changed.sum() < 0.05 * label.size  # one patch, not the whole map
    rows, cols = np.nonzero(changed)
    assert np.hypot(rows - rows.mean(), cols - cols.mean()).max() <= 2 * 64 / 10  # within one disk
    moved = {"break": (2, 0), "thin": (2, 0), "thicken": (0, 2), "lv_grow": (2, 1), "lv_shrink": (1, 2)}[damage]
    assert np.all(label[changed] == moved[0]) and np.all(out[changed] == moved[1])
    if damage == "break":  # the wall is cut in two unless the patch only trims one end of the horseshoe
        pieces = [ndimage.label(anatomical_negative(label, damage, torch.Generator().manual_seed(s)) == 2)[1]
                  for s in range(20)]
        assert min(pieces) >= 1 and sum(p >= 2 for p in pieces) >= 10
    if damage == "thin":  # only the outer side of the wall goes: the LV keeps its whole border
        assert np.array_equal(out == 1, label == 1)
        assert not ndimage.binary_dilation(label == 1)[changed].any()
    assert np.array_equal(anatomical_negative(np.zeros((8, 8), np.uint8), damage, torch.Generator()),
                          np.zeros((8, 8)))  # nothing to damage
    with pytest.raises(ValueError, match="unknown damage"):
        anatomical_negative(label, "twist", torch.Generator())


def test_anatomical_negatives_are_added_around_pseudo_labels_only(tmp_path):
    images = np.concatenate([np.full((3, H, W), 0.9, np.float32), np.full((2, H, W), 0.1, np.float32)])
    store = RewardSampleStore(tmp_path / "rs")

    class _HeartActor(_FixedActor):  # the square of class 1 inside a ring of class 2
        def forward(self, x):
            logits = super().forward(x)
            ring = torch.zeros(H, W, dtype=torch.bool)
            ring[2:14, 2:14] = True
            ring[4:12, 4:12] = False
            logits[:, 2] = torch.where(ring, 10.0, 0.0) * (x.mean(dim=(1, 2, 3)) > 0.5).float()[:, None, None]
            return logits

    report, _ = _builder(anatomical=2).build(_HeartActor(), images, list("abcde"), store, iteration=1)
    assert report.accepted == 3 and report.samples_by_kind["anatomical"] == 3 * 2
    ds = RewardSampleDataset(store)
    for i in np.flatnonzero(ds.kinds == "anatomical"):
        target = ds[int(i)][2]
        assert 0 < (target == 0).sum() < H * W  # wrong in the damaged patch only
    report, _ = _builder().build(_HeartActor(), images, list("abcde"), RewardSampleStore(tmp_path / "b"), 1)
    assert report.samples_by_kind["anatomical"] == 0  # off by default (the paper's negatives)
    with pytest.raises(ValueError, match="anatomical"):
        PerturbationConfig(anatomical=-1)


def test_random_artefacts_stay_in_range_differ_per_image_and_are_reproducible():
    from reward.builder import random_artefact

    images = torch.full((40, 1, 32, 32), 0.5)
    out = random_artefact(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    changed = (out - images).abs().flatten(1).amax(1)
    assert bool((changed > 0.05).all())  # every image is corrupted somewhere
    assert bool(((out < 0.45).flatten(1).any(1)).any()) and bool(((out > 0.55).flatten(1).any(1)).any())
    assert torch.equal(out, random_artefact(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, random_artefact(images, torch.Generator().manual_seed(1)))
    assert torch.equal(images, torch.full((40, 1, 32, 32), 0.5))  # the input is left as it was


def test_artifact_negatives_keep_the_corrupted_image_the_actor_saw(tmp_path):
    class _ThresholdActor(nn.Module):  # class 1 wherever the pixel is brighter than 0.5
        def forward(self, x):
            return torch.cat([torch.zeros_like(x), 20 * (x - 0.5), torch.full_like(x, -10.0)], 1)

    images = np.full((3, H, W), 0.2, np.float32)
    images[:, 4:12, 4:12] = 0.8
    store = RewardSampleStore(tmp_path / "rs")
    report, pseudo = _builder(artifact=3).build(_ThresholdActor(), images, list("abc"), store, iteration=1)
    assert report.accepted == 3 and 0 < report.samples_by_kind["artifact"] <= 3 * 3
    data = store.load()
    square = (images[0] > 0.5).astype(np.uint8)
    rows = np.flatnonzero(data["kinds"] == "artifact")
    assert len(rows) == report.samples_by_kind["artifact"]
    for i in rows:
        assert not np.array_equal(data["images"][i], images[0])  # the corrupted image is stored ...
        assert np.array_equal(data["preds"][i], (data["images"][i] > 0.5).astype(np.uint8))  # ... with its prediction
        assert np.array_equal(data["references"][i], square)  # and the clean pseudo-label as reference
    assert any((data["preds"][i] != square).any() for i in rows)  # some artefact changed the prediction
    report, _ = _builder().build(_ThresholdActor(), images, list("abc"), RewardSampleStore(tmp_path / "b"), 1)
    assert report.samples_by_kind["artifact"] == 0  # off by default (the paper's negatives)
    with pytest.raises(ValueError, match="artifact"):
        PerturbationConfig(artifact=-1)


def test_true_references_replace_every_target_reference_and_leave_the_pseudo_labels(tmp_path):
    images = np.concatenate([np.full((3, H, W), 0.9, np.float32), np.full((2, H, W), 0.1, np.float32)])
    ids = [f"im{i}" for i in range(5)]
    truth = {sid: np.full((H, W), i % 3, np.uint8) for i, sid in enumerate(ids)}
    builder = RewardDatasetBuilder(_Corrector(), _validity, PerturbationConfig(), batch_size=4, seed=0,
                                   true_references=truth.__getitem__)
    store = RewardSampleStore(tmp_path / "rs")
    report, pseudo = builder.build(_FixedActor(), images, ids, store, iteration=1)
    plain, plain_pseudo = _builder().build(_FixedActor(), images, ids, RewardSampleStore(tmp_path / "b"), 1)
    assert report.samples_by_kind == plain.samples_by_kind  # the same samples are made ...
    data = store.load()
    assert len(data["ids"]) == report.n_samples > 0
    for sid, reference in zip(data["ids"], data["references"]):
        assert np.array_equal(reference, truth[str(sid)])  # ... with the true labels as references
    assert sorted(pseudo) == sorted(plain_pseudo)  # PPO's anchors are still the actor's predictions
    assert all(np.array_equal(pseudo[k], plain_pseudo[k]) for k in pseudo)


class _LabelledSource:
    """A labelled source set: bright images whose true label is a 6x6 square of class 2 (not the actor's)."""

    with_labels = True

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from types import SimpleNamespace

        label = np.zeros((H, W), np.uint8)
        label[5:11, 5:11] = 2
        return SimpleNamespace(image=np.full((H, W), 0.9, np.float32), label=label, id=f"s{i}")


def test_source_samples_carry_true_labels_and_augmented_images(tmp_path):
    images = np.full((3, H, W), 0.9, np.float32)
    source = SourceSampleConfig(images=5)
    builder = RewardDatasetBuilder(_Corrector(), _validity, PerturbationConfig(), batch_size=4, seed=0,
                                   source_dataset=_LabelledSource(8), source=source)
    store = RewardSampleStore(tmp_path / "rs")
    report, pseudo = builder.build(_FixedActor(), images, list("abc"), store, iteration=1)
    assert report.samples_by_kind["source"] == 2 * 5  # the argmax and one sampled prediction per source image
    assert len(pseudo) == 3  # source samples are never pseudo-labels
    ds = RewardSampleDataset(store)
    rows = np.flatnonzero(ds.kinds == "source")
    assert sorted(set(ds.ids[rows])) == [f"source:s{i}" for i in range(5)]
    data = store.load()
    for i in rows:
        assert np.array_equal(data["references"][i][5:11, 5:11], np.full((6, 6), 2))  # the true label
        assert not np.allclose(data["images"][i], 0.9, atol=1e-2)  # intensity-augmented copy
        assert 0 <= data["images"][i].min() and data["images"][i].max() <= 1
    # the actor predicts class 1 where the label says 2: those are errors in the targets the network learns
    assert (ds[int(rows[0])][2] == 0).sum() > 0
    # iterations take consecutive windows of the source set, wrapping around
    assert builder.source_indices(1) == [0, 1, 2, 3, 4] and builder.source_indices(2) == [5, 6, 7, 0, 1]


def test_boundary_source_samples_move_one_boundary_of_the_true_label(tmp_path):
    """source kinds [boundaries]: two copies of the true label per image, each with one boundary moved in or out
    (no prediction of the actor), the true label as reference."""
    class _HeartSource(_LabelledSource):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            sample.label = _heart(H)
            return sample

    builder = RewardDatasetBuilder(_Corrector(), _validity, batch_size=4, seed=0, source_dataset=_HeartSource(6),
                                   source=SourceSampleConfig(images=6, kinds=("boundaries",)))
    store = RewardSampleStore(tmp_path / "rs")
    report, _ = builder.build(_FixedActor(), np.full((2, H, W), 0.1, np.float32), ["a", "b"], store, iteration=1)
    assert report.samples_by_kind["source"] == 2 * 6
    data = store.load()
    heart = _heart(H)
    assert all(np.array_equal(ref, heart) for ref in data["references"])
    changed = [(pred != heart) for pred in data["preds"]]
    assert sum(c.any() for c in changed) >= 10 and all(c.sum() < 0.2 * H * W for c in changed)
    with pytest.raises(ValueError, match="kinds"):
        SourceSampleConfig(images=2, kinds=("banana",))


def _edges(image):
    return np.abs(np.diff(image, axis=0))[:, :-1] + np.abs(np.diff(image, axis=1))[:-1]


def test_fourier_style_takes_the_styles_acquisition_and_keeps_the_anatomy():
    """FDA: a bright source image with a dark style image comes out with the style's mean intensity and the
    source's edges; with itself as style an image is unchanged."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    disc = ((yy - 16) ** 2 + (xx - 14) ** 2 < 64).astype(np.float32)
    source = torch.from_numpy(0.5 + 0.3 * disc + 0.02 * rng.standard_normal((32, 32), dtype=np.float32))[None, None]
    dark = torch.from_numpy(0.15 + 0.05 * rng.random((3, 32, 32), dtype=np.float32))[:, None]
    gen = torch.Generator().manual_seed(0)
    out = fourier_style(source, dark, 0.05, gen)
    assert out.shape == source.shape and out.dtype == source.dtype and 0 <= out.min() and out.max() <= 1
    assert abs(out.mean().item() - dark.mean().item()) < 0.05 < abs(source.mean().item() - dark.mean().item())
    corr = np.corrcoef(_edges(out[0, 0].numpy()).ravel(), _edges(source[0, 0].numpy()).ravel())[0, 1]
    assert corr > 0.9  # the disc's boundary is where it was
    assert torch.allclose(fourier_style(source, source, 0.2, gen), source.clamp(0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="one size"):
        fourier_style(source, dark[:, :, :16], 0.05, gen)


def test_fourier_source_samples_look_like_the_target_images(tmp_path):
    """source style 'fourier': the source images of the reward set take the iteration's target images'
    brightness (bright source images, dark targets), keep their true labels, and need the target images."""
    targets = np.full((3, H, W), 0.1, np.float32)
    source = SourceSampleConfig(images=4, style="fourier", noise=(0.0, 0.0))
    builder = RewardDatasetBuilder(_Corrector(), _validity, PerturbationConfig(), batch_size=4, seed=0,
                                   source_dataset=_LabelledSource(4), source=source)
    store = RewardSampleStore(tmp_path / "rs")
    report, _ = builder.build(_FixedActor(), targets, list("abc"), store, iteration=1)
    assert report.samples_by_kind["source"] == 2 * 4
    data = store.load()
    rows = np.flatnonzero(data["kinds"] == "source")
    assert np.allclose(data["images"][rows].astype(np.float32), 0.1, atol=1e-2)  # 0.9 before
    assert all(np.array_equal(data["references"][i][5:11, 5:11], np.full((6, 6), 2)) for i in rows)
    with pytest.raises(ValueError, match="target images"):
        builder.source_samples(_FixedActor(), 1)
    with pytest.raises(ValueError, match="style"):
        SourceSampleConfig(images=2, style="cyclegan")
    with pytest.raises(ValueError, match="fourier_band"):
        SourceSampleConfig(images=2, style="fourier", fourier_band=0.0)


def test_source_samples_need_a_labelled_source(tmp_path):
    with pytest.raises(ValueError, match="labelled source dataset"):
        RewardDatasetBuilder(_Corrector(), _validity, source=SourceSampleConfig(images=4))
    with pytest.raises(ValueError, match="noise"):
        SourceSampleConfig(images=4, noise=(0.2, 0.1))
    # off by default: the paper's target-only reward set
    report, _ = _builder().build(_FixedActor(), np.full((2, H, W), 0.9, np.float32), ["a", "b"],
                                 RewardSampleStore(tmp_path), 1)
    assert report.samples_by_kind["source"] == 0


def test_the_dataset_reads_only_the_iterations_asked_for(tmp_path):
    store = RewardSampleStore(tmp_path / "store", shard_size=4)
    for iteration, n in ((1, 3), (2, 5), (3, 2)):
        writer = store.begin(iteration)
        for k in range(n):
            label = np.full((8, 8), iteration % 3, np.uint8)
            writer.add(np.zeros((8, 8), np.float32), label, label, "pseudo_label", f"{iteration}:{k}")
        writer.commit(BuildReport(iteration=iteration, samples_by_kind={"pseudo_label": n}))
    assert len(RewardSampleDataset(store)) == 10
    last = RewardSampleDataset(store, iterations=range(3, 4))
    assert len(last) == 2 and set(last.ids) == {"3:0", "3:1"}
    assert len(RewardSampleDataset(store, iterations=[2, 3])) == 7
    with pytest.raises(ValueError, match=r"empty .*iterations \[4\]"):
        RewardSampleDataset(store, iterations=[4])


def test_without_target_samples_the_reward_set_holds_source_samples_only(tmp_path):
    """target_samples=False: no pseudo-label, negative or corrected sample of the target is written, the source
    samples still are, and the accepted predictions still come back as pseudo-labels (PPO's anchors)."""
    images = np.full((3, H, W), 0.9, np.float32)
    source = SourceSampleConfig(images=4)
    builder = RewardDatasetBuilder(_Corrector(), _validity, PerturbationConfig(), batch_size=4, seed=0,
                                   source_dataset=_LabelledSource(4), source=source, target_samples=False)
    store = RewardSampleStore(tmp_path / "rs")
    report, pseudo = builder.build(_FixedActor(), images, list("abc"), store, iteration=1)
    assert report.samples_by_kind["source"] == 2 * 4
    assert sum(report.samples_by_kind.values()) == 2 * 4
    assert len(pseudo) == 3 and report.accepted == 3
    assert set(store.load()["kinds"]) == {"source"}
    with pytest.raises(ValueError, match="source samples"):
        RewardDatasetBuilder(_Corrector(), _validity, target_samples=False)
