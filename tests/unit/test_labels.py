"""Label files as Coral ships them: plain lines, or leading ids (with gaps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetpud.errors import ModelError
from edgetpud.labels import Labels, fit_problem, load_labels, output_classes, parse_labels
from edgetpud.modelfile import ModelInfo, TensorSpec


def test_plain_lines_are_numbered_from_zero() -> None:
    labels = parse_labels("background\ntench, Tinca tinca\ngoldfish\n")
    assert labels[0] == "background"
    assert labels[1] == "tench, Tinca tinca"
    assert len(labels) == 3


def test_leading_ids_with_gaps_and_colons() -> None:
    labels = parse_labels("0  person\n1  bicycle\n87  teddy bear\n90: toothbrush\n")
    assert labels[0] == "person"
    assert labels[87] == "teddy bear"
    assert labels[90] == "toothbrush"
    assert 2 not in labels
    assert labels.name(2) == "2"


def test_a_plain_file_with_a_numeric_start_stays_plain() -> None:
    labels = parse_labels("background\n7 up\nsprite\n")
    assert labels[1] == "7 up"
    assert labels[2] == "sprite"


def test_bom_and_windows_line_ends() -> None:
    labels = parse_labels("\ufeff0 cat\r\n1 dog\r\n")
    assert dict(labels) == {0: "cat", 1: "dog"}


def test_missing_file_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist; fix the labels path"):
        load_labels(tmp_path / "nope.txt")


# ---- does a label file fit the model? (labels.fit_problem, labels.output_classes)


def plain(n: int, first: str = "class 0") -> Labels:
    return parse_labels("\n".join([first] + [f"class {i}" for i in range(1, n)]) + "\n", "l.txt")


def info(*shapes: tuple[int, ...]) -> ModelInfo:
    outputs = tuple(TensorSpec(f"out{i}", shape, "uint8") for i, shape in enumerate(shapes))
    return ModelInfo(Path("m.tflite"), (), outputs, False, (), 0)


def test_labels_that_name_every_class_fit() -> None:
    assert fit_problem(plain(1001, "background"), 1001) is None
    assert fit_problem(parse_labels("0 cat\n1 dog\n2: bird\n"), 3) is None
    assert fit_problem(parse_labels("cat\ndog\nbird\n\n\n"), 3) is None  # trailing blank lines


def test_nothing_to_check_without_a_class_count_or_labels() -> None:
    assert fit_problem(plain(80), None) is None  # e.g. a detection model
    assert fit_problem(plain(80), 0) is None
    assert fit_problem(parse_labels(""), 1001) is None  # load_labels warns about that one


def test_coco_labels_for_an_imagenet_classifier_say_what_happens_and_what_to_check() -> None:
    problem = fit_problem(plain(80), 1001)
    assert problem == (
        "label file l.txt has 80 labels but the model outputs 1001 classes (921 of the classes "
        "will show as numbers); is it this model's label file? Set the model's labels to the "
        "file that came with it"
    )


def test_more_labels_than_classes() -> None:
    problem = fit_problem(plain(1001, "background"), 10)
    assert problem is not None
    assert "has 1001 labels but the model outputs 10 classes" in problem
    assert "991 labels are for ids the model never outputs" in problem


def test_numbered_labels_with_gaps_name_their_id_range() -> None:
    labels = parse_labels("0 person\n1 bicycle\n87 teddy bear\n89 toothbrush\n", "coco.txt")
    problem = fit_problem(labels, 1001)
    assert problem is not None
    assert "label file coco.txt has 4 labels for ids 0 to 89" in problem
    assert "997 of the classes will show as numbers" in problem


def test_a_missing_background_class_shifts_every_label() -> None:
    # 1000 ImageNet labels for a 1001-class model: class 1 (tench) would be named by
    # line 1, goldfish; so it is reported, with the line to add
    problem = fit_problem(plain(1000), 1001)
    assert problem is not None
    assert "has 1000 labels but the model outputs 1001 classes" in problem
    assert 'class 0 is likely "background"' in problem
    assert problem.endswith('add a first line "background"')
    numbered = parse_labels("".join(f"{i} class {i}\n" for i in range(1000)))
    message = fit_problem(numbered, 1001)
    assert message is not None
    assert message.endswith('add the line "0 background" and number the other labels from 1')


def test_a_background_class_the_model_does_not_have_shifts_every_label() -> None:
    problem = fit_problem(plain(1001, "background"), 1000)
    assert problem is not None
    assert 'has 1001 labels, the first "background", but the model outputs 1000 classes' in problem
    assert problem.endswith('remove the "background" line')
    numbered = parse_labels("0 background\n" + "".join(f"{i} c{i}\n" for i in range(1, 1001)))
    message = fit_problem(numbered, 1000)
    assert message is not None
    assert message.endswith('remove "0 background" and number the other labels from 0')


def test_output_classes_follows_the_builtin_postprocessors() -> None:
    assert output_classes(info((1, 1001)), "classify") == 1001
    assert output_classes(info((1, 4), (1, 10)), "classify", output=1) == 10
    assert output_classes(info((1, 4), (1, 10)), "classify", output=5) == 10  # the last one
    assert output_classes(info((1, 1)), "classify") is None
    assert output_classes(info((1, 64, 64, 21)), "segment") == 21  # per-class scores
    assert output_classes(info((1, 64, 64)), "segment") is None  # a map of class ids
    assert output_classes(info((1, 10, 4), (1, 10), (1, 10), (1,)), "detect") is None
    assert output_classes(info((1, 1001)), "someone-elses-plugin") is None
    assert output_classes(info(), "classify") is None


def test_real_coral_files(models_dir: Path) -> None:
    from edgetpud.modelfile import inspect_model

    model = inspect_model(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    classes = output_classes(model, "classify")
    assert classes == 1001
    assert fit_problem(load_labels(models_dir / "imagenet_labels.txt"), classes) is None
    problem = fit_problem(load_labels(models_dir / "coco_labels.txt"), classes)
    assert problem is not None
    assert f"label file {models_dir / 'coco_labels.txt'} has 90 labels" in problem
    assert "is it this model's label file?" in problem


def test_classify_names_class_i_by_label_i_so_background_must_be_in_the_file() -> None:
    """Why an off-by-one label file is reported: classify does not skip a background class."""
    from edgetpud_plugins.classify import Classify, ClassifyConfig

    from edgetpud.messages import Request

    scores = np.zeros((1, 1001), np.uint8)
    scores[0, 1] = 255  # class 1 of an ImageNet model: tench
    request = Request(model="m", payload=b"", kind="tensor")
    fits = parse_labels("background\ntench\ngoldfish\n" + "x\n" * 998)
    result = Classify(ClassifyConfig(top_k=1), info((1, 1001)), fits).process([scores], request)
    assert result[0]["label"] == "tench"
    short = parse_labels("tench\ngoldfish\n" + "x\n" * 998)
    result = Classify(ClassifyConfig(top_k=1), info((1, 1001)), short).process([scores], request)
    assert result[0]["label"] == "goldfish"  # what fit_problem warns about
