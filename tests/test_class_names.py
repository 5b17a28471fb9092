"""Class names from a data set's dataset.json (nnU-Net v2, MSD / nnU-Net v1), mapped onto
the class indices the masks are read as."""

import json

import pytest

from ielstudio.core.class_names import (class_label, find_description, names_by_class, parse_labels,
                                        read_class_names, report_class_names, with_class_names)


def test_both_forms_of_labels_give_the_same_names_and_regions_are_left_out():
    v2 = {"background": 0, "CSF": 1, "grey matter": 2, "whole brain": [1, 2]}
    v1 = {"0": "background", "1": "CSF", "2": "grey matter"}
    assert parse_labels(v2) == parse_labels(v1) == {0: "background", 1: "CSF", 2: "grey matter"}
    with pytest.raises(ValueError, match="'CSF'"):
        parse_labels({"CSF": 1.5})
    with pytest.raises(ValueError, match="not a mapping"):
        parse_labels(["CSF"])


def test_the_description_is_found_beside_or_above_the_label_folder(tmp_path):
    labels = tmp_path / "Dataset001" / "labelsTr"
    labels.mkdir(parents=True)
    assert find_description(labels) is None and read_class_names(labels) == ({}, None)
    (tmp_path / "Dataset001" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    assert read_class_names(labels) == ({0: "background", 1: "lesion"}, None)
    (labels / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}}))
    assert read_class_names(labels)[0][1] == "tumour"  # the folder's own first
    assert read_class_names(labels / "case_001.nii.gz")[0][1] == "tumour"  # a label file: its folder


def test_an_unusable_description_is_named_and_the_classes_are_numbered(tmp_path):
    (tmp_path / "dataset.json").write_text("{ not json")
    names, problem = read_class_names(tmp_path)
    assert names == {} and str(tmp_path / "dataset.json") in problem and "numbered" in problem
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"lesion": "one"}}))
    names, problem = read_class_names(tmp_path)
    assert names == {} and "'lesion'" in problem
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "no labels here"}))
    assert read_class_names(tmp_path) == ({}, None)
    (tmp_path / "dataset.json").write_bytes(b"\xff\xfe\x00")
    assert "cannot read" in read_class_names(tmp_path)[1]


def test_names_follow_the_stored_values_and_fall_back_to_the_index():
    names = {0: "background", 1: "lesion", 2: "oedema"}
    assert names_by_class(names, (0, 1, 2), 3) == ["background", "lesion", "oedema"]
    assert names_by_class(names, (0, 255), 2) == ["background", "lesion"]  # a binary mask saved 0/255
    assert names_by_class({0: "bg", 2: "oedema", 5: "core"}, (0, 2, 5), 3) == ["bg", "oedema", "core"]  # stored 0/2/5
    assert names_by_class({1: "lesion"}, (), 3) == [None, "lesion", None]  # colour masks, a class not named
    assert class_label(1, "lesion") == "1 lesion" and class_label(2, None) == "class 2"
    long = class_label(3, "left\nhippocampus " + "x" * 100)
    assert long.startswith("3 left hippocampus x") and long.endswith("…") and len(long) == 2 + 32


def test_the_report_lists_the_named_classes_and_messages_about_a_class_name_it(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1, "oedema": 2}}))
    named = names_by_class(read_class_names(tmp_path)[0], (0, 1, 2), 3)
    assert report_class_names(named) == {"0": "background", "1": "lesion", "2": "oedema"}
    assert report_class_names(names_by_class(read_class_names(tmp_path / "nothing-here" / "x")[0], (0, 1), 2)) == {}
    messages = ["class 2: the model agrees with the given masks only at Dice 0.40; kept as given",
                "the model is not reliable for any class: every mask is kept as given",
                "class 7: not in the description", "a class 1: in the middle stays"]
    assert with_class_names(messages, named) == [
        "class 2, oedema: the model agrees with the given masks only at Dice 0.40; kept as given",
        messages[1], messages[2], messages[3]]
    assert with_class_names(messages, [None, None, None]) == messages


def test_a_description_too_large_to_be_one_is_not_read(tmp_path, monkeypatch):
    import ielstudio.core.class_names as names

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}, "pad": "x" * 200}))
    monkeypatch.setattr(names, "MAX_BYTES", 100)
    found, problem = names.read_class_names(tmp_path)
    assert found == {} and "not read for class names" in problem and str(tmp_path / "dataset.json") in problem


def test_a_written_description_is_read_back_with_the_same_names(tmp_path):
    from ielstudio.core.class_names import DESCRIPTION, read_class_names, write_description

    path = write_description(tmp_path, ("background", "grey matter (left)", "CSF"), name="brain")
    assert path == tmp_path / DESCRIPTION
    assert json.loads(path.read_text())["labels"] == {"background": 0, "grey matter (left)": 1, "CSF": 2}
    assert json.loads(path.read_text())["name"] == "brain" and "description" not in json.loads(path.read_text())
    assert read_class_names(tmp_path) == ({0: "background", 1: "grey matter (left)", 2: "CSF"}, None)
    assert [p.name for p in tmp_path.iterdir()] == [DESCRIPTION]  # written through a temp file, none left behind
