
import nibabel as nib
import numpy as np
import pytest


from agents.networks import UNet, save_unet
from rl4seg_env.data.nifti import export_to_nifti_folder, read_nifti_2d
from rl4seg_env.data.synthetic import SyntheticEcho


@pytest.fixture()
def actor(tmp_path):
    path = tmp_path / "actor.pt"
    save_unet(UNet(1, 3, (4, 8)).eval(), str(path), class_names=["background", "lv", "myo"])
    return path


def test_predict_folder_keeps_original_shape_and_spacing(tmp_path, actor):
    from pipeline.commands import predict

    export_to_nifti_folder({"test": SyntheticEcho("default_target", "test", n_images=2, image_size=(48, 80))},
                           tmp_path / "data", progress=False)
    images = tmp_path / "data" / "images"
    assert predict.main(["--actor", str(actor), "--input", str(images), "--out", str(tmp_path / "out"),
                         "--size", "32", "--no-png"]) == 0
    for src in sorted(images.glob("*.nii.gz")):
        original, spacing = read_nifti_2d(src)
        seg_path = tmp_path / "out" / src.name.replace(".nii.gz", "_seg.nii.gz")
        seg, seg_spacing = read_nifti_2d(seg_path)
        assert seg.shape == original.shape == (48, 80)
        assert seg_spacing == pytest.approx(spacing)
        assert set(np.unique(seg)) <= {0, 1, 2}
        assert np.asanyarray(nib.load(seg_path).dataobj).dtype == np.uint8


def test_predict_missing_input_is_a_clear_error(tmp_path, actor, capsys):
    from pipeline.commands import predict

    assert predict.main(["--actor", str(actor), "--input", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err
    assert predict.main(["--actor", str(tmp_path / "missing.pt"), "--synthetic", "source", "--out", str(tmp_path)]) == 2
    assert "actor checkpoint not found" in capsys.readouterr().err


def test_predict_with_test_time_optimisation(tmp_path, actor, capsys):
    from pipeline.commands import predict
    from reward.network import RewardNet, save_reward_net

    args = ["--actor", str(actor), "--synthetic", "default_target", "--n", "2", "--size", "32", "--no-png", "--tto",
            "--tto-steps", "1"]
    assert predict.main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "needs a reward network" in capsys.readouterr().err
    save_reward_net(RewardNet(3, channels=(4, 8)), tmp_path / "reward_net.pt")
    assert predict.main([*args, "--reward", str(tmp_path / "reward_net.pt"), "--out", str(tmp_path / "b")]) == 0
    segs = sorted((tmp_path / "b").glob("*_seg.nii.gz"))
    assert len(segs) == 2 and len(list((tmp_path / "b").glob("*_uncertainty.nii.gz"))) == 2
    assert all(set(np.unique(read_nifti_2d(p)[0])) <= {0, 1, 2} for p in segs)
    # test_time.fusion shape_ae: the optimisation's reward is fused with a run's shape auto-encoder
    from reward.correctors import ShapeAutoEncoder

    ShapeAutoEncoder(3).save(tmp_path / "shape_ae.pt")
    fused = [*args, "--reward", str(tmp_path / "reward_net.pt"), "--tto-shape-ae", str(tmp_path / "shape_ae.pt")]
    assert predict.main([*fused, "--out", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*_seg.nii.gz"))) == 2
    assert predict.main([a for a in fused if a != "--tto"] + ["--out", str(tmp_path / "d")]) == 2
    assert "pass test_time too" in capsys.readouterr().err
    assert predict.main([*fused[:-1], str(tmp_path / "missing.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_segmenter_optimises_the_fused_reward_and_reports_the_network_uncertainty(tmp_path, actor):
    from agents.test_time import TTOConfig
    from pipeline.inference import Segmenter
    from reward.correctors import ShapeAutoEncoder
    from reward.fusion import FusedReward
    from reward.network import LearnedReward, RewardNet, save_reward_net

    save_reward_net(RewardNet(3, channels=(4, 8)), tmp_path / "reward_net.pt")
    ShapeAutoEncoder(3).save(tmp_path / "shape_ae.pt")
    seg = Segmenter(actor, tmp_path / "reward_net.pt", test_time=TTOConfig(steps=1),
                    shape_ae_path=tmp_path / "shape_ae.pt")
    assert isinstance(seg.reward_model, LearnedReward) and isinstance(seg.tto_reward, FusedReward)
    images = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    preds, uncertainty = seg(images)
    assert np.allclose(uncertainty, 1.0 - seg.reward_model(images, preds))


def _disk_actor(path, size=32, steps=120):
    """A tiny U-Net trained for seconds to segment a bright disk (class 1) on a dark noisy background."""
    import torch
    import torch.nn.functional as F

    from agents.networks import UNet, save_unet

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    net = UNet(1, 3, (4, 8))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        centres = rng.uniform(6, size - 6, (8, 2))
        radii = rng.uniform(3, 6, 8)
        labels = np.stack([(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r ** 2 for c, r in zip(centres, radii)])
        images = 0.8 * labels + 0.1 * rng.random(labels.shape)
        logits = net(torch.as_tensor(images[:, None], dtype=torch.float32))
        loss = F.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_unet(net.eval(), str(path), class_names=["background", "lv", "myo"])
    return path


def test_predictions_keep_the_input_geometry_and_lie_over_its_voxels(tmp_path):
    """An LAS image with an origin offset and anisotropic pixels: the written label and uncertainty maps
    have the input's affine, shape and orientation, and the segmented disk is where the disk is."""
    from pipeline.commands import predict
    from reward.network import RewardNet, save_reward_net

    actor = _disk_actor(tmp_path / "actor.pt")
    save_reward_net(RewardNet(3, channels=(4, 8)), tmp_path / "reward_net.pt")
    nx, ny = 64, 48  # stored x-first
    xx, yy = np.mgrid[:nx, :ny]
    disk = (xx - 16) ** 2 + (yy - 30) ** 2 <= 7 ** 2  # off-centre: near the low-x end of the stored array
    rng = np.random.default_rng(1)
    data = (0.8 * disk + 0.1 * rng.random(disk.shape)).astype(np.float32)
    affine = np.array([[-0.3, 0, 0, 12.5], [0, 0.45, 0, -7.0], [0, 0, 1.0, 3.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code="scanner")
    (tmp_path / "in").mkdir()
    nib.save(img, tmp_path / "in" / "case.nii.gz")
    assert "".join(nib.aff2axcodes(affine)) == "LAS"
    assert predict.main(["--actor", str(actor), "--reward", str(tmp_path / "reward_net.pt"), "--input",
                         str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--size", "32", "--no-png"]) == 0
    for name in ("case_seg.nii.gz", "case_uncertainty.nii.gz"):
        out = nib.load(tmp_path / "out" / name)
        assert np.allclose(out.affine, affine), name
        assert out.shape == data.shape and nib.aff2axcodes(out.affine) == ("L", "A", "S")
        assert out.header.get_zooms()[:2] == pytest.approx((0.3, 0.45))
    seg = np.asarray(nib.load(tmp_path / "out" / "case_seg.nii.gz").dataobj)
    assert seg.dtype == np.uint8
    found = seg == 1
    dice = 2 * (found & disk).sum() / (found.sum() + disk.sum())
    mirrored = disk[::-1, :]  # where a prediction written without the input's orientation would land
    assert dice > 0.8, dice
    assert (found & mirrored).sum() < 0.1 * disk.sum()


def test_bad_inputs_are_one_line_errors_or_skipped_and_listed(tmp_path, actor, capsys):
    """A corrupt file, a 1 x 1 image, a missing accelerator: one line naming the problem and exit 2 (the
    traceback only with --debug); --on-error skip predicts the good files and lists the bad ones."""
    from pipeline.commands import predict
    from rl4seg_env.data.nifti import write_nifti_2d

    folder = tmp_path / "in"
    write_nifti_2d(folder / "good.nii.gz", np.random.default_rng(0).random((40, 48)).astype(np.float32), (0.3, 0.3))
    write_nifti_2d(folder / "dot.nii.gz", np.ones((1, 1), np.float32), (0.3, 0.3))
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not a nifti")
    args = ["--actor", str(actor), "--input", str(folder), "--size", "32", "--no-png"]
    assert predict.main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert any(line.startswith("error: ") and "broken.nii.gz" in line for line in err.splitlines())
    assert "Traceback" not in err
    assert predict.main([*args, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 bad input(s)" in captured.err and "too small to segment" in captured.err
    assert sorted(p.name for p in (tmp_path / "b").glob("*_seg.nii.gz")) == ["good_seg.nii.gz"]
    import torch

    if not torch.cuda.is_available():
        assert predict.main([*args, "--out", str(tmp_path / "c"), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(Exception):  # --debug: the exception itself
        predict.main([*args, "--out", str(tmp_path / "d"), "--debug"])
