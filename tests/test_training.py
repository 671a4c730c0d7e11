"""End to end on CPU: simulate → dataset index → train → export → evaluate, on a tiny set.

Three simulated nights of 40 frames at 320×240, inputs 64 px, ResNet18 from scratch for one
epoch: the model is not meant to be good, the pipeline is meant to be right — night-disjoint
splits, the edge's preprocessing in the cache, the same probabilities from fastai, PyTorch and
the ONNX graph, a bundle the edge's scorer loads, a report holding the numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("fastai")

from edge.bundle import load_bundle
from edge.cli import main
from edge.preprocess import Preprocessor, PreprocessSpec, read_gray
from training._common import LEARNER_NAME, TRAIN_META, WEIGHTS_NAME, load_index, load_input
from training.evaluate import MISS_CAUSES

pytestmark = pytest.mark.slow
THREADS = "2"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(int(THREADS))
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def sim(work: Path) -> Path:
    from training.simulate import simulate

    # A high meteor rate so every night has meteors to train, validate and test on.
    return simulate(work / "sim", nights=3, frames=40, seed=3, width=320, height=240,
                    meteor_rate=0.3, progress=False)


@pytest.fixture(scope="module")
def indexed(work: Path, sim: Path) -> Path:
    out = work / "data"
    # m1, the shipped model's variant (16-px candidate tiles at this size).
    rc = main(["dataset", "index", "--truth", str(sim), "--out", str(out), "--preprocess", "m1",
               "--size", "64", "--workers", "2", "--no-progress", "--seed", "1"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def trained(work: Path, indexed: Path) -> Path:
    out = work / "model"
    rc = main(["train", "--data", str(indexed), "--out", str(out), "--arch", "resnet18",
               "--no-pretrained", "--epochs", "1", "--no-lr-find", "--lr", "1e-2",
               "--batch-size", "16", "--threads", THREADS, "--quiet"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def bundle(work: Path, trained: Path, indexed: Path) -> Path:
    out = work / "bundle"
    # One untrained epoch says nothing about int8 vs fp32 recall: the refusal rule itself is
    # unit-tested; here every parity number must merely be computed.
    rc = main(["export", "--model", str(trained), "--data", str(indexed), "--out", str(out),
               "--name", "guaita-test", "--version", "0.0.1", "--calib-images", "24",
               "--max-recall-drop", "1.0", "--threads", THREADS])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def report(work: Path, indexed: Path, trained: Path, bundle: Path) -> Path:
    out = work / "report"
    rc = main(["evaluate", "--data", str(indexed), "--model", str(trained), "--model",
               str(bundle), "--out", str(out), "--threads", THREADS, "--gallery", "8",
               "--cams", "4"])
    assert rc == 0
    return out


def _truth(sim: Path) -> dict[str, dict[str, str]]:
    with open(sim, newline="") as fh:
        return {str((sim.parent / r["file"]).resolve()): r for r in csv.DictReader(fh)}


def test_index_splits_by_whole_night_and_labels_only_meteors(indexed: Path, sim: Path):
    df, meta = load_index(indexed)
    truth = _truth(sim)
    splits_per_night = df.groupby("night")["split"].nunique()
    assert (splits_per_night == 1).all()
    assert set(df["split"]) == {"train", "valid", "test"}
    assert set(meta["nights"]["train"]).isdisjoint(meta["nights"]["test"])
    # The first frame of a night has no reference frame: never in the index.
    rows = [truth[str(Path(f).resolve())] for f in df["frame"]]
    assert all(r["frame_index"] != "0" for r in rows)
    assert len(df) == len(truth) - 3
    labels = ["meteor" if r["meteor"] == "1" else "no-meteor" for r in rows]
    assert list(df["label"]) == labels
    # Satellites without a meteor are negatives (the model must learn to ignore them).
    sats = df[(df["satellite"].astype(str) == "1") & (df["label"] == "no-meteor")]
    assert len(sats) > 0
    for split in ("train", "valid", "test"):
        part = df[df["split"] == split]
        assert meta["counts"][split]["meteor"] == int((part["label"] == "meteor").sum())
        assert (part["label"] == "meteor").any(), f"{split} has no meteor"


def test_cached_images_are_the_edges_preprocessing(indexed: Path):
    df, meta = load_index(indexed)
    spec = PreprocessSpec.from_dict(meta["preprocessing"])
    assert Path(meta["cache"]).name == spec.fingerprint()
    pre = Preprocessor(spec)
    for _, row in df.sample(5, random_state=0).iterrows():
        expected = pre(read_gray(row["previous"]), read_gray(row["frame"]))
        assert np.array_equal(load_input(row["path"], spec.channels), expected)
        assert Path(row["previous"]).parent == Path(row["frame"]).parent
        assert Path(row["previous"]).name < Path(row["frame"]).name


def test_index_is_resumable(indexed: Path, sim: Path):
    df, _ = load_index(indexed)
    kept, removed = Path(df["path"].iloc[0]), Path(df["path"].iloc[1])
    before = kept.stat().st_mtime_ns
    removed.unlink()
    rc = main(["dataset", "index", "--truth", str(sim), "--out", str(indexed), "--size", "64",
               "--preprocess", "m1", "--workers", "1", "--no-progress", "--seed", "1"])
    assert rc == 0
    assert kept.stat().st_mtime_ns == before  # not rewritten
    assert removed.is_file()  # the missing one was made again
    assert load_index(indexed)[0]["split"].tolist() == df["split"].tolist()


def test_train_records_what_it_did(trained: Path, indexed: Path):
    meta = json.loads((trained / "train.json").read_text())
    dmeta = json.loads((indexed / "dataset.json").read_text())
    assert (trained / "model.pth").is_file() and (trained / "learner.pkl").is_file()
    assert meta["pretrained"] is False
    assert "random init" in meta["started_from"]
    assert meta["classes"] == ["meteor", "no-meteor"]
    assert meta["channels"] == 3
    assert meta["preprocessing"] == dmeta["preprocessing"]
    assert meta["data"]["splits"]["train"]["nights"] == dmeta["nights"]["train"]
    assert len(meta["history"]) == 1 and math.isfinite(meta["history"][0]["train_loss"])


def test_pretrained_without_cached_weights_fails_clearly(indexed: Path, tmp_path: Path,
                                                          monkeypatch, caplog):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    rc = main(["train", "--data", str(indexed), "--out", str(tmp_path / "m"), "--pretrained",
               "--epochs", "1", "--no-lr-find"])
    assert rc == 2
    assert "not in the local torch hub cache" in caplog.text
    assert not (tmp_path / "m" / "model.pth").exists()


def test_bundle_loads_in_the_edge_scorer_and_matches_training(bundle: Path, indexed: Path):
    import onnx

    from edge.model import open_scorer

    scorer = open_scorer(bundle, threads=1)
    man = scorer.manifest
    assert man.name == "guaita-test" and man.classes == ("meteor", "no-meteor")
    assert man.input_shape == (1, 3, 64, 64) and man.input_name == "image"
    assert 0.0 < man.recommended_threshold < 1.0
    graph = onnx.load(str(bundle / "model.onnx"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in graph.graph.output] == ["probs"]
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)  # int8 QDQ
    # The edge's path (JPEG pair → Preprocessor → ONNX) equals the cached training image's score.
    df, _ = load_index(indexed)
    row = df[df["split"] == "test"].iloc[0]
    from_frames = scorer.score(read_gray(row["previous"]), read_gray(row["frame"]))
    from_cache = float(scorer.score_inputs([load_input(row["path"], 3)])[0])
    assert 0.0 <= from_frames <= 1.0
    assert from_frames == pytest.approx(from_cache, abs=1e-6)


def test_manifest_carries_parity_metrics_and_training(bundle: Path):
    data = json.loads((bundle / "manifest.json").read_text())
    parity = data["metrics"]["parity"]
    for pair in ("torch_vs_onnx_fp32", "onnx_fp32_vs_int8", "torch_vs_onnx_int8"):
        for key in ("max_abs_diff", "mean_abs_diff", "agreement"):
            assert math.isfinite(parity[pair][key])
    # Normalisation baked into the graph: PyTorch and ONNX fp32 agree to float precision.
    assert parity["torch_vs_onnx_fp32"]["max_abs_diff"] < 1e-4
    assert parity["split"] == "test"
    for model in ("torch_fp32", "onnx_fp32", "onnx_int8"):
        assert math.isfinite(parity["models"][model]["recall"])
    cal = data["metrics"]["calibration"]
    assert set(cal["valid"]) == {"minmax", "entropy", "percentile"}
    assert cal["chosen"] in cal["valid"]
    # Three calibrations, three different int8 graphs (entropy used to fall back to MinMax).
    work = bundle.parent / "model" / "export"
    blobs = {m: (work / f"int8-{m}.onnx").read_bytes() for m in cal["valid"]}
    assert len(set(blobs.values())) == 3
    assert (bundle / "model.onnx").read_bytes() == blobs[cal["chosen"]]
    assert data["training"]["arch"] == "resnet18" and data["training"]["pretrained"] is False
    assert data["training"]["data"]["splits"]["test"]["frames"] == parity["frames"]
    assert "validation" in data["threshold_rule"]


def test_fastai_pipeline_matches_the_exported_graph(trained: Path, indexed: Path):
    """fastai's DataLoaders (PIL, /255, Normalize) and the baked graph see the same pixels."""
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import load_learner

    from training.export import onnx_probs, onnx_session

    df, _ = load_index(indexed)
    test = df[df["split"] == "test"].reset_index(drop=True)
    learn = load_learner(trained / "learner.pkl", cpu=True)
    learn.remove_cb(ProgressCallback)
    preds, _ = learn.get_preds(dl=learn.dls.test_dl(test))
    onnx_p = onnx_probs(onnx_session(trained / "export" / "fp32.onnx"), list(test["path"]), 3)
    assert np.abs(preds[:, 0].numpy() - onnx_p).max() < 1e-4


def test_evaluate_report_holds_the_metrics(report: Path):
    metrics = json.loads((report / "metrics.json").read_text())
    text = (report / "report.md").read_text()
    assert [m["kind"] for m in metrics["models"]] == ["fastai", "onnx"]
    for m in metrics["models"]:
        assert m["name"] in text
        recall = m["at_threshold"]["recall"]
        assert f"{recall:.4f}" in text
        assert len(m["sweep"]) >= 19
        assert {"precision", "recall", "f1"} <= set(m["per_class"]["meteor"])
        assert m["recall_by_peak"], "the simulator's meteor_peak must give a brightness table"
        # Every simulated meteor has a segment and a peak, so every one gets an SNR bin, and
        # the SNR table counts the same detections as the peak table.
        by_snr = m["recall_by_snr"]
        assert sum(b["meteors"] for b in by_snr) == metrics["meteors"]
        assert (sum(b["detected"] for b in by_snr)
                == sum(b["detected"] for b in m["recall_by_peak"]) == m["at_threshold"]["tp"])
        # The blame for the misses, by SNR too: the same meteor frames as by peak.
        missed = m["missed"]["at_threshold"]
        assert missed["rows_by_snr"][0] == missed["rows"][0]
        assert sum(r["meteors"] for r in missed["rows_by_snr"][1:]) == metrics["meteors"]
    assert "signal-to-noise ratio" in text
    assert "The same meteor frames by signal-to-noise ratio" in text
    # The simulator's truth CSV names its camera by its folder: one camera here, every frame.
    for m in metrics["models"]:
        assert [(g["group"], g["frames"]) for g in m["by_camera"]] == [("sim", metrics["frames"])]
    assert "By camera" in text
    import pandas as pd

    scores = pd.read_csv(report / "scores.csv")
    meteor = scores[scores["label"] == "meteor"]
    assert meteor["snr"].notna().all() and (meteor["snr"] > 0).all()
    assert scores.loc[scores["label"] != "meteor", "snr"].isna().all()
    assert len(scores) == 2 * len(scores["frame"].unique())  # one row per model and frame
    for heading in ("Threshold sweep", "Confusion matrix", "peak brightness", "Grad-CAM",
                    "Candidate windows: the recall ceiling"):
        assert heading in text
    # m1 at 64 px shows 16 windows; every simulated meteor has its segment in the index.
    coverage = metrics["candidate_coverage"]
    assert coverage["windows_shown"] == 16 and coverage["meteors"] == metrics["meteors"] > 0
    shares = [coverage["covered"][str(n)] for n in coverage["counts"]]
    assert shares == sorted(shares) and 0 < shares[-1] <= 1  # more windows never hold fewer
    # Where the meteors are lost at the model's threshold: each one once, under one reason.
    uncovered = round(coverage["meteors"] * (1 - coverage["covered"]["16"]))
    for m in metrics["models"]:
        every = m["missed"]["at_threshold"]["rows"][0]
        assert every["bin"] == "all" and every["meteors"] == metrics["meteors"]
        assert every["detected"] == m["at_threshold"]["tp"]
        assert every["detected"] + sum(every[c] for c in MISS_CAUSES) == every["meteors"]
        assert every["under_stage_floor"] == 0  # neither model has a trail stage
        assert every["outside_windows"] <= uncovered
    assert "Where the meteors are lost" in text
    from PIL import Image

    for name in ("roc.png", "pr.png", "confusion.png", "top-losses-0.png", "top-losses-1.png",
                 "cam.png", "coverage.png"):
        with Image.open(report / name) as image:
            assert image.size[0] > 100
    assert "<table>" in (report / "report.html").read_text()


def test_coverage_command_measures_other_mosaics_on_the_same_frames(indexed: Path, report: Path,
                                                                    tmp_path: Path):
    metrics = json.loads((report / "metrics.json").read_text())
    same, wider = tmp_path / "same.json", tmp_path / "wider.json"
    base = ["coverage", "--data", str(indexed), "--split", "test", "--no-progress"]
    assert main([*base, "--json", str(same)]) == 0
    # The index's own spec gives the evaluate report's numbers.
    got = json.loads(same.read_text())
    assert got["covered"] == metrics["candidate_coverage"]["covered"]
    assert main([*base, "--tiles", "2", "--json", str(wider)]) == 0
    two = json.loads(wider.read_text())
    assert two["windows_shown"] == 4 and two["preprocessing"]["tiles"] == 2
    assert two["meteors"] == got["meteors"]
    assert main([*base, "--tiles", "5"]) == 2  # 64 px is not divisible into 5 tiles


def test_bundle_weights_come_back_for_fine_tuning(bundle: Path, indexed: Path, trained: Path):
    """--init-from a bundle: dequantized, unfolded weights reproduce the trained network."""
    import torch

    from training._model import Deployable, build_model
    from training._onnx_weights import load_from_bundle, recalibrate_bn
    from training.export import onnx_probs, onnx_session, torch_probs

    df, _ = load_index(indexed)
    paths = list(df[df["split"] == "test"]["path"])
    model = build_model("resnet18")
    assert "bundle" in load_from_bundle(model, bundle)
    net = Deployable(model.eval(), 3)
    p_torch = torch_probs(net, paths, 3)
    # Only the weights' int8 rounding separates them from the fp32 network they came from
    # (the int8 graph also rounds activations, so it is further off).
    p_fp32 = onnx_probs(onnx_session(trained / "export" / "fp32.onnx"), paths, 3)
    # Per-channel int8 weights move a tiny 2-epoch model's probabilities by up to ~0.04 (seen
    # 0.028 at most on one run of this test, 0.024 on average with 0.035 at most on another:
    # the training is not deterministic, nor is its rounding); a wrong unfolding or
    # transposition moves them by far more.
    assert np.abs(p_torch - p_fp32).max() < 0.06
    assert np.abs(p_torch - p_fp32).mean() < 0.035
    # After BatchNorm re-estimation, training mode (batch statistics) computes the same function
    # in the body, so fine-tuning starts from the bundle's behaviour.
    images = np.stack([load_input(p, 3) for p in paths]).transpose(0, 3, 1, 2)
    x = (torch.from_numpy(images.astype(np.float32)) - net.shift) / net.scale
    assert recalibrate_bn(model, [x]) == 20
    with torch.no_grad():
        model.eval()
        eval_p = torch.softmax(model(x), 1)
        model.train()
        model[1].eval()  # the head's dropout is not what this checks
        train_p = torch.softmax(model(x), 1)
    assert torch.allclose(eval_p, train_p, atol=1e-3)


def test_fine_tune_from_bundle(bundle: Path, indexed: Path, tmp_path: Path):
    out = tmp_path / "tuned"
    rc = main(["train", "--data", str(indexed), "--out", str(out), "--init-from", str(bundle),
               "--epochs", "1", "--freeze-epochs", "0", "--lr-find", "--balance", "weighted",
               "--batch-size", "16", "--threads", THREADS, "--quiet"])
    assert rc == 0
    meta = json.loads((out / "train.json").read_text())
    assert meta["started_from"].startswith("bundle")
    assert meta["schedule"].startswith("fine_tune")
    assert meta["balance"] == "weighted" and len(meta["class_weights"]) == 2
    # lr_find ran, its suggestion was used and its plot kept
    assert math.isfinite(meta["lr_find_suggestion"]) and meta["lr"] == meta["lr_find_suggestion"]
    assert (out / "lr_find.png").is_file()
    assert (out / "history.csv").read_text().count("\n") == 2  # header + one epoch


def test_fine_tune_with_hard_negatives_mined_by_the_bundle(bundle: Path, indexed: Path,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    # --out relative to the working directory: fastai's own paths are relative to it too
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mined"
    rc = main(["train", "--data", str(indexed), "--out", "mined", "--init-from", str(bundle),
               "--mine-from", str(bundle), "--hard-share", "0.5", "--epochs", "1",
               "--freeze-epochs", "0", "--no-lr-find", "--lr", "1e-3", "--balance",
               "undersample", "--neg-ratio", "2", "--batch-size", "16", "--threads", THREADS,
               "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [TRAIN_META, WEIGHTS_NAME, LEARNER_NAME, "history.csv"])
    meta = json.loads((out / "train.json").read_text())
    df, _ = load_index(indexed)
    negatives = int(((df["split"] == "train") & (df["label"] != "meteor")).sum())
    mined = meta["hard_negatives"]
    assert mined["negatives_scored"] == negatives and mined["hard_share"] == 0.5
    assert mined["model"] == load_bundle(bundle).manifest.name
    # The lineage: how the bundle it started from was trained, for the model card.
    parent_training = json.loads((bundle / "manifest.json").read_text())["training"]
    assert meta["parent"]["schedule"] == parent_training["schedule"]
    assert meta["parent"]["version"] == "0.0.1"
    # Mining needs the balanced sampler, and a model that reads this dataset's preprocessing.
    assert main(["train", "--data", str(indexed), "--out", str(tmp_path / "x"), "--mine-from",
                 str(bundle), "--balance", "weighted", "--epochs", "1", "--quiet"]) == 2
    from tests.tinymodel import make_tiny_bundle

    other = make_tiny_bundle(tmp_path / "g1-bundle")
    assert main(["train", "--data", str(indexed), "--out", str(tmp_path / "y"), "--mine-from",
                 str(other), "--epochs", "1", "--no-lr-find", "--quiet"]) == 2


def test_model_card_is_rendered_from_the_bundle_and_its_report(bundle: Path, report: Path,
                                                               tmp_path: Path):
    import shutil

    from training.model_card import main as card_main

    card_bundle = tmp_path / "bundle"
    shutil.copytree(bundle, card_bundle)
    assert card_main([str(card_bundle), "--report", f"test nights={report}"]) == 0
    card = (card_bundle / "README.md").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    onnx = [m for m in metrics["models"] if m["kind"] == "onnx"][-1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert f"recall **{onnx['at_threshold']['recall']:.3f}**" in card
    assert f"{onnx['at_threshold']['fp_per_1000']:.1f} false-positive frames per 1,000" in card
    assert f"preprocessing `{manifest['preprocessing']['id']}`" in card
    assert "Recall by the meteor's peak brightness" in card
    assert "Recall by the meteor's signal-to-noise ratio" in card
    assert "By sky condition:" in card and "By camera:" in card
    assert "Status against the project's target" in card and "target recall 0.95" in card
    assert load_bundle(card_bundle).manifest.sha256 == manifest["sha256"]  # still a bundle
    with pytest.raises(SystemExit):
        card_main([str(card_bundle), "--report", "no-equals-sign"])


def test_alert_threshold_budgets_pipeline_alerts(bundle: Path, indexed: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    before = load_bundle(copy).manifest
    out = tmp_path / "alerts.json"
    rc = main(["alert-threshold", "--bundle", str(copy), "--data", str(indexed),
               "--rule", "fp:0.05", "--report", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    after = load_bundle(copy).manifest  # still a valid bundle, same ONNX
    assert after.sha256 == before.sha256
    assert after.recommended_threshold == report["threshold"]
    assert after.metrics["alerts"]["rule"] == "fp:0.05"
    df, _ = load_index(indexed)
    valid_frames = int((df["split"] == "valid").sum())
    assert report["valid"]["pipeline"]["frames"] == valid_frames
    # Alert scores are the model's scores with suppressed frames zeroed: the pipeline can never
    # alert more, nor find more meteors, than the classifier at any threshold.
    for row in report["sweep_valid"]:
        assert row["pipeline"]["fp"] <= row["classifier"]["fp"]
        assert row["pipeline"]["tp"] <= row["classifier"]["tp"]
    test = report["test"]
    assert test["pipeline"]["frames"] == int((df["split"] == "test").sum())
    assert test["pipeline"]["fp"] <= test["classifier"]["fp"]
    # The per-condition breakdown adds up to the whole and agrees with the headline figures.
    for split in (report["valid"], test):
        by = split["by_condition"]
        assert {k: by["all"]["pipeline"][k] for k in ("tp", "fp")} == \
            {k: split["pipeline"][k] for k in ("tp", "fp")}
        parts = [v for k, v in by.items() if k != "all"]
        assert sum(v["pipeline"]["frames"] for v in parts) == by["all"]["pipeline"]["frames"]
        assert sum(v["satellite"]["frames"] for v in parts) == by["all"]["satellite"]["frames"]
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["threshold_rule"].startswith("fp:0.05 on validation-night pipeline alerts")
    # More --data indexes add validation nights; the same nights twice are refused.
    assert main(["alert-threshold", "--bundle", str(copy), "--data", str(indexed), "--data",
                 str(indexed), "--dry-run", "--no-test"]) == 2
    # ...and the model card shows what the daemon would alert on.
    from training.model_card import render

    card = render(copy, {})
    assert "What the daemon alerts on" in card
    assert f"| model + suppression (alerts) | {test['pipeline']['recall']:.4f}" in card


def test_trail_stage_bundle_scores_the_same_in_evaluation_and_on_the_pi(bundle: Path,
                                                                         indexed: Path,
                                                                         tmp_path: Path):
    from edge.model import open_scorer
    from training.evaluate import score_bundle

    out, report = tmp_path / "staged", tmp_path / "stage.json"
    # min-score 0: every frame of the tiny set is a candidate (one epoch scores little high).
    rc = main(["trail-stage", "--data", str(indexed), "--bundle", str(bundle), "--out",
               str(out), "--version", "0.0.2", "--min-score", "0", "--report", str(report)])
    assert rc == 0
    before, after = load_bundle(bundle).manifest, load_bundle(out).manifest
    assert after.sha256 == before.sha256 and after.version == "0.0.2"  # same ONNX
    assert after.recommended_threshold == before.recommended_threshold
    df, _ = load_index(indexed)
    train, valid = df[df["split"] == "train"], df[df["split"] == "valid"]
    stage = after.trail_stage
    assert stage is not None and stage.fitted_on["candidates"] == len(train)
    assert stage.fitted_on["meteors"] == int((train["label"] == "meteor").sum())
    assert "alerts" not in after.metrics  # measured without the stage: not carried over
    gain = json.loads(report.read_text())["valid"]
    assert gain["frames"] == len(valid) and gain["candidates"] == len(valid)
    # Evaluation (cached model inputs, the stage from the frames) gives the Pi's score.
    rows = valid.reset_index(drop=True)
    cached = score_bundle(out, rows, None, 3, None, False, 1).probs
    scorer = open_scorer(out)
    on_pi = [scorer.score(read_gray(r["previous"]), read_gray(r["frame"]))
             for _, r in rows.iterrows()]
    assert np.allclose(cached, on_pi, atol=1e-5)
    plain = score_bundle(bundle, rows, None, 3, None, False, 1).probs
    assert not np.allclose(cached, plain)  # the stage did re-score them
    # The network's own score is kept beside the staged one, from frames as from the cache.
    from_frames = score_bundle(out, rows, None, 3, None, True, 1)
    assert np.allclose(from_frames.probs, cached, atol=1e-5)
    assert np.allclose(from_frames.network, plain, atol=1e-5)
    assert score_bundle(bundle, rows, None, 3, None, True, 1).network is None
    assert np.all(cached >= 0.0)
    # ...and `evaluate --alerts` runs those nights through the Pi's pipeline at the threshold.
    report_dir = tmp_path / "report"
    rc = main(["evaluate", "--data", str(indexed), "--model", str(out), "--split", "valid",
               "--out", str(report_dir), "--alerts", "--no-coverage", "--gallery", "0",
               "--threshold", "0.3"])
    assert rc == 0
    model = json.loads((report_dir / "metrics.json").read_text())["models"][0]
    alerts, alone = model["alerts"], model["at_threshold"]
    assert alerts["frames"] == len(valid) and alerts["threshold"] == 0.3
    assert alerts["tp"] <= alone["tp"] and alerts["fp"] <= alone["fp"]  # rules only remove
    # The best alert recall within each budget: never below the run threshold's own when that
    # one fits the budget, never over the budget itself.
    for budget, best in alerts["best_within"].items():
        if alerts["fp_per_1000"] <= float(budget):
            assert best is not None and best["recall"] >= alerts["recall"]
        if best is not None:
            assert best["fp_per_1000"] <= float(budget) and best["frames"] == len(valid)
    text = (report_dir / "report.md").read_text()
    assert "through the edge pipeline" in text and "within a false-alert budget" in text
    # scores.csv holds the numbers the report counted: every frame once, and its alert scores
    # give back the alerts' confusion counts at the run threshold.
    import pandas as pd

    scores = pd.read_csv(report_dir / "scores.csv")
    assert len(scores) == len(valid) and set(scores["frame"]) == set(valid["frame"])
    assert np.allclose(scores["score"], cached, atol=1e-5)  # the staged score, in index order
    assert np.allclose(scores["network"], plain, atol=1e-5)  # and the network's own beside it
    meteor = scores["label"] == "meteor"
    alerted = scores["alert_score"] >= 0.3
    assert int((meteor & alerted).sum()) == alerts["tp"]
    assert int((~meteor & alerted).sum()) == alerts["fp"]
    assert int((meteor & (scores["score"] >= 0.3)).sum()) == alone["tp"]
    assert (scores["alert_score"] <= scores["score"] + 1e-6).all()  # the rules only remove
    # --gallery 0: no top-loss figure at all (not an empty one), and no heading for it.
    assert not list(report_dir.glob("top-losses-*.png")) and "Top losses" not in text


def test_trail_classifier_bundle_scores_the_same_in_evaluation_and_on_the_pi(
        bundle: Path, indexed: Path, tmp_path: Path):
    import onnxruntime as ort

    from edge.model import open_scorer
    from edge.trail_classifier import MODEL_FILE, TrailClassifier
    from training.evaluate import score_bundle
    from training.model_card import render
    from training.trail_classifier import CACHE_DIR, Examples, examples_dir

    out, report_path = tmp_path / "classified", tmp_path / "classifier.json"
    # 12 epochs: on these ~600 candidates 3 left the trail's weight <= 0 (a refusal) in 3 of 4
    # seeds, 12 gave 0.55-0.90 in 3 of 3.
    args = ["trail-classifier", "--data", str(indexed), "--bundle", str(bundle), "--out",
            str(out), "--version", "0.0.3", "--epochs", "12", "--neg-ratio", "3", "--workers",
            "2", "--threads", THREADS, "--report", str(report_path)]
    assert main(args) == 0
    before, after = load_bundle(bundle).manifest, load_bundle(out).manifest
    assert after.sha256 == before.sha256 and after.version == "0.0.3"  # same network
    stage = after.trail_stage
    assert isinstance(stage, TrailClassifier) and (out / MODEL_FILE).is_file()
    assert stage.trail_weight > 0 and "alerts" not in after.metrics
    report = json.loads(report_path.read_text())
    df, _ = load_index(indexed)
    train, valid = df[df["split"] == "train"], df[df["split"] == "valid"]
    fitted = stage.fitted_on
    assert fitted["frames"] == len(train) and fitted["candidates"] > 0
    assert fitted["meteor_frames"] == int((train["label"] == "meteor").sum())
    assert fitted["onnx_max_abs_logit_diff"] <= 1e-3
    assert [h["epoch"] for h in report["history"]] == list(range(12))
    gain = report["valid"]
    assert gain["frames"] == len(valid)
    for score in ("model_alone", "trail_alone", "staged"):
        assert set(gain[score]) == {"recall_within_3_per_1000", "recall_within_10_per_1000"}
    # The examples are cached: a second fit on the same frames reads them back.
    caches = list((indexed / CACHE_DIR).glob("*/train.npz"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    assert main([*args[:6], str(tmp_path / "again"), *args[7:]]) == 0
    assert caches[0].stat().st_mtime_ns == stamp
    # Another candidate search is the bundle's (the Pi runs it) and gets its own examples.
    assert main([*args[:6], str(tmp_path / "narrow"), *args[7:], "--seeds", "12",
                 "--trace-level", "1.2", "--max-candidates", "4", "--soft-fwhm", "0"]) == 0
    narrow = load_bundle(tmp_path / "narrow").manifest.trail_stage
    assert isinstance(narrow, TrailClassifier)
    assert (narrow.candidates.seeds, narrow.candidates.trace_level,
            narrow.candidates.max_candidates, narrow.candidates.soft_fwhm_px) == (12, 1.2, 4, 0.0)
    assert (stage.candidates.seeds, stage.candidates.soft_fwhm_px) == (32, 6.0)
    assert len(list((indexed / CACHE_DIR).glob("*/train.npz"))) == 2
    # Strips sampled at one point along the line (bundles up to 3.5.0; the default is the mean
    # over each sample's stretch): the bundle says so (the Pi cuts them alike), and they are
    # other examples.
    assert main([*args[:6], str(tmp_path / "point"), *args[7:], "--strip-sampling", "point"]) == 0
    point = load_bundle(tmp_path / "point").manifest.trail_stage
    assert isinstance(point, TrailClassifier)
    assert (stage.strip_sampling, point.strip_sampling) == ("mean", "point")
    assert len(list((indexed / CACHE_DIR).glob("*/train.npz"))) == 3
    assert "each sample the mean over its stretch" in render(out, {}, {})
    assert "each sample the mean" not in render(tmp_path / "point", {}, {})
    # --members 2: the classifiers of seeds 0 and 1 as one graph scoring their mean logit.
    assert main([*args[:6], str(tmp_path / "pair"), *args[7:], "--members", "2"]) == 0
    assert main([*args[:6], str(tmp_path / "seed1"), *args[7:], "--seed", "1"]) == 0
    pair = load_bundle(tmp_path / "pair").manifest.trail_stage
    # Seed 0's member was cached by the first fit: only seed 1 was trained for the pair.
    assert len(list(caches[0].parent.glob("members/*.onnx"))) == 2
    assert (pair.fitted_on["members"], pair.fitted_on["seeds"]) == (2, [0, 1])
    assert "mean logit of 2 small CNNs" in render(tmp_path / "pair", {}, {})
    search = {"candidates": pair.candidates.to_dict(),
              "streak_params": dataclasses.asdict(pair.streak_params)}
    examples = Examples.load(examples_dir(indexed, valid.reset_index(drop=True), None, search)
                             / "valid.npz")
    feeds = {"strips": examples.strips.astype(np.float32), "scalars": examples.scalars}
    z = {name: ort.InferenceSession(str(tmp_path / name / MODEL_FILE)).run(None, feeds)[0]
         for name in ("classified", "seed1", "pair")}
    assert np.allclose(z["pair"], (z["classified"] + z["seed1"]) / 2, atol=1e-4)
    assert not np.allclose(z["classified"], z["seed1"], atol=1e-2)  # two different members
    # Evaluation (cached network inputs, the classifier from the frames, two workers) gives the
    # Pi's score, frame by frame.
    rows = valid.reset_index(drop=True)
    evaluated = score_bundle(out, rows, None, 3, None, False, 1, workers=2)
    scorer = open_scorer(out)
    on_pi = [scorer.score(read_gray(r["previous"]), read_gray(r["frame"]))
             for _, r in rows.iterrows()]
    assert np.allclose(evaluated.probs, on_pi, atol=1e-5)
    assert np.allclose(evaluated.network, score_bundle(bundle, rows, None, 3, None, False,
                                                       1).probs, atol=1e-5)
    # A bundle index of another preprocessing is refused with a message, not a traceback.
    assert main(["trail-classifier", "--data", str(indexed), "--bundle", str(bundle), "--out",
                 str(tmp_path / "x"), "--epochs", "0"]) == 2
