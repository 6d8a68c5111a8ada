import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning.data import FASHION_MNIST_DEFAULT, augment_batch, iterate_batches, load_data
from pruning.errors import UserError

HAS_FMNIST = Path(os.environ.get("PRUNEPILOT_FASHION_MNIST", FASHION_MNIST_DEFAULT), "train-images-idx3-ubyte.gz").is_file()


def test_digits_splits_are_deterministic_and_disjoint(digits):
    again = load_data("digits")
    assert digits.fingerprint == again.fingerprint
    assert torch.equal(digits.x_val, again.x_val)
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == 1797
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert abs(len(digits.y_val) / (len(digits.y_train) + len(digits.y_val)) - 0.1) < 0.01


@pytest.mark.skipif(not HAS_FMNIST, reason="dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
def test_fashion_mnist_protocol_split():
    data = load_data("fashion-mnist")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (55000, 5000, 10000)
    assert data.input_shape == (1, 28, 28)
    assert abs(float(data.x_train.mean())) < 1e-3  # normalised with training statistics


def test_missing_directory_names_path_and_install_hint(tmp_path):
    with pytest.raises(UserError, match=r"does not exist.*apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", path=str(tmp_path / "missing"))


def test_corrupt_idx_file_is_a_user_error(tmp_path):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 10)
    with pytest.raises(UserError, match=r"truncated IDX file"):
        load_data("mnist-idx", path=str(tmp_path))


def test_user_dataset_function_and_bad_spec():
    data = load_data("tests.fixtures:tiny_dataset")
    assert data.num_classes == 3 and len(data.y_test) == 30
    with pytest.raises(UserError, match="cannot import"):
        load_data("tests.fixtures:nope")
    with pytest.raises(UserError, match="neither a known dataset"):
        load_data("imagenet")


def test_augmentation_keeps_shape_and_moves_pixels(synthetic):
    x = synthetic.x_train[:32]
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)


def test_the_crop_alone_never_mirrors_an_image(synthetic):
    """train.augment=crop, for digits and text, where a mirror image is another class or none."""
    x = synthetic.x_train[:64]
    cropped = augment_batch(x, torch.Generator().manual_seed(0), flip=False)
    maybe_mirrored = augment_batch(x, torch.Generator().manual_seed(0), flip=True)  # the same crops, then the flip
    mirrored = [i for i in range(len(x)) if not torch.equal(cropped[i], maybe_mirrored[i])]
    assert 10 < len(mirrored) < 54 and not torch.equal(cropped, x)
    assert all(torch.equal(maybe_mirrored[i], cropped[i].flip(-1)) for i in mirrored)


def test_train_augment_crop_trains_with_the_crop_alone_and_other_values_are_refused(synthetic, monkeypatch, tmp_path):
    from pruning import training
    from pruning.config import load_config
    from pruning.models import build_model

    flips = []
    real = training.augment_batch

    def recorded(x, generator, **kwargs):
        flips.append(kwargs.get("flip", True))
        return real(x, generator, **kwargs)

    monkeypatch.setattr(training, "augment_batch", recorded)
    model = build_model("lenet5", 1, synthetic.num_classes, synthetic.input_shape)
    for augment, expected in (("crop", False), (True, True)):
        flips.clear()
        training.train(model, synthetic, training.Recipe(epochs=0.2, batch_size=64, augment=augment),
                       torch.Generator().manual_seed(0), show_progress=False)
        assert flips and set(flips) == {expected}
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: lenet5}\ndata: {name: digits}\ntrain: {augment: crop}\n")
    assert load_config(config).train.augment == "crop"
    config.write_text("model: {name: lenet5}\ndata: {name: digits}\ntrain: {augment: flip}\n")
    with pytest.raises(UserError, match=r'field `train.augment`: expected true \(random crop and horizontal flip\), '
                                        r'"crop" \(the crop alone\) or false \(got \'flip\'\)'):
        load_config(config)


def test_batches_cover_the_split_once(synthetic):
    seen = sum(len(yb) for _, yb in iterate_batches(synthetic.x_train, synthetic.y_train, 64, shuffle=True,
                                                    generator=torch.Generator().manual_seed(0)))
    assert seen == len(synthetic.y_train)


def test_an_option_a_builtin_dataset_does_not_take_is_refused():
    """A misspelt option (n_trian) was swallowed: the run went on with the default size, without a word."""
    with pytest.raises(UserError, match=r"data.options: dataset 'synthetic' takes no option\(s\) \['n_trian'\]; it takes "
                                        r"\['size', 'n_train', 'n_test', 'num_classes'\]"):
        load_data("synthetic", n_trian=50)
    with pytest.raises(UserError, match=r"dataset 'digits' takes no option\(s\) \['size'\]; it takes none"):
        load_data("digits", size=8)
    assert len(load_data("synthetic", n_train=50, n_test=20, size=6).y_test) == 20


_rng = np.random.default_rng(0)


def _user_split(x_train=None, y_train=None, x_test=None, y_test=None):
    """A user's dataset function's four arrays, 100 + 20 images of 8x8 in 3 classes, with one part replaced."""
    return (_rng.random((100, 8, 8)) if x_train is None else x_train,
            _rng.integers(0, 3, 100) if y_train is None else y_train,
            _rng.random((20, 8, 8)) if x_test is None else x_test,
            _rng.integers(0, 3, 20) if y_test is None else y_test)


def labels_for_fewer_images():
    return _user_split(y_train=_rng.integers(0, 3, 90))


def string_labels():
    return _user_split(y_train=np.array(["shirt", "boot"] * 50))


def negative_labels():
    return _user_split(y_train=np.r_[-1, _rng.integers(0, 3, 99)])


def fractional_labels():
    return _user_split(y_test=_rng.random(20) * 3)


def images_of_another_size():
    return _user_split(x_test=_rng.random((20, 9, 9)))


def image_with_nan():
    images = _rng.random((100, 8, 8))
    images[3, 2, 1] = np.nan
    return _user_split(x_train=images)


def no_test_images():
    return _user_split(x_test=np.zeros((0, 8, 8)), y_test=np.zeros(0, dtype=int))


def column_and_float_labels():
    return _user_split(y_train=_rng.integers(0, 3, 100).astype(float), y_test=_rng.integers(0, 3, (20, 1)))


@pytest.mark.parametrize("function, message", [
    ("labels_for_fewer_images", r"train labels: 90 labels for 100 images; expected one label per image"),
    ("string_labels", r"train labels: expected integer class indices 0..K-1, got values of type <U5"),
    ("negative_labels", r"train labels: expected class indices 0..K-1, got -1"),
    ("fractional_labels", r"test labels: expected integer class indices 0..K-1, got fractional"),
    ("images_of_another_size", r"train images are shaped \(1, 8, 8\) and test images \(1, 9, 9\)"),
    ("image_with_nan", r"train images: 1 value\(s\) are NaN or infinite"),
    ("no_test_images", r"test images: expected at least one image, got none"),
])
def test_a_user_datasets_bad_arrays_are_refused_by_name(function, message):
    """These went through: extra images were dropped and shifted the splits, one NaN made every normalised image
    NaN, other image sizes were tested on; strings and negative labels failed with a traceback from deep in torch."""
    with pytest.raises(UserError, match=rf"^tests.test_data:{function}: {message}"):
        load_data(f"tests.test_data:{function}")


def test_float_and_column_labels_that_are_class_indices_are_taken():
    data = load_data("tests.test_data:column_and_float_labels")
    assert data.y_train.dtype == torch.int64 and data.y_test.shape == (20,) and data.num_classes == 3
