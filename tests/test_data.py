import numpy as np
import pytest
from PIL import Image

from patchshift.core.common.errors import DatasetError
from patchshift.core.evaluation.data import labelled_samples, load_mask, train_images


def test_loader_finds_samples_and_masks(dataset):
    assert len(train_images(dataset)) == 24
    samples = labelled_samples(dataset)
    assert sum(s.label for s in samples) == 6 and len(samples) == 12
    defect = next(s for s in samples if s.label == 1)
    mask = load_mask(defect, (48, 48))
    assert mask.shape == (48, 48) and mask.any()
    good = next(s for s in samples if s.label == 0)
    assert not load_mask(good, (48, 48)).any()


def test_tiny_defects_survive_mask_resizing(tmp_path):
    from patchshift.core.evaluation.data import Sample

    mask = np.zeros((400, 400), np.uint8)
    mask[200, 200] = 255  # one pixel
    Image.fromarray(mask).save(tmp_path / "m.png")
    resized = load_mask(Sample(tmp_path / "x.png", 1, "pit", tmp_path / "m.png"), (40, 40))
    assert resized.sum() == 1


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="train/good"):
        train_images(tmp_path)
    (tmp_path / "test" / "crack").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "crack" / "001.png")
    with pytest.raises(
        DatasetError, match="only defective images"
    ):  # a defect without a mask is fine; no good images is not
        labelled_samples(tmp_path)


def test_defects_labelled_without_masks_are_kept_and_one_class_is_refused(dataset, tmp_path):
    import shutil

    root = tmp_path / "nomasks"
    shutil.copytree(dataset, root)
    shutil.rmtree(root / "ground_truth")
    samples = labelled_samples(root)
    defective = [s for s in samples if s.label == 1]
    assert defective and all(s.mask_path is None for s in defective)
    shutil.rmtree(root / "test" / "blob")
    with pytest.raises(DatasetError, match="only good images"):
        labelled_samples(root)
