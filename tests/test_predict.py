
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
