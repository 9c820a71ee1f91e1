"""scripts/evaluate.py and the evaluation helpers it calls (prediction folders, summary files)."""
import csv
import json

import numpy as np
import pytest
import torch


from agents.networks import predict
from pipeline.evaluation import evaluate_predictions, load_prediction_folder
from agents.networks import UNet, save_unet
from reward.network import RewardNet, save_reward_net
from rl4seg_env.data.base import resize_label
from rl4seg_env.data.nifti import write_nifti_2d
from rl4seg_env.data.synthetic import SyntheticEcho

SIZE, N = 32, 3
DATA_ARGS = ["--dataset", "synthetic", "--preset", "default_target", "--split", "test", "--n", str(N),
             "--size", str(SIZE)]




@pytest.fixture()
def dataset():
    return SyntheticEcho("default_target", "test", n_images=N, image_size=SIZE)


def write_ground_truth_predictions(folder, dataset):
    """The ground-truth labels written as predictions: the first one at twice the size, the others as <id>.nii.gz."""
    folder.mkdir()
    for i in range(len(dataset)):
        s = dataset[i]
        if i == 0:
            write_nifti_2d(folder / f"{s.id}_seg.nii.gz", resize_label(s.label, (2 * SIZE, 2 * SIZE)), s.spacing)
        else:
            write_nifti_2d(folder / f"{s.id}.nii.gz", s.label, s.spacing)


def read_outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    return summary, rows


def test_perfect_prediction_folder_scores_dice_one_and_full_validity(tmp_path, dataset, capsys):
    from pipeline.commands import evaluate

    write_ground_truth_predictions(tmp_path / "preds", dataset)
    out = tmp_path / "eval"
    assert evaluate.main(["--predictions", str(tmp_path / "preds"), *DATA_ARGS, "--criteria", "generic",
                          "--out", str(out)]) == 0
    summary, rows = read_outputs(out)
    s = summary["summary"]
    for name in ("lv", "myo", "epi"):
        assert s[f"dice_{name}"] == pytest.approx(1.0)
        assert s[f"hd_{name}"] == pytest.approx(0.0)
    assert s["validity_pct"] == pytest.approx(100.0)
    assert not any(k.startswith("failed_") for k in s)
    assert [r["id"] for r in rows] == [dataset[i].id for i in range(N)]
    assert all(r["valid"] == "True" and r["failed"] == "" for r in rows)
    assert summary["metadata"]["n_images"] == N and summary["metadata"]["criteria"] == "generic"
    printed = capsys.readouterr().out
    assert "| LV | 1.000 | 0.00 |" in printed and "100.0 %" in printed
    assert (out / "summary.md").read_text().strip() in printed


def test_prediction_folder_is_resized_with_nearest_neighbour(tmp_path, dataset):
    write_ground_truth_predictions(tmp_path / "preds", dataset)
    preds = load_prediction_folder(tmp_path / "preds", dataset)
    assert preds.shape == (N, SIZE, SIZE) and preds.dtype == np.uint8
    np.testing.assert_array_equal(preds, np.stack([dataset[i].label for i in range(N)]))


def test_missing_prediction_ids_are_listed(tmp_path, dataset, capsys):
    from pipeline.commands import evaluate

    write_ground_truth_predictions(tmp_path / "preds", dataset)
    missing = dataset[1].id
    (tmp_path / "preds" / f"{missing}.nii.gz").unlink()
    assert evaluate.main(["--predictions", str(tmp_path / "preds"), *DATA_ARGS, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"no prediction for 1 of {N} dataset ids: {missing}" in err
    assert dataset[0].id not in err
    assert not (tmp_path / "e" / "summary.json").exists()


def test_prediction_with_unknown_labels_is_refused(tmp_path, dataset):
    write_ground_truth_predictions(tmp_path / "preds", dataset)
    bad = dataset[2]
    write_nifti_2d(tmp_path / "preds" / f"{bad.id}.nii.gz", np.full((SIZE, SIZE), 7, np.uint8), bad.spacing)
    with pytest.raises(ValueError, match=rf"{bad.id}\.nii\.gz: expected integer labels in 0\.\.2 \(background, lv, myo\), found values 7$"):
        load_prediction_folder(tmp_path / "preds", dataset)


@pytest.mark.filterwarnings("ignore:reward_dice_correlation")  # an untrained actor: every Dice is 0
def test_checkpoint_with_reward_network(tmp_path, dataset):
    from pipeline.commands import evaluate

    torch.manual_seed(0)
    actor = UNet(1, 3, (4, 8)).eval()
    save_unet(actor, str(tmp_path / "actor.pt"), image_size=[SIZE, SIZE])
    save_reward_net(RewardNet(3, channels=(4, 8)).eval(), tmp_path / "reward_net.pt")
    out = tmp_path / "eval"
    # no --size: taken from the checkpoint's metadata
    args = [a for a in DATA_ARGS if a not in ("--size", str(SIZE))]
    assert evaluate.main(["--actor", str(tmp_path / "actor.pt"), "--reward", str(tmp_path / "reward_net.pt"), *args,
                          "--out", str(out)]) == 0
    summary, rows = read_outputs(out)
    s = summary["summary"]
    # the script's numbers are the library's numbers on the same predictions
    images = np.stack([dataset[i].image for i in range(N)])
    expected = evaluate_predictions(predict(actor, images), dataset, images=images).summary
    for key in ("dice_lv", "dice_myo", "dice_epi", "validity_pct"):
        assert s[key] == pytest.approx(expected[key])
    assert summary["metadata"]["image_size"] == [SIZE, SIZE]
    for key in ("reward_ece", "reward_ace", "reward_mce", "reward_mi"):
        assert s[key] is not None and 0.0 <= s[key] <= 1.0
    assert all(0.0 <= float(r["mean_reward"]) <= 1.0 for r in rows)
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # test-time optimisation: only invalid predictions are optimised (a random actor's are all invalid)
    assert evaluate.main(["--actor", str(tmp_path / "actor.pt"), "--reward", str(tmp_path / "reward_net.pt"), *args,
                          "--tto", "--tto-steps", "1", "--out", str(tmp_path / "tto")]) == 0
    assert read_outputs(tmp_path / "tto")[0]["summary"]["validity_pct"] >= s["validity_pct"]
    with pytest.raises(SystemExit):  # --tto without a reward network: argparse error
        evaluate.main(["--actor", str(tmp_path / "actor.pt"), *args, "--tto", "--out", str(tmp_path / "x")])


def test_class_count_mismatch_is_a_clear_error(tmp_path, capsys):
    from pipeline.commands import evaluate

    save_unet(UNet(1, 4, (4, 8)).eval(), str(tmp_path / "actor.pt"))
    assert evaluate.main(["--actor", str(tmp_path / "actor.pt"), *DATA_ARGS, "--out", str(tmp_path / "e")]) == 2
    assert "predicts 4 classes but the dataset has 3" in capsys.readouterr().err


def test_nifti_dataset_needs_a_manifest(tmp_path, capsys):
    from pipeline.commands import evaluate

    assert evaluate.main(["--predictions", str(tmp_path), "--dataset", "nifti", "--out", str(tmp_path / "e")]) == 2
    assert "--dataset nifti needs --manifest" in capsys.readouterr().err


def test_on_error_skip_scores_the_good_files_and_lists_the_bad(tmp_path, dataset, capsys):
    from pipeline.commands import evaluate
    from rl4seg_env.data.nifti import export_to_nifti_folder

    manifest = export_to_nifti_folder({"test": dataset}, tmp_path / "data", progress=False)
    bad = sorted((tmp_path / "data" / "images").glob("*.nii.gz"))[0]
    bad.write_bytes(b"\x1f\x8b truncated")
    save_unet(UNet(1, 3, (4, 8)).eval(), str(tmp_path / "actor.pt"), image_size=[SIZE, SIZE])
    args = ["--actor", str(tmp_path / "actor.pt"), "--dataset", "nifti", "--manifest", str(manifest), "--split",
            "test", "--size", str(SIZE)]
    assert evaluate.main([*args, "--out", str(tmp_path / "a")]) == 2
    assert bad.name in capsys.readouterr().err
    assert evaluate.main([*args, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    summary, rows = read_outputs(tmp_path / "b")
    assert len(rows) == len(dataset) - 1 and "skipped 1 bad input(s)" in capsys.readouterr().err
    skipped = json.loads((tmp_path / "b" / "summary.json").read_text())["metadata"]["skipped"]
    assert len(skipped) == 1 and bad.name in skipped[0]
