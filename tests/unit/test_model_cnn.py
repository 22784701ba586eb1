"""The CNN: the architecture the issue fixes, log-softmax outputs, the name registry."""

import pytest
import torch

from service.ml.model import ARCHITECTURES, MnistCNN, architecture_version, build_model


def test_cnn_maps_a_batch_of_digits_to_ten_log_probabilities():
    model = MnistCNN().eval()
    with torch.no_grad():
        out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(5), atol=1e-5)
    assert (out <= 0).all()


def test_cnn_has_the_layers_of_the_recipe():
    model = MnistCNN()
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (
        1,
        32,
        (3, 3),
    )
    assert (model.conv2.in_channels, model.conv2.out_channels) == (32, 64)
    assert (model.fc1.in_features, model.fc1.out_features) == (9216, 128)
    assert model.fc2.out_features == 10
    assert (model.dropout1.p, model.dropout2.p) == (0.25, 0.5)


def test_build_model_by_name_and_class_count():
    model = build_model("mnist-cnn", num_classes=3)
    assert isinstance(model, MnistCNN)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    assert "mnist-cnn" in ARCHITECTURES
    assert architecture_version("mnist-cnn") == MnistCNN.version


def test_unknown_architecture_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="mnist-cnn"):
        build_model("resnet-9000")
