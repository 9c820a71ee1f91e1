import pytest
import torch

from agents.networks import UNet, load_unet, reestimate_norm_statistics, save_unet


def test_reestimated_statistics_are_those_of_the_new_images():
    torch.manual_seed(0)
    net = UNet(1, 3, (4, 8)).eval()
    images = torch.rand(12, 1, 16, 16) * 0.3 + 0.6  # brighter than anything seen before
    n = reestimate_norm_statistics(net, images, batch_size=4)  # equal batches: average of batch means = mean
    assert n == sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    first_bn = net.encoders[0][1]
    with torch.no_grad():
        conv_out = net.encoders[0][0](images)
    assert torch.allclose(first_bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not net.training and first_bn.momentum == 0.1  # mode and momentum restored


def test_reestimation_leaves_weights_untouched():
    net = UNet(1, 3, (4, 8))
    before = {k: v.clone() for k, v in net.named_parameters()}
    reestimate_norm_statistics(net, torch.rand(4, 1, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters())


def test_checkpoint_round_trip_and_errors(tmp_path):
    net = UNet(1, 3, (4, 8), norm="group")
    save_unet(net, str(tmp_path / "a.pt"), class_names=["bg", "lv", "myo"])
    loaded, meta = load_unet(str(tmp_path / "a.pt"))
    assert meta["class_names"] == ["bg", "lv", "myo"]
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(net.eval()(x), loaded.eval()(x))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_unet(str(tmp_path / "missing.pt"))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_unet(str(tmp_path / "bad.pt"))


def test_size_errors_are_clear():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(1, 3, (4, 8, 16))(torch.rand(1, 1, 18, 18))
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        UNet(1, 3, (4, 8))(torch.rand(1, 2, 16, 16))
