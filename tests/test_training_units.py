"""Fast unit tests of the training pipeline's rules: splits, labels, metrics, thresholds, int8."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from training import dataset
from training._common import TrainingError
from training._metrics import (
    at_threshold,
    best_within,
    choose_threshold,
    int8_refusal,
    parity,
    partial_roc_area,
    per_class,
    pr_curve,
    recall_by_bins,
    roc_curve,
)

# ---------------------------------------------------------------- splits


def test_split_is_by_night_seeded_and_leaves_training_nights():
    nights = [f"202611{d:02d}" for d in range(1, 21)]
    a = dataset.split_nights(nights, 0.2, 0.2, seed=4)
    b = dataset.split_nights(reversed(nights), 0.2, 0.2, seed=4)
    assert a == b  # order of input does not matter, the seed does
    assert set(a) == set(nights)
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("train", "valid", "test")}
    assert counts == {"train": 12, "valid": 4, "test": 4}
    assert dataset.split_nights(nights, 0.2, 0.2, seed=5) != a


def test_split_honours_explicit_nights_and_refuses_overlap():
    nights = ["20261101", "20261102", "20261103", "20261104"]
    split = dataset.split_nights(nights, 0.0, 0.0, valid_nights=["20261102"],
                                 test_nights=["20261104"])
    assert split == {"20261101": "train", "20261102": "valid", "20261103": "train",
                     "20261104": "test"}
    with pytest.raises(TrainingError, match="both"):
        dataset.split_nights(nights, valid_nights=["20261102"], test_nights=["20261102"])
    with pytest.raises(TrainingError, match="not in the data"):
        dataset.split_nights(nights, test_nights=["20250101"])


def test_split_with_few_nights_still_trains():
    assert dataset.split_nights(["20261101"], 0.3, 0.3) == {"20261101": "train"}
    two = dataset.split_nights(["20261101", "20261102"], 0.3, 0.3)
    assert sorted(two.values()) == ["test", "train"]


def test_2021_csv_test_set_is_kept_whole():
    nights = ["20210401", "20210402", "20210403", "20210404", "20210405"]
    split = dataset.split_nights(nights, 0.2, 0.5, seed=0, hints={"20210405": "test"})
    assert [n for n, s in split.items() if s == "test"] == ["20210405"]
    assert sum(1 for s in split.values() if s == "valid") == 1


def _skewed_profiles() -> dict[str, Counter]:
    """40 nights from two cameras (a, b: 20 each): 10 moonlit ones (5 a camera) holding most of
    the meteors, 30 clear ones."""
    profiles = {}
    for d in range(40):
        night = f"2026{11 + d // 30:02d}{d % 30 + 1:02d}"
        sky, camera = ("moon" if d % 4 == 0 else "clear"), ("a" if d < 20 else "b")
        meteors = 12 if sky == "moon" else 2
        profiles[night] = Counter({("condition", sky, True): meteors,
                                   ("condition", sky, False): 200,
                                   ("camera", camera, True): meteors,
                                   ("camera", camera, False): 200})
    return profiles


def test_balanced_split_holds_out_the_same_mix_of_skies_and_cameras_as_the_whole_data():
    profiles = _skewed_profiles()
    nights = sorted(profiles)

    def held(split: dict[str, str], name: str, column: str, value: str) -> int:
        """How many of the split's nights have that value."""
        return sum(1 for n, s in split.items()
                   if s == name and profiles[n][(column, value, False)] > 0)

    plain_off, balanced_off = 0, 0
    for seed in range(8):
        plain = dataset.split_nights(nights, 0.2, 0.2, seed=seed)
        balanced = dataset.split_nights(nights, 0.2, 0.2, seed=seed, profiles=profiles)
        # The same night counts, and never a night in two splits.
        assert sorted(plain.values()) == sorted(balanced.values()) and set(balanced) == set(nights)
        assert (dataset.profile_distance(balanced, profiles)
                <= dataset.profile_distance(plain, profiles))
        assert balanced == dataset.split_nights(nights, 0.2, 0.2, seed=seed, profiles=profiles)
        for name in ("valid", "test"):  # 8 nights each: 2 moonlit and 4 of camera a is the mix
            plain_off += (held(plain, name, "condition", "moon") != 2
                          or held(plain, name, "camera", "a") != 4)
            balanced_off += abs(held(balanced, name, "condition", "moon") - 2)
            balanced_off += abs(held(balanced, name, "camera", "a") - 4)
    assert plain_off >= 8  # a plain draw of 8 nights is often off the mix...
    assert balanced_off <= 2  # ...the balanced one (almost) never
    # Named nights stay where they were put.
    pinned = dataset.split_nights(nights, 0.2, 0.2, valid_nights=[nights[1]], profiles=profiles)
    assert pinned[nights[1]] == "valid"


def test_balance_needs_the_column_in_the_labels(tmp_path: Path):
    frames = _night(tmp_path / "images", "20261101", 3)
    labelled = [dataset.Labelled(dataset.parse_frame(f), i == 1, {"condition": "moon"})
                for i, f in enumerate(frames)]
    profiles = dataset.night_profiles(labelled, ["condition"])
    assert profiles == {"20261101": {("condition", "moon", True): 1,
                                     ("condition", "moon", False): 2}}
    with pytest.raises(TrainingError, match="no 'cloud' column"):
        dataset.night_profiles(labelled, ["condition", "cloud"])
    # The derived column "snr": each meteor's signal-to-noise bin, read from its frame pair.
    pairs, _ = dataset.pair_with_previous(labelled, max_gap_s=180)
    with pytest.raises(TrainingError, match="no meteor segment"):
        dataset.measure_snr_bins(pairs)
    # _night's frames: noise σ 3, so about 4.2 in a difference; a 40-level meteor is SNR ~9.5.
    labelled[1].extra.update(meteor_x1="5", meteor_y1="10", meteor_x2="50", meteor_y2="30",
                             meteor_peak="40")
    dataset.measure_snr_bins(pairs)
    assert [lab.extra["snr"] for lab, _ in pairs] == ["8–15", "none"]


# ---------------------------------------------------------------- label sources


def _night(images: Path, night: str, n: int, seed: int = 0) -> list[Path]:
    """n real JPEG frames 30 s apart in images/<night>/."""
    rng = np.random.default_rng(seed)
    folder = images / night
    folder.mkdir(parents=True)
    t = datetime.strptime(night, "%Y%m%d").replace(hour=21)
    paths = []
    for _ in range(n):
        path = folder / f"image-{t:%Y%m%d%H%M%S}.jpg"
        cv2.imwrite(str(path), rng.normal(30, 3, (48, 64)).clip(0, 255).astype(np.uint8))
        paths.append(path)
        t += timedelta(seconds=30)
    return paths


def test_label_folders_pair_with_the_previous_frame_in_the_tree(tmp_path: Path):
    images = tmp_path / "images"
    frames = _night(images, "20261101", 5)
    labels = tmp_path / "labels"
    (labels / "meteor").mkdir(parents=True)
    (labels / "no-meteor").mkdir()
    for src, sub in ((frames[2], "meteor"), (frames[0], "no-meteor"), (frames[3], "no-meteor")):
        (labels / sub / src.name).write_bytes(src.read_bytes())
    labelled = dataset.labels_from_folders(labels, images)
    assert {(lab.frame.path, lab.meteor) for lab in labelled} == {
        (frames[2], True), (frames[0], False), (frames[3], False)}
    pairs, skipped = dataset.pair_with_previous(labelled, max_gap_s=180)
    assert {(lab.frame.path, prev.path) for lab, prev in pairs} == {
        (frames[2], frames[1]), (frames[3], frames[2])}
    assert skipped["first_of_night"] == 1  # frames[0] has nothing to subtract


def test_rest_negative_labels_the_unreviewed_frames_of_a_night(tmp_path: Path):
    images = tmp_path / "images"
    frames = _night(images, "20261101", 4)
    _night(images, "20261102", 3, seed=1)  # not labelled at all: stays out
    labelled = dataset.add_rest_negative([dataset.Labelled(dataset.parse_frame(frames[2]),
                                                           True)])
    got = {(lab.frame.path, lab.meteor) for lab in labelled}
    assert got == {(frames[2], True), (frames[0], False), (frames[1], False), (frames[3], False)}


def test_gap_too_long_is_not_a_pair(tmp_path: Path):
    images = tmp_path / "images"
    frames = _night(images, "20261101", 2)
    late = frames[1].with_name("image-20261101230000.jpg")
    frames[1].rename(late)
    labelled = [dataset.Labelled(dataset.parse_frame(late), False)]
    pairs, skipped = dataset.pair_with_previous(labelled, max_gap_s=180)
    assert not pairs and skipped["gap_too_long"] == 1
    pairs, _ = dataset.pair_with_previous(labelled, max_gap_s=None)
    assert len(pairs) == 1


def test_csv_2021_reads_windows_paths_and_word_labels(tmp_path: Path):
    images = tmp_path / "images"
    frames = _night(images, "20210419", 3)
    index = tmp_path / "index.csv"
    with open(index, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fn", "dataset", "meteor"])
        writer.writerow([rf"\test_set\meteor\{frames[1].name}", "test_set", "meteor"])
        writer.writerow([rf"\training_set\no-meteor\{frames[2].name}", "training_set",
                         "no-meteor"])
        writer.writerow([r"\test_set\meteor\image-20210419235959.jpg", "test_set", "meteor"])
    labelled = dataset.labels_from_csv2021(index, images)
    assert [(lab.frame.path, lab.meteor, lab.split_hint) for lab in labelled] == [
        (frames[1], True, "test"), (frames[2], False, "train")]


def test_bad_label_word_is_an_error():
    with pytest.raises(TrainingError, match="maybe"):
        dataset.parse_bool("maybe", "x.csv:3")


def test_index_writes_pngs_and_refuses_empty_input(tmp_path: Path):
    from edge.preprocess import PreprocessSpec

    images = tmp_path / "images"
    frames = _night(images, "20261101", 4)
    labelled = [dataset.Labelled(dataset.parse_frame(f), i == 2) for i, f in enumerate(frames)]
    out = tmp_path / "data"
    dataset.build_index(labelled, out, PreprocessSpec(id="v4", size=32), valid_frac=0,
                        test_frac=0, progress=False)
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["no-meteor", "meteor", "no-meteor"]
    from training._common import load_input

    assert load_input(out / rows[0]["path"], 1).shape == (32, 32, 1)
    with pytest.raises(TrainingError):
        dataset.build_index([], out, PreprocessSpec(), progress=False)
    # --all-in test: a labelled set kept whole for evaluating a model
    dataset.build_index(labelled, out, PreprocessSpec(id="v4", size=32), all_in="test",
                        progress=False)
    with open(out / "index.csv", newline="") as fh:
        assert {r["split"] for r in csv.DictReader(fh)} == {"test"}
    # --balance-by: the column must be in the labels, and dataset.json says it was used.
    with pytest.raises(TrainingError, match="no 'condition' column"):
        dataset.build_index(labelled, out, PreprocessSpec(id="v4", size=32),
                            balance_by="condition", progress=False)
    for lab in labelled:
        lab.extra["condition"] = "clear"
    dataset.build_index(labelled, out, PreprocessSpec(id="v4", size=32), balance_by="condition",
                        progress=False)
    import json

    assert json.loads((out / "dataset.json").read_text())["split_balanced_by"] == "condition"


# ---------------------------------------------------------------- metrics


Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
P = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.0])


def test_counts_and_rates_at_a_threshold():
    m = at_threshold(Y, P, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 5)
    assert m["recall"] == 0.75 and m["precision"] == 0.75
    assert m["fp_per_1000"] == 100.0 and m["fpr"] == pytest.approx(1 / 6)
    pc = per_class(Y, P, 0.5)
    assert pc["no-meteor"]["recall"] == pytest.approx(5 / 6)
    assert pc["meteor"]["support"] == 4 and pc["no-meteor"]["support"] == 6


def test_roc_and_pr_on_known_cases():
    _, _, auc = roc_curve(Y, P)
    # of 4×6 pairs the positive outranks the negative in 21 (0.6 < 0.7; 0.2 < 0.7, 0.3)
    assert auc == pytest.approx(21 / 24)
    assert roc_curve(Y, Y.astype(float))[2] == 1.0
    _, _, ap = pr_curve(Y, Y.astype(float))
    assert ap == 1.0


def test_threshold_rules_choose_on_the_given_frames():
    t, why = choose_threshold(Y, P, "recall:0.75")
    assert t == 0.6 and "recall" in why  # highest keeping 3 of 4
    t, _ = choose_threshold(Y, P, "recall:1.0")
    assert t == 0.2
    t, _ = choose_threshold(Y, P, "fp:0.0")
    assert t == 0.71  # lowest with no false positive
    t, _ = choose_threshold(Y, P, "fbeta:1")
    assert at_threshold(Y, P, t)["f1"] == max(at_threshold(Y, P, x)["f1"]
                                               for x in np.arange(0.01, 1, 0.01))
    with pytest.raises(ValueError, match="no meteor"):
        choose_threshold(np.zeros(3, bool), np.zeros(3), "recall:0.9")
    with pytest.raises(ValueError, match="expected"):
        choose_threshold(Y, P, "precision:0.9")


def test_fp_budget_with_a_confidence_margin():
    from training._metrics import poisson_upper

    # Textbook one-sided 90 % upper limits of a Poisson mean (e.g. Gehrels 1986).
    for count, upper in ((0, 2.303), (1, 3.890), (5, 9.275), (10, 15.407)):
        assert poisson_upper(count, 0.9) == pytest.approx(upper, abs=2e-3)
    rng = np.random.default_rng(5)
    y = np.zeros(4000, bool)
    y[:200] = True
    p = np.where(y, rng.uniform(0.3, 1.0, 4000), rng.uniform(0.0, 1.0, 4000) ** 20)
    plain, _ = choose_threshold(y, p, "fp:0.003")
    margin, why = choose_threshold(y, p, "fp:0.003@0.9")
    assert margin > plain  # the margin costs threshold...
    fp = at_threshold(y, p, margin)["fp"]
    assert poisson_upper(fp, 0.9) <= 0.003 * 4000 < poisson_upper(fp + 1, 0.9)
    assert "90% confidence" in why
    for bad in ("recall:0.9@0.9", "fp:0.003@0.3", "fp:0.003@x"):
        with pytest.raises(ValueError):
            choose_threshold(y, p, bad)


def test_fp_margin_resamples_whole_nights_when_false_alarms_cluster():
    from training._metrics import GRID, resampled_fp_rates

    rng = np.random.default_rng(11)
    nights = np.repeat(np.arange(14), 300)
    y = rng.random(nights.size) < 0.07
    p = np.where(y, rng.uniform(0.3, 1.0, nights.size), rng.uniform(0, 0.5, nights.size))
    # Two nights of satellites: their false alarms score high, the other nights' do not.
    busy = np.isin(nights, [3, 9]) & ~y & (rng.random(nights.size) < 0.03)
    p[busy] = rng.uniform(0.6, 0.95, int(busy.sum()))
    poisson, _ = choose_threshold(y, p, "fp:0.003@0.9")
    nightly, why = choose_threshold(y, p, "fp:0.003@0.9", nights)
    assert nightly > poisson  # the clustering widens the margin
    assert "resamplings of the 14 nights" in why
    rates = resampled_fp_rates(y, p, nights, 0.9)
    k = GRID.index(nightly)
    assert rates[k] <= 0.003 < rates[k - 1]  # the lowest threshold that keeps the budget
    assert np.array_equal(rates, resampled_fp_rates(y, p, nights, 0.9))  # seeded: reruns agree
    # A quantile of resampled rates: above the plain rate at the same threshold.
    assert rates[k] >= at_threshold(y, p, nightly)["fp_frame_rate"]


def test_recall_by_brightness_bins():
    peaks = np.array([4, 30, 30, 300, -1, -1, -1, -1, -1, -1], float)
    rows = recall_by_bins(Y, P, 0.5, peaks)
    assert [(r["bin"], r["meteors"], r["detected"]) for r in rows] == [
        ("0–5", 1, 1), ("20–40", 2, 2), ("160–inf", 1, 0)]


def test_parity_numbers():
    a = np.array([0.1, 0.6, 0.9])
    b = np.array([0.12, 0.4, 0.9])
    out = parity(a, b, 0.5)
    assert out["max_abs_diff"] == pytest.approx(0.2)
    assert out["agreement"] == pytest.approx(2 / 3)


def test_int8_refusal_rule():
    assert int8_refusal(0.98, 0.975) is None  # half a point: fine
    assert int8_refusal(0.98, 0.97) is None  # exactly one point: allowed
    message = int8_refusal(0.98, 0.965)
    assert message and "1.50 points below" in message
    assert int8_refusal(0.90, 0.95) is None  # better is fine
    assert int8_refusal(float("nan"), 0.9)  # cannot vouch without meteors
    assert int8_refusal(0.98, 0.95, max_drop=0.05) is None


def test_calibration_choice_prefers_recall_then_agreement():
    from training.export import pick_calibration

    cands = {
        "minmax": {"recall": 0.96, "agreement": 0.999, "mean_abs_diff": 0.001},
        "entropy": {"recall": 0.98, "agreement": 0.990, "mean_abs_diff": 0.010},
        "percentile": {"recall": 0.98, "agreement": 0.995, "mean_abs_diff": 0.020},
    }
    assert pick_calibration(cands) == "percentile"


def test_faint_simulated_meteors_are_left_out_not_made_negative(tmp_path: Path):
    frames = [tmp_path / "images/20261201" / f"image-2026120120{m:02d}00.jpg" for m in range(4)]
    rows = [(True, "40.0"), (True, "6.5"), (False, ""), (True, "")]
    labelled = [dataset.Labelled(dataset.parse_frame(f), meteor, {"meteor_peak": peak})
                for f, (meteor, peak) in zip(frames, rows, strict=True)]
    kept = dataset.drop_faint_meteors(labelled, min_peak=15.0)
    # The 6.5-level meteor is gone; the negative and a meteor of unknown peak stay as they were.
    assert [(lab.frame.path.name, lab.meteor) for lab in kept] == [
        (frames[0].name, True), (frames[2].name, False), (frames[3].name, True)]


def test_min_peak_needs_simulator_truth(tmp_path: Path, caplog):
    from edge.cli import main

    (tmp_path / "labels" / "meteor").mkdir(parents=True)
    rc = main(["dataset", "index", "--folders", str(tmp_path / "labels"), "--images",
               str(tmp_path), "--out", str(tmp_path / "out"), "--min-peak", "10"])
    assert rc == 2
    assert "--min-peak needs --truth" in caplog.text


def test_meteor_snr_measures_the_sky_around_the_trail_not_the_trail():
    from training.meteor_snr import local_noise

    rng = np.random.default_rng(0)
    previous = rng.normal(60, 3, (240, 320))
    current = rng.normal(60, 3, (240, 320))  # the difference's noise: 3 * sqrt(2)
    current[80:160, 40:280] += rng.normal(0, 9, (80, 240))  # a noisier patch elsewhere
    segment = (60.0, 200.0, 250.0, 210.0)
    import cv2 as cv

    cv.line(current, (60, 200), (250, 210), 160, 3)  # a bright trail: left out of the noise
    noise = local_noise(previous.astype(np.float32), current.astype(np.float32), segment)
    # Within 80 px of the trail: part of the noisy patch (rows 120-159) and the quiet sky.
    assert 3 * np.sqrt(2) < noise < np.sqrt(18 + 81)
    quiet = local_noise(previous.astype(np.float32), previous.astype(np.float32) +
                        rng.normal(0, 4.2, (240, 320)).astype(np.float32), segment)
    assert abs(quiet - 4.2) < 0.2  # the sigma-clip keeps a Gaussian's σ
    # A frame that is gone (an archived JPEG) gives no ratio, not a failed report.
    from training.meteor_snr import snr_of

    assert np.isnan(snr_of([("/nonexistent/a.jpg", "/nonexistent/b.jpg", segment, 40.0)])[0])


# ---------------------------------------------------------------- augmentation


def test_mosaic_augmentation_keeps_every_tile_whole():
    """m1 tiles survive augmentation intact (only flipped/turned); whole-sky variants rotate."""
    import torch
    from fastai.vision.all import TensorImage

    from training.train import DIHEDRAL_AUGMENTATION, ROTATE_AUGMENTATION, augmentations

    tfms, described = augmentations("m1")
    assert described == DIHEDRAL_AUGMENTATION
    assert augmentations("g2")[1] == ROTATE_AUGMENTATION
    # A 4x4 mosaic whose tiles are each one constant value: after any augmentation each 8x8
    # tile must still be a single value, and the 16 values the same set.
    values = torch.arange(16, dtype=torch.float32).reshape(4, 4) * 10
    mosaic = values.repeat_interleave(8, 0).repeat_interleave(8, 1)
    batch = TensorImage(mosaic.expand(16, 3, 32, 32).clone())
    out = batch
    for tfm in tfms:
        out = tfm(out, split_idx=0)
    tiles = out[:, 0].reshape(16, 4, 8, 4, 8)
    assert torch.allclose(tiles.amin(dim=(2, 4)), tiles.amax(dim=(2, 4)), atol=1e-3)
    for image in out[:, 0]:
        assert sorted(image[::8, ::8].flatten().round().tolist()) == values.flatten().tolist()
    assert any(not torch.equal(image, batch[0, 0]) for image in out[:, 0])  # it did transform


# ---------------------------------------------------------------- alert threshold


def test_alert_scores_zero_what_the_pipeline_suppressed():
    import pandas as pd

    from training.alert_threshold import alert_scores, night_folders

    rows = pd.DataFrame({"frame": ["/n/20261101/a.jpg", "/n/20261101/b.jpg", "/n/20261102/c.jpg"]})
    results = {"/n/20261101/a.jpg": {"score": 0.9, "alert": True, "suppressed": None},
               "/n/20261101/b.jpg": {"score": 0.95, "alert": False, "suppressed": "satellite"},
               "/n/20261102/c.jpg": {"score": 0.2, "alert": False, "suppressed": None}}
    assert alert_scores(rows, results).tolist() == [0.9, 0.0, 0.2]
    assert [p.name for p in night_folders(rows)] == ["20261101", "20261102"]
    del results["/n/20261102/c.jpg"]
    with pytest.raises(TrainingError, match="did not score"):
        alert_scores(rows, results)


def test_alert_scores_apply_the_second_look_at_each_threshold():
    import pandas as pd

    from training.alert_threshold import _suppressed_shares, alert_scores

    rows = pd.DataFrame({"frame": ["a", "b", "c", "d"], "label": ["not_meteor"] * 3 + ["meteor"],
                         "satellite": [1, 1, 1, 1]})
    # At threshold 0 the second look never suppresses; each frame records its value.
    results = {"a": {"score": 0.9, "suppressed": None, "second_look": 0.02},  # noise left
               "b": {"score": 0.9, "suppressed": None, "second_look": 0.7},  # something left
               "c": {"score": 0.9, "suppressed": None, "second_look": None},
               "d": {"score": 0.9, "suppressed": None}}  # a meteor beside a satellite
    # a alerts only for thresholds up to 0.02; b's 0.7 is over rescore_below: it stays an alert.
    assert alert_scores(rows, results, rescore_below=0.5).tolist() == [0.02, 0.9, 0.9, 0.9]
    shares = _suppressed_shares(rows, results, 0.85, rescore_below=0.5)
    assert shares["satellite"]["over_threshold"] == 3 and shares["satellite"]["suppressed"] == 1
    assert shares["meteor"]["over_threshold"] == 1 and shares["meteor"]["suppressed"] == 0


def test_breakdown_counts_moving_objects_that_raised_no_alert_per_condition():
    import pandas as pd

    from training.alert_threshold import breakdown

    rows = pd.DataFrame({
        "label": ["meteor", "not_meteor", "not_meteor", "not_meteor", "meteor", "not_meteor"],
        "satellite": [0, 1, 1, 0, 1, 0], "aircraft": [0, 0, 1, 1, 0, 0],
        "condition": ["clear", "clear", "clear", "moonlit", "moonlit", "moonlit"]})
    classifier = np.array([0.9, 0.95, 0.2, 0.9, 0.5, 0.1])
    # The model passed frames 0, 1 and 3; a rule removed 3 (an aircraft), 1 stayed an alert.
    alerted = np.array([True, True, False, False, False, False])
    out = breakdown(rows, classifier, alerted, 0.85)
    assert out["all"]["classifier"]["fp"] == 2 and out["all"]["pipeline"]["fp"] == 1
    assert out["all"]["pipeline"]["recall"] == 0.5
    # Both rows report the threshold the alerts were decided at.
    assert out["all"]["pipeline"]["threshold"] == out["clear"]["classifier"]["threshold"] == 0.85
    # Frame 4 is a meteor beside a satellite: not a satellite frame.
    assert out["all"]["satellite"] == {"frames": 2, "alerts": 1, "no_alert_share": 0.5}
    assert out["all"]["aircraft"] == {"frames": 2, "alerts": 0, "no_alert_share": 1.0}
    assert out["all"]["satellite_or_aircraft"]["frames"] == 3
    assert out["clear"]["satellite"]["alerts"] == 1 and out["moonlit"]["satellite"]["frames"] == 0
    assert out["moonlit"]["satellite"]["no_alert_share"] is None
    assert out["moonlit"]["pipeline"]["frames"] == 3 and out["moonlit"]["classifier"]["tp"] == 0
    # The model card's table: one row per condition, the whole last.
    from training.model_card import by_condition_table

    table = [line for line in by_condition_table(out) if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in table] == ["| clear", "| moonlit", "| all"]
    assert "1 of 2 (50.0%)" in table[-1] and "2 of 2 (100.0%)" in table[-1]


def test_best_within_finds_the_highest_recall_inside_the_false_positive_budget():
    # 1,000 frames: 10 meteors spread over the scores, 15 look-alikes at 0.8, the rest at 0.
    meteors = np.array([0.1, 0.3, 0.5, 0.79, 0.82, 0.85, 0.9, 0.93, 0.96, 0.99])
    y = np.r_[np.ones(10, bool), np.zeros(990, bool)]
    p = np.r_[meteors, np.full(15, 0.8), np.zeros(975)]
    best = best_within(y, p, 10.0)  # at most 10 false positives: above 0.8 only
    assert best is not None and best["threshold"] == 0.82 and best["fp"] == 0
    assert best["recall"] == 0.6 and best["fp_budget_per_1000"] == 10.0
    loose = best_within(y, p, 15.0)  # the 15 look-alikes fit: every meteor, at the lowest's
    assert loose is not None and loose["threshold"] == 0.1 and loose["fp"] == 15
    assert loose["recall"] == 1.0
    # Scores crowded at the top, where a 0.01 grid would see one threshold: the exact one is
    # found between two of them, and ties count whole (no threshold splits equal scores).
    crowded = np.r_[[0.9991, 0.9992, 0.9995, 0.9996], np.full(2, 0.9993), np.zeros(994)]
    labels = np.r_[np.ones(4, bool), np.zeros(996, bool)]
    top = best_within(labels, crowded, 1.0)
    assert top is not None and top["threshold"] == 0.9995 and top["recall"] == 0.5
    tied = best_within(labels, crowded, 2.0)
    assert tied is not None and tied["threshold"] == 0.9991 and tied["fp"] == 2
    assert best_within(y, np.r_[meteors, np.ones(990)], 10.0) is None  # no threshold fits


def test_partial_roc_area_judges_the_ranking_only_up_to_the_false_positive_rate():
    y = np.r_[np.ones(2, bool), np.zeros(4, bool)]
    assert partial_roc_area(y, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 0.5) == 1.0
    assert partial_roc_area(y, [0.1, 0.2, 0.7, 0.6, 0.5, 0.4], 0.5) == 0.0
    # Over every rate it is the AUC (a tie counts half): 5.5 of 8 pairs in order.
    assert partial_roc_area(y, [0.9, 0.5, 0.7, 0.6, 0.5, 0.4], 1.0) == pytest.approx(0.6875)
    # One meteor above every other frame, one below the top one: at rates up to 1/4 only the
    # first is found (area 1/2); the second comes in between 1/4 and 1/2.
    p = [0.9, 0.75, 0.8, 0.6, 0.5, 0.4]
    assert partial_roc_area(y, p, 0.25) == pytest.approx(0.5)
    assert partial_roc_area(y, p, 0.5) == pytest.approx((0.5 * 0.25 + 1.0 * 0.25) / 0.5)
    with pytest.raises(ValueError, match="max_fpr"):
        partial_roc_area(y, p, 0.0)


def _trail_and_network_logits(rng, fooled: int):
    """Validation frames where the trail logit separates meteors from look-alikes and the
    network's logit separates the bulk of easy frames but scores `fooled` look-alikes (a
    satellite's single-exposure trail) as high as the meteors."""
    meteors, easy = 200, 6000
    trail = np.r_[rng.normal(3.0, 1.0, meteors), rng.normal(-1.0, 2.0, easy),
                  rng.normal(0.5, 1.0, fooled)]
    network = np.r_[rng.normal(2.0, 1.5, meteors), rng.normal(-6.0, 1.5, easy),
                    rng.normal(3.0, 1.0, fooled)]
    y = np.r_[np.ones(meteors, bool), np.zeros(easy + fooled, bool)]
    return trail, 1 / (1 + np.exp(-network)), y


def test_the_combination_ranks_the_top_by_the_trail_where_the_network_is_fooled_there():
    from training.trail_classifier import fit_combination

    trail, network, y = _trail_and_network_logits(np.random.default_rng(3), fooled=60)
    fit = fit_combination(trail, network, y, empty=-12.0)
    # The likelihood, ruled by the easy frames, wants a large network share; the top does not.
    assert fit.share < fit.logistic_share
    assert fit.partial_roc_area["chosen"] > fit.partial_roc_area["logistic"]
    assert fit.network_weight == pytest.approx(fit.share * fit.trail_weight)
    assert fit.trail_weight > 0
    # Scale and bias are still a logistic fit: the scores add up to the meteors' count.
    z = fit.trail_weight * trail + fit.network_weight * np.log(network / (1 - network)) + fit.bias
    assert float((1 / (1 + np.exp(-z))).sum()) == pytest.approx(float(y.sum()), rel=0.02)


def test_the_combination_keeps_a_network_that_is_not_fooled():
    from training.trail_classifier import fit_combination

    trail, network, y = _trail_and_network_logits(np.random.default_rng(4), fooled=0)
    fit = fit_combination(trail, network, y, empty=-12.0)
    assert fit.share >= 0.5  # the network helps everywhere: it keeps its share


def test_hard_negatives_take_their_share_of_the_draw_by_hardness():
    pytest.importorskip("fastai")
    from training._balanced import draw_negatives

    rng = np.random.default_rng(0)
    hardness = np.zeros(1000)
    hardness[:50] = np.linspace(0.5, 1.0, 50)  # 50 frames an earlier model scored high
    for share, n in ((0.0, 100), (0.3, 100), (0.5, 60), (1.0, 200)):
        picked = draw_negatives(rng, hardness, n, share)
        assert len(picked) == n and len(set(picked.tolist())) == n  # distinct
        hard = int((picked < 50).sum())
        if share == 0.0:
            assert hard < 20  # uniform: about 5 % of the draw
        else:
            # The hard part of the draw (all of it when there are enough hard frames), plus
            # whatever the uniform rest happens to hit.
            assert hard >= min(round(share * n), 50)
    # Without any hard frame the draw is uniform whatever the share.
    assert len(draw_negatives(rng, np.zeros(30), 30, 0.5)) == 30


def test_model_card_tells_the_whole_lineage_and_the_mining():
    from training.model_card import _training_line

    parent = {"name": "guaita-r18-sim", "version": "2.0.0", "started_from": "random init",
              "schedule": "fit_one_cycle(20, lr_max=3.00e-03)", "balance": "undersample",
              "neg_ratio": 3.0, "train_seconds": 2223.3, "device": "cpu"}
    tuned = {"started_from": "bundle models/guaita-r18-sim", "schedule": "fine_tune(8)",
             "balance": "undersample", "neg_ratio": 3.0, "device": "cpu", "train_seconds": 1.0,
             "hard_negatives": {"model": "guaita-r18-sim", "hard_share": 0.5,
                                "negatives_scored": 17747, "scoring_0.5_or_more": 855},
             "parent": parent}
    line = _training_line(tuned)
    assert "50% of each epoch's non-meteors drawn by guaita-r18-sim's score" in line
    assert "855 of 17747" in line
    assert "That model, guaita-r18-sim 2.0.0: random init; fit_one_cycle(20" in line
    assert "drawn by" not in _training_line(parent) and "That model" not in _training_line(parent)


def test_each_missed_meteor_is_blamed_on_the_first_reason_that_applies():
    import pandas as pd

    from training.evaluate import Scored, where_missed

    # Six meteor frames and one sky frame; the stage floor is 0.3, the threshold 0.8.
    df = pd.DataFrame({"frame": [f"f{i}.jpg" for i in range(7)],
                       "meteor_peak": [30, 30, 30, 30, 100, 100, ""]})
    y = np.array([True] * 6 + [False])
    network = np.array([0.9, 0.9, 0.1, 0.6, 0.2, 0.95, 0.99])
    staged = np.array([0.85, 0.5, 0.1, 0.7, 0.2, 0.9, 0.99])
    s = Scored("m", "onnx", 0.8, staged, info={"stage_floor": 0.3}, network=network)
    # Ranks of the first window holding the meteor (16 shown): f1 outside, f4 unknown (no
    # segment: not blamed on the windows), f5 outside but detected all the same.
    ranks = {"f0.jpg": 0, "f1.jpg": None, "f2.jpg": 3, "f3.jpg": 15, "f5.jpg": 20}
    missed = where_missed(df, y, s, 0.8, ranks, 16)
    rows = {r["bin"]: r for r in missed["rows"]}
    assert rows["all"] == {"bin": "all", "meteors": 6, "detected": 2, "outside_windows": 1,
                           "no_candidate_line": 0, "under_stage_floor": 2, "under_threshold": 1}
    assert rows["20–40"]["meteors"] == 4 and rows["80–160"]["detected"] == 1
    assert rows["80–160"]["under_stage_floor"] == 1  # f4: coverage unknown, network 0.2
    # A bundle without a stage, no coverage: every miss is the score's.
    plain = where_missed(df, y, Scored("m", "onnx", 0.8, staged), 0.8, None, 16)
    assert plain["rows"][0]["under_threshold"] == 4 and not plain["windows_checked"]
    # The model card shows the same blame, one column per reason that could apply.
    from training.model_card import missed_table

    card = "\n".join(missed_table(missed))
    assert "network < 0.3" in card and "outside the windows" in card
    assert "| all | 6 | 2 | 1 | 2 | 1 |" in card
    assert "network <" not in "\n".join(missed_table(plain)) and missed_table(None) == []
    # A trail classifier's bundle: the windows do not hide a meteor its candidate lines hold;
    # one without a line along it is blamed on the search (f1), unknown ones (f4) are not.
    lines = {"f0.jpg": True, "f1.jpg": False, "f2.jpg": True, "f3.jpg": True, "f5.jpg": True}
    classified = Scored("m", "onnx", 0.8, staged, network=network, on_line=lines)
    by = {r["bin"]: r for r in where_missed(df, y, classified, 0.8, ranks, 16)["rows"]}
    assert by["all"] == {"bin": "all", "meteors": 6, "detected": 2, "outside_windows": 0,
                         "no_candidate_line": 1, "under_stage_floor": 0, "under_threshold": 3}
    table = "\n".join(missed_table(where_missed(df, y, classified, 0.8, ranks, 16)))
    assert "no candidate line along it" in table and "outside the windows" not in table
    assert "signal-to-noise" not in table  # no SNR measured, no second table
    # With each meteor's SNR (f4's unknown): the same blame, binned by it as well.
    snr = np.array([20.0, 4.0, 2.0, 6.0, np.nan, 9.0, np.nan])
    with_snr = where_missed(df, y, classified, 0.8, ranks, 16, snr)
    assert with_snr["rows"] == where_missed(df, y, classified, 0.8, ranks, 16)["rows"]
    by_snr = {r["bin"]: r for r in with_snr["rows_by_snr"]}
    assert by_snr["all"] == by["all"]
    assert by_snr["15–inf"] == {"bin": "15–inf", "meteors": 1, "detected": 1,
                                "outside_windows": 0, "no_candidate_line": 0,
                                "under_stage_floor": 0, "under_threshold": 0}
    assert by_snr["3–5"]["no_candidate_line"] == 1 and by_snr["0–3"]["under_threshold"] == 1
    assert sum(r["meteors"] for k, r in by_snr.items() if k != "all") == 5  # f4 in no bin
    table = "\n".join(missed_table(with_snr))
    assert "signal-to-noise" in table and "| SNR | meteors |" in table
    assert "| 8–15 | 1 | 1 | 0 | 0 |" in table
    # The card's status line: at the best threshold, the share found at SNR >= 5 (f0, f3,
    # f5) and how many are fainter (f1, f2; f4's SNR unknown, in neither).
    from training.model_card import verdict

    best = {"recall": 2 / 6, "tp": 2, "meteors": 6, "threshold": 0.8}
    line = verdict("test", {"models": [{"kind": "onnx", "best_within_target": best,
                                        "missed": {"at_best": with_snr}}]})
    assert line.endswith("target recall 0.95 **not met**. At that threshold it finds 0.6667 "
                         "(2 of 3) of the meteor frames at SNR 5 or more; 2 are fainter.")
    plain_line = verdict("test", {"models": [{"kind": "onnx", "best_within_target": best,
                                              "missed": {"at_best": where_missed(
                                                  df, y, classified, 0.8, ranks, 16)}}]})
    assert "SNR" not in plain_line


def test_trail_stage_gain_is_zero_recall_where_no_threshold_keeps_the_budget():
    import pandas as pd

    from edge.trail_stage import TrailStage
    from training.trail_stage import held_out_gain

    # Ten frames; a no-meteor frame scores 0.9999, above every threshold tried: any threshold
    # flags it, 100 false positives per 1,000, so the best recall within 3 and 10 is none.
    rows = pd.DataFrame({"label": ["meteor"] * 3 + ["no-meteor"] * 7})
    scores = np.array([0.9, 0.8, 0.7, 0.9999, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    stage = TrailStage(features=("score",), impute=(0.0,), mean=(0.0,), scale=(1.0,),
                       coef=(1.0,), intercept=0.0)
    gain = held_out_gain(stage, rows, scores, np.array([], dtype=int), [])
    assert gain["model_alone"] == {"recall_within_3_per_1000": 0.0,
                                   "recall_within_10_per_1000": 0.0}
    assert gain["candidates"] == 0 and gain["meteors"] == 3
    # With the negative gone the budget holds and the meteors count.
    scores[3] = 0.05
    assert held_out_gain(stage, rows, scores, np.array([], dtype=int), [])["model_alone"][
        "recall_within_10_per_1000"] == 1.0


_INITIALISED: list[str] = []


def _remember(tag: str) -> None:
    _INITIALISED.append(tag)


def _square_and_pid(x: int) -> tuple[int, int, list[str]]:
    import os

    return x * x, os.getpid(), list(_INITIALISED)


def test_process_map_keeps_job_order_in_worker_processes_and_here():
    import os

    from training._parallel import process_map

    jobs = list(range(40))
    pooled = list(process_map(_square_and_pid, jobs, 2, chunksize=3, initializer=_remember,
                              initargs=("pool",)))
    assert [r[0] for r in pooled] == [x * x for x in jobs]
    assert os.getpid() not in {r[1] for r in pooled}  # spawned workers did the work...
    assert all(r[2] == ["pool"] for r in pooled) and _INITIALISED == []  # ...initialised there
    # One worker, or too few jobs for a pool: here, initialiser included.
    serial = list(process_map(_square_and_pid, jobs[:5], 2, serial_below=8,
                              initializer=_remember, initargs=("here",)))
    assert [r[0] for r in serial] == [0, 1, 4, 9, 16] and {r[1] for r in serial} == {os.getpid()}
    assert _INITIALISED == ["here"]
    _INITIALISED.clear()


def test_a_mining_pass_ranks_the_candidates_as_torch_does():
    """Mining passes score through the exported graph (onnxruntime, for speed): the same logits
    and the same hard negatives as the network in torch, batch norm's running statistics
    included; the model is left ready to go on training."""
    import torch

    from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS
    from training.trail_classifier import logits, mining_logits, strip_net

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = strip_net(len(SCALARS))
    strips = rng.normal(size=(700, CHANNELS, ACROSS, ALONG)).astype(np.float16)
    scalars = rng.normal(size=(700, len(SCALARS))).astype(np.float32)
    model.train()
    with torch.no_grad():  # moves the running statistics off their initial 0 and 1
        model(torch.from_numpy(strips[:256].astype(np.float32) * 3 + 1),
              torch.from_numpy(scalars[:256]))
    z = mining_logits(model, strips, scalars)
    expected = logits(model, strips, scalars)
    assert z.shape == (700,) and np.allclose(z, expected, atol=1e-4)
    assert np.std(expected) > 1e-3  # not a constant output both ways
    hard = set(np.argsort(-z)[:175])
    assert len(hard & set(np.argsort(-expected)[:175])) >= 173


def test_trail_training_mines_and_relabels_meteor_frames_without_a_segment():
    """Label folders have meteor frames without the meteor's segment: each mining pass scores
    every candidate once, takes its hard negatives from those scores and makes each such
    frame's top candidate its meteor (multiple-instance learning)."""
    from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS
    from training.trail_classifier import Examples, candidate_labels, train_model

    rng = np.random.default_rng(1)
    frames, per_frame = 40, 5
    frame = np.repeat(np.arange(frames, dtype=np.int32), per_frame)
    strips = rng.normal(size=(len(frame), CHANNELS, ACROSS, ALONG)).astype(np.float16)
    meteor_frames = np.arange(frames) < 10
    has_segment = np.arange(frames) < 5  # frames 5-9: meteors without a segment
    cover = np.zeros(len(frame), np.float32)
    cover[np.arange(5) * per_frame] = 0.5
    strips[np.arange(10) * per_frame] += 2  # each meteor frame's first candidate is bright
    scalars = rng.normal(size=(len(frame), len(SCALARS))).astype(np.float32)
    examples = Examples(strips, scalars, frame, cover, frames)
    _, history = train_model(examples, meteor_frames, has_segment, epochs=3, neg_ratio=3,
                                 hard_share=0.5, seed=0, progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[1]["hard"] == 0 and history[2]["hard"] > 0  # the pass at epoch 2 mined
    # The relabelling itself: by segment where there is one, else the frame's top logit.
    z = np.zeros(len(frame), np.float32)
    z[np.arange(5, 10) * per_frame + 2] = 5.0
    labels = candidate_labels(examples, meteor_frames, has_segment, z)
    expected = [*(np.arange(5) * per_frame), *(np.arange(5, 10) * per_frame + 2)]
    assert np.flatnonzero(labels).tolist() == expected


def test_model_card_verdict_adds_the_alerts_where_the_report_ran_the_pipeline():
    from training.model_card import verdict

    # 303 of 319 is 0.94984: printed so that it does not read as the 0.95 it misses.
    best = {"recall": 303 / 319, "tp": 303, "meteors": 319, "threshold": 0.5031}
    model = {"kind": "onnx", "best_within_target": best}
    plain = verdict("test nights", {"models": [model]})
    assert "0.9498 (303 of 319, threshold 0.5031)" in plain and "**not met**" in plain
    assert "alerts" not in plain
    alerts = {"best_within": {"3": None, "10": {"recall": 0.96, "threshold": 0.3}}}
    line = verdict("test nights", {"models": [{**model, "alerts": alerts}]})
    assert line.startswith(plain) and "alerts (suppression rules on) reach 0.9600" in line
    assert "(threshold 0.3) within 10 false alerts per 1,000: met." in line
