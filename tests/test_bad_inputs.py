"""Every bad input to every tool ends in one sentence (issue #17).

Each case runs a tool's `main(argv)` in-process and checks what a user sees: exit status 2, no
Python traceback, one `error:` line on stderr that names the file or option (the expected words
are part of each case), and nothing written or changed where the input was refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid import bench_backends, design, evaluate, experiment, probe, report, subgroups, train, tta_check

TOOLS = {"train": train, "evaluate": evaluate, "experiment": experiment, "report": report,
         "bench_backends": bench_backends, "design": design, "probe": probe, "subgroups": subgroups,
         "tta_check": tta_check}
TINY = ["--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.1", "--stem-stride", "2", "--input-size", "16",
        "--embed-dim", "16", "--batch-size", "32", "--n-bootstrap", "0", "--eval-max-samples", "32", "--no-figures",
        "--threads", "1", "--quiet"]


class Planted:
    """A pickle payload: loading it would create the file named in `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of broken data files, each named after what is wrong with it."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (80, 28, 28), dtype=np.uint8), np.arange(80) % 2
    _npz(root / "good.npz", images=images, labels=labels)
    (root / "empty.npz").write_bytes(b"")
    good = (root / "good.npz").read_bytes()
    (root / "truncated.npz").write_bytes(good[: len(good) // 2])
    (root / "text.npz").write_text("images,labels\n")
    np.save(root / "array.npy", images)
    os.replace(root / "array.npy", root / "npy_renamed.npz")
    _npz(root / "wrong_keys.npz", x=images, y=labels)
    _npz(root / "rank2.npz", images=images[:, 0], labels=labels)
    _npz(root / "two_channels.npz", images=np.stack([images] * 2, -1), labels=labels)
    _npz(root / "five_channels.npz", images=np.stack([images] * 5, -1), labels=labels)
    floats = images / 255.0
    floats[0, 0, 0] = 1.02  # [0, 1] images with one overshoot: neither 0-1 nor 0-255
    _npz(root / "float_ambiguous.npz", images=floats, labels=labels)
    with_nan = images / 255.0
    with_nan[3, 3, 3] = np.nan
    _npz(root / "nan_pixels.npz", images=with_nan, labels=labels)
    with_inf = images.astype(np.float32)
    with_inf[3, 3, 3] = np.inf
    _npz(root / "inf_pixels.npz", images=with_inf, labels=labels)
    _npz(root / "negative_labels.npz", images=images, labels=-labels)
    _npz(root / "float_labels.npz", images=images, labels=labels + 0.5)
    _npz(root / "five_classes.npz", images=images, labels=np.arange(80) % 5)
    _npz(root / "short_labels.npz", images=images, labels=labels[:-1])
    _npz(root / "one_class.npz", images=images, labels=np.zeros(80, int))
    _npz(root / "no_images.npz", images=images[:0], labels=labels[:0])
    _npz(root / "stray_label.npz", images=images, labels=np.r_[labels[:-1], 7], label_names=np.array(["a", "b"]))
    _npz(root / "label_gap.npz", images=images, labels=labels * 3)
    _npz(root / "three_images.npz", images=images[:3], labels=labels[:3])
    split = {f"{s}_{k}": v for s in ("train", "val", "test")
             for k, v in (("images", images), ("labels", labels if s != "val" else np.zeros(80, int)))}
    _npz(root / "one_class_validation.npz", **split)
    torch.save({"model": Planted(root / "PWNED")}, root / "planted.pt")
    return root


def run_tool(tool: str, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = TOOLS[tool].main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def snapshot(*folders: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for f in folders if f.exists() for p in f.rglob("*")}


def assert_refused(code: int, err: str, *words: str) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert code == 2 and len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert "weights_only=False" not in err and "allow_pickle=True" not in err  # never advise turning safety off


TRAIN_DATA = [  # (file in `bad`, words the sentence must hold)
    ("missing.npz", ["missing.npz", "not found"]),
    ("empty.npz", ["empty.npz"]), ("truncated.npz", ["truncated.npz"]), ("text.npz", ["text.npz"]),
    ("npy_renamed.npz", ["single array"]), ("wrong_keys.npz", ["has keys"]),
    ("rank2.npz", ["shape"]), ("two_channels.npz", ["shape"]), ("five_channels.npz", ["shape"]),
    ("float_ambiguous.npz", ["ambiguous", "np.clip"]), ("nan_pixels.npz", ["NaN"]), ("inf_pixels.npz", ["NaN or inf"]),
    ("negative_labels.npz", ["negative"]), ("float_labels.npz", ["whole numbers"]),
    ("short_labels.npz", ["79 labels for 80 images"]), ("one_class.npz", ["two classes"]),
    ("no_images.npz", ["empty"]), ("stray_label.npz", ["[7]", "named classes"]), ("label_gap.npz", ["no image"]),
    ("three_images.npz", ["training split"]), ("one_class_validation.npz", ["validation split"]),
]


@pytest.mark.parametrize("name,words", TRAIN_DATA, ids=[c[0] for c in TRAIN_DATA])
def test_train_refuses_bad_data(bad, tmp_path, capsys, name, words):
    out = tmp_path / "run"
    code, err = run_tool("train", [*TINY, "--dataset", str(bad / name), "--out", str(out)], capsys)
    assert_refused(code, err, *words)
    assert not out.exists()


TRAIN_OPTIONS = [
    (["--epochs", "0"], ["--epochs"]), (["--batch-size", "1"], ["--batch-size", "at least 2"]),
    (["--batch-size", "0"], ["--batch-size"]), (["--lr", "0"], ["--lr", "above 0"]), (["--lr", "-1"], ["--lr"]),
    (["--lr", "nan"], ["--lr"]), (["--n-qubits", "0"], ["--n-qubits"]), (["--n-qubits", "40"], ["--n-qubits", "16"]),
    (["--input-size", "4"], ["--input-size"]), (["--max-train-samples", "1"], ["--max-train-samples"]),
    (["--dropout", "1.5"], ["--dropout"]), (["--epochs", "two"], ["--epochs"]),
    (["--algorithm", "nosuch"], ["--algorithm", "erm"]), (["--tta", "nosuch"], ["--tta", "adabn"]),
    (["--backend", "nosuch"], ["--backend", "statevector"]), (["--dataset", "nosuchmnist"], ["pneumoniamnist"]),
    (["--size", "100"], ["size 100", "28"]), (["--selection", "best"], ["--selection", "last"]),
    (["--q-feature-reps", "0"], ["--q-feature-reps", "at least 1"]), (["--feature-map", "rx"], ["--feature-map", "ry"]),
    # refused as training needs an exact backend, before IBM Runtime looks for an account (it used to advise
    # --ibm-backend, which train does not have)
    (["--backend", "ibm_runtime"], ["exact backend", "hybrid.evaluate"]),
    (["--backend", "aer_noisy"], ["exact backend"]), (["--backend", "torch_noisy"], ["exact backend"]),
    # refused before the run directory is made (it used to be left holding config.json and centers.json)
    (["--algorithm-hparams", "foo=1"], ["'foo=1'", "its hyperparameters are: none"]),
    (["--algorithm", "coral", "--algorithm-hparams", "coral_weight=lots"], ["coral_weight expects a number"]),
]


@pytest.mark.parametrize("argv,words", TRAIN_OPTIONS, ids=[" ".join(c[0]) for c in TRAIN_OPTIONS])
def test_train_refuses_bad_options(tmp_path, capsys, data_root, argv, words):
    out = tmp_path / "run"
    code, err = run_tool("train", [*TINY, "--data-root", str(data_root), *argv, "--out", str(out)], capsys)
    assert_refused(code, err, *words)
    assert not out.exists()


def test_train_refuses_an_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    code, err = run_tool("train", [*TINY, "--out", str(target)], capsys)
    assert_refused(code, err, "is a file")
    assert target.read_text() == "keep me"
    if os.geteuid() == 0:  # root writes anywhere a permission allows; sysfs refuses new folders even to root
        blocked = Path("/sys/hybrid-qdg-test")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        blocked = locked / "run"
    code, err = run_tool("train", [*TINY, "--out", str(blocked)], capsys)
    assert_refused(code, err, str(blocked.parent) if os.geteuid() else str(blocked))
    assert not blocked.exists()


def test_a_finished_run_is_never_clobbered_without_overwrite(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    code, err = run_tool("train", [*TINY, "--out", str(run)], capsys)
    assert_refused(code, err, "finished run", "--overwrite", "--resume")
    assert snapshot(run) == before
    (run / "eval_old.json").write_text("{}")
    code, err = run_tool("train", [*TINY, "--dataset", "nosuchmnist", "--out", str(run), "--overwrite"], capsys)
    assert_refused(code, err, "nosuchmnist")  # bad data: the old run is still whole
    assert snapshot(run).keys() == before.keys() | {run / "eval_old.json"}


def test_a_folder_of_other_files_or_a_study_is_never_trained_into(tmp_path, capsys):
    """A report.md that is not a run's (no config.json) used to be replaced without a word; a study directory was
    called "a finished run" and --overwrite then replaced the study's report with one run's."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "report.md").write_text("my draft")
    code, err = run_tool("train", [*TINY, "--out", str(folder)], capsys)
    assert_refused(code, err, "holds report.md but no run", "--overwrite")
    assert sorted(p.name for p in folder.iterdir()) == ["report.md"] and (folder / "report.md").read_text() == "my draft"
    study = tmp_path / "study"
    study.mkdir()
    for name in ("study.json", "report.json", "report.md"):
        (study / name).write_text("{}")
    for flags in ([], ["--overwrite"], ["--resume"]):
        code, err = run_tool("train", [*TINY, "--out", str(study), *flags], capsys)
        assert_refused(code, err, "is a study directory")
        assert sorted(p.name for p in study.iterdir()) == ["report.json", "report.md", "study.json"]
    # --resume without --out used to name a fresh time-stamped folder that could not exist
    code, err = run_tool("train", [*TINY, "--resume"], capsys)
    assert_refused(code, err, "--resume continues a run: name its directory with --out RUN_DIR")


def test_resume_refuses_a_tampered_config(tiny_run, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    saved = json.loads((run / "config.json").read_text())
    for tampered, word in ((saved | {"colour": "blue"}, "unknown config fields"),
                           (saved | {"epochs": "12"}, "epochs='12'"), (saved | {"lr": -1.0}, "--lr")):
        (run / "config.json").write_text(json.dumps(tampered))
        before = snapshot(run)
        code, err = run_tool("train", [*TINY, "--out", str(run), "--resume"], capsys)
        assert_refused(code, err, "config.json", word)
        assert snapshot(run) == before


def test_resume_from_a_planted_last_checkpoint_is_refused_before_it_runs(tiny_run, bad, tmp_path, capsys, data_root):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copy(bad / "planted.pt", run / "last.pt")
    argv = ["--epochs", "1", "--max-train-samples", "300", "--width-mult", "0.35", "--stem-stride", "2",  # tiny_run's
            "--n-bootstrap", "0", "--batch-size", "64", "--quiet", "--data-root", str(data_root),
            "--out", str(run), "--resume"]
    code, err = run_tool("train", argv, capsys)
    assert_refused(code, err, "last.pt", "refused")
    assert not (bad / "PWNED").exists()


def test_options_this_run_never_reads_are_named_not_dropped_silently(tmp_path, data_root, caplog):
    from hybrid import train
    from hybrid.config import TrainConfig, unused_options

    assert unused_options(TrainConfig()) == {}
    assert unused_options(TrainConfig(quantum=True, q_train_shots=1024, q_shot_noise="joint")) == {}
    assert unused_options(TrainConfig(q_shot_noise="joint")) == {"--q-shot-noise": "no --q-train-shots (training "
                                                                                   "is exact)"}
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="hybrid.train"):
        assert train.main([*TINY, "--no-quantum", "--n-qubits", "8", "--algorithm", "erm", "--dann-weight", "5",
                           "--train-centers", "a", "--data-root", str(data_root), "--out", str(out)]) == 0
    assert "--n-qubits is ignored: no quantum layer (--no-quantum)" in caplog.text
    assert "--dann-weight is ignored: --algorithm erm, not dann" in caplog.text
    assert "--train-centers is ignored: pneumoniamnist is not a multi-center .npz" in caplog.text


def test_weights_path_with_a_pickle_payload_is_refused_before_it_runs(bad, tmp_path, capsys, data_root):
    out = tmp_path / "run"
    argv = [*TINY, "--width-mult", "1.0", "--pretrained", "--weights-path", str(bad / "planted.pt"),
            "--data-root", str(data_root), "--out", str(out)]
    code, err = run_tool("train", argv, capsys)
    assert_refused(code, err, "planted.pt", "refused")
    assert not (bad / "PWNED").exists()
    assert not out.exists()  # refused before the run directory is made (config.json and centers.json were left)


def test_a_missing_weights_file_or_init_run_leaves_no_run_directory(tmp_path, capsys, data_root):
    for flags in (["--width-mult", "1.0", "--pretrained", "--weights-path", str(tmp_path / "nosuch.pth")],
                  ["--init-from", str(tmp_path / "nosuch_run")]):
        out = tmp_path / "run"
        code, err = run_tool("train", [*TINY, "--data-root", str(data_root), *flags, "--out", str(out)], capsys)
        assert_refused(code, err, "nosuch")
        assert not out.exists(), sorted(p.name for p in out.iterdir())


EVAL_DATA = [
    ("missing.npz", ["missing.npz", "no such file or folder"]), ("missing_folder", ["no such file or folder"]),
    ("empty.npz", ["empty.npz"]), ("truncated.npz", ["truncated.npz"]), ("text.npz", ["text.npz"]),
    ("npy_renamed.npz", ["single array"]), ("wrong_keys.npz", ["has keys"]), ("rank2.npz", ["shape"]),
    ("five_channels.npz", ["shape"]), ("float_ambiguous.npz", ["ambiguous"]), ("nan_pixels.npz", ["NaN"]),
    ("negative_labels.npz", ["negative"]), ("float_labels.npz", ["whole numbers"]),
    ("five_classes.npz", ["2 classes"]), ("short_labels.npz", ["79 labels"]), ("no_images.npz", ["empty"]),
]


@pytest.mark.parametrize("name,words", EVAL_DATA, ids=[c[0] for c in EVAL_DATA])
def test_evaluate_refuses_bad_data(tiny_run, bad, capsys, name, words):
    before = snapshot(tiny_run)
    code, err = run_tool("evaluate", ["--run", str(tiny_run), "--data", str(bad / name)], capsys)
    assert_refused(code, err, *words)
    assert snapshot(tiny_run) == before


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _folder(root: Path, problem: str) -> Path:
    """A <center>/<class>/*.png folder of the tiny run's classes with one `problem`."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(("normal", "pneumonia")):
        for i in range(3):
            _png(root / "hospital" / name / f"{i}.png", rng.integers(0, 255, (28, 28), dtype=np.uint8))
    cls = root / "hospital" / "normal"
    if problem == "non_image":
        (cls / "notes.txt").write_text("scanned on a Tuesday")
    elif problem == "empty_class":
        _png(root / "clinic2" / "normal" / "0.png", np.zeros((28, 28), np.uint8))
        (root / "clinic2" / "pneumonia").mkdir()
    elif problem == "corrupt_png":
        (cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    elif problem == "mixed_sizes":
        _png(cls / "big.png", np.zeros((40, 40), np.uint8))
    elif problem == "unknown_class":
        shutil.move(root / "hospital" / "pneumonia", root / "hospital" / "abnormal")
    elif problem == "fifo":
        os.mkfifo(cls / "pipe.png")  # reading it would wait forever
    elif problem == "bomb":
        _png(cls / "bomb.png", np.zeros((40, 40), np.uint8))
    return root


FOLDERS = [("non_image", ["notes.txt", "only images"]), ("empty_class", ["clinic2", "empty"]),
           ("corrupt_png", ["broken.png"]), ("mixed_sizes", ["different sizes"]),
           ("unknown_class", ["abnormal", "normal", "pneumonia"]), ("fifo", ["pipe.png", "not a regular file"]),
           ("bomb", ["bomb.png"])]


@pytest.mark.parametrize("problem,words", FOLDERS, ids=[c[0] for c in FOLDERS])
def test_evaluate_refuses_bad_center_folders(tiny_run, tmp_path, capsys, monkeypatch, problem, words):
    from PIL import Image

    folder = _folder(tmp_path / "centers", problem)
    if problem == "bomb":  # the decompression-bomb check, at a size a test can afford (PIL refuses above 2x)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28)
    before = snapshot(tiny_run)
    code, err = run_tool("evaluate", ["--run", str(tiny_run), "--data", str(folder)], capsys)
    assert_refused(code, err, *words)
    assert snapshot(tiny_run) == before


EVAL_OPTIONS = [(["--tta", "nosuch"], ["--tta"]), (["--backend", "nosuch"], ["--backend"]),
                (["--centers", "nosuch"], ["--centers", "validation"]), (["--max-samples", "0"], ["--max-samples"]),
                (["--batch-size", "-1"], ["--batch-size"]), (["--name", "../../outside"], ["--name"]),
                (["--name", "/tmp/abs"], ["--name"]), (["--dataset", "nosuchmnist"], ["nosuchmnist"])]


@pytest.mark.parametrize("argv,words", EVAL_OPTIONS, ids=[" ".join(c[0]) for c in EVAL_OPTIONS])
def test_evaluate_refuses_bad_options(tiny_run, capsys, argv, words):
    before = snapshot(tiny_run, tiny_run.parent)
    code, err = run_tool("evaluate", ["--run", str(tiny_run), *argv], capsys)
    assert_refused(code, err, *words)
    assert snapshot(tiny_run, tiny_run.parent) == before


def test_evaluate_refuses_a_backend_for_a_network_without_a_circuit(tmp_path, capsys, data_root):
    run = tmp_path / "classical"
    assert train.main([*TINY, "--no-quantum", "--data-root", str(data_root), "--out", str(run)]) == 0
    before = snapshot(run, run.parent)
    for argv in (["--backend", "aer", "--shots", "1024"], ["--backend", "ibm_runtime", "--dry-run"], ["--shots", "64"]):
        code, err = run_tool("evaluate", ["--run", str(run), *argv], capsys)
        assert_refused(code, err, "has no circuit for a backend to run (trained with --no-quantum)",
                       "evaluate it without " + ("--backend" if "--backend" in argv else "backend options"))
    assert snapshot(run, run.parent) == before
    assert evaluate.main(["--run", str(run), "--max-samples", "16"]) == 0  # without a backend it evaluates as ever


def test_evaluate_refuses_tampered_runs(tiny_run, bad, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    cases = [("config.json", json.dumps(config | {"n_qubits": "four"}), ["config.json", "n_qubits"]),
             ("config.json", "{not json", ["config.json"]),
             ("best.pt", None, ["best.pt", "lacks"]),
             ("best.pt", (bad / "planted.pt").read_bytes(), ["best.pt", "refused"]),
             ("best.pt", b"PK\x03\x04 truncated", ["best.pt", "could not be read"])]
    for name, content, words in cases:
        shutil.copy(tiny_run / name, run / name)
        if content is None:
            torch.save({"model": {}}, run / name)
        else:
            (run / name).write_bytes(content.encode() if isinstance(content, str) else content)
        before = snapshot(run)
        code, err = run_tool("evaluate", ["--run", str(run)], capsys)
        assert_refused(code, err, *words)
        assert snapshot(run) == before
        shutil.copy(tiny_run / name, run / name)
    assert not (bad / "PWNED").exists()
    code, err = run_tool("evaluate", ["--run", str(tmp_path / "no_run")], capsys)
    assert_refused(code, err, "no_run", "config.json")


STUDY_OPTIONS = [
    ("experiment", ["--preset", "nosuch"], ["--preset", "ablation"]),
    ("experiment", ["--preset", "quick", "--variants", "nosuch"], ["nosuch", "erm"]),
    ("experiment", ["--preset", "quick", "--seeds", "0"], ["--seeds"]),
    ("experiment", ["--preset", "quick", "--workers", "0"], ["--workers"]),
    ("experiment", ["--preset", "quick", "--epochs", "-1"], ["--epochs"]),
    ("experiment", ["--preset", "quick", "--set", "lr=0"], ["--lr"]),
    ("experiment", ["--preset", "quick", "--set", "colour=blue"], ["colour=blue"]),
    ("experiment", ["--preset", "quick", "--launcher", "nosuch"], ["--launcher", "slurm"]),
    ("report", ["NOSTUDY"], ["NOSTUDY"]),
    ("report", ["NOSTUDY", "--threads", "0"], ["--threads"]),
    ("design", ["--candidate", "a=NOSTUDY", "--candidate", "b=NOSTUDY", "--out", "NOSTUDY", "--threads", "0"],
     ["--threads"]),
    ("probe", ["--runs", "a=NOSTUDY", "--out", "NOSTUDY", "--threads", "0"], ["--threads"]),
    ("subgroups", ["--run", "NOSTUDY", "--threads", "-1"], ["--threads"]),
    ("tta_check", ["--run", "NOSTUDY", "--threads", "0"], ["--threads"]),
]


@pytest.mark.parametrize("tool,argv,words", STUDY_OPTIONS, ids=[" ".join(c[1]) for c in STUDY_OPTIONS])
def test_study_tools_refuse_bad_options(tmp_path, capsys, tool, argv, words):
    out = tmp_path / "study"
    argv = [a.replace("NOSTUDY", str(tmp_path / "nostudy")) for a in argv]
    if tool == "experiment":
        argv += ["--out", str(out), "--quiet"]
    code, err = run_tool(tool, argv, capsys)
    assert_refused(code, err, *[w.replace("NOSTUDY", "nostudy") for w in words])
    assert not out.exists() and not (tmp_path / "nostudy").exists()


def test_report_refuses_an_evaluation_name_that_leaves_the_study(tmp_path, capsys):
    code, err = run_tool("report", [str(tmp_path), "--evaluation", "../../outside"], capsys)
    assert_refused(code, err, "--evaluation")
    assert list(tmp_path.iterdir()) == []


BENCH_OPTIONS = [(["--backends", "nosuch"], ["nosuch", "statevector"]), (["--backends", "statevector:oops"], ["statevector:oops"]),
                 (["--tta", "tent"], ["tent"]), (["--samples", "0"], ["--samples"])]


@pytest.mark.parametrize("argv,words", BENCH_OPTIONS, ids=[" ".join(c[0]) for c in BENCH_OPTIONS])
def test_bench_backends_refuses_bad_options(tiny_run, tmp_path, capsys, argv, words):
    before = snapshot(tiny_run)
    code, err = run_tool("bench_backends", ["--run", str(tiny_run), "--out", str(tmp_path / "bench"), *argv], capsys)
    assert_refused(code, err, *words)
    assert snapshot(tiny_run) == before and not (tmp_path / "bench").exists()


def test_python_api_raises_one_sentence_errors(bad, tiny_run, tmp_path):
    from hybrid.config import TrainConfig
    from hybrid.data import DataError, load_dataset, load_eval_npz
    from hybrid.rundir import load_run

    with pytest.raises(ValueError, match="--epochs must be at least 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="--selection must be one of auc, last"):
        TrainConfig(selection="loss")
    with pytest.raises(ValueError, match="unknown config fields"):
        TrainConfig.from_dict({"epochs": 3, "colour": "blue"})
    with pytest.raises(DataError, match="empty.npz"):
        load_eval_npz(bad / "empty.npz")
    with pytest.raises(DataError, match="ambiguous"):
        load_dataset(str(bad / "float_ambiguous.npz"))
    with pytest.raises(ValueError, match="finished run"):
        train.train(TrainConfig(epochs=1), tiny_run)
    with pytest.raises(DataError, match="config.json is missing"):
        load_run(tmp_path)
    study = tmp_path / "study"
    (study / "erm" / "seed0").mkdir(parents=True)
    (study / "study.json").write_text("{}")
    with pytest.raises(DataError, match=r"is a study directory \(study.json\); name one of its runs.*none has saved"):
        load_run(study)
    (study / "erm" / "seed0" / "best.pt").write_bytes(b"")
    with pytest.raises(DataError, match=r"e\.g\. .*erm/seed0 \(1 with a model\)"):
        load_run(study)


def test_train_refuses_unknown_classes(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    code, err = run_tool("train", [*TINY, "--data-root", str(data_root), "--classes", "normal,covid", "--out", str(out)],
                         capsys)
    assert_refused(code, err, "covid", "--classes", "0=normal, 1=pneumonia")
    assert not out.exists()
