"""`staged_directory`: a bundle is written in a fresh directory beside the old one, which it
replaces only when the block succeeds; a failure leaves the old bundle as it was."""

import pytest


def old_bundle(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old model")
    (out / "stale-int8.onnx").write_bytes(b"from an earlier export")
    return out


def test_a_successful_block_replaces_the_directory_whole(tmp_path):
    from repas.atomic import staged_directory

    out = old_bundle(tmp_path)
    with staged_directory(out) as staging:
        assert staging.parent == out.parent and staging != out and list(staging.iterdir()) == []
        (staging / "model.onnx").write_bytes(b"new model")
        assert (out / "model.onnx").read_bytes() == b"old model"  # untouched until the block ends
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # no stale file survives
    assert (out / "model.onnx").read_bytes() == b"new model"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # neither the new nor the old copy is left


def test_a_new_staged_directory_is_created(tmp_path):
    from repas.atomic import staged_directory

    out = tmp_path / "runs" / "export"
    with staged_directory(out) as staging:
        (staging / "model.json").write_text("{}")
    assert (out / "model.json").read_text() == "{}" and [p.name for p in out.parent.iterdir()] == ["export"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failed_block_leaves_the_old_directory_and_no_temporary_one(tmp_path, error):
    from repas.atomic import staged_directory

    out = old_bundle(tmp_path)
    with pytest.raises(error):
        with staged_directory(out) as staging:
            (staging / "model.onnx").write_bytes(b"half a new model")
            raise error("export failed")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "stale-int8.onnx"]
    assert (out / "model.onnx").read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
