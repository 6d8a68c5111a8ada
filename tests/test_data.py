import gzip
import os
from pathlib import Path

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
