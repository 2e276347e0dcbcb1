import torch

from clipguard import data
from clipguard.supervised import SupervisedConfig, predict, train_classifier


def test_supervised_classifier_learns_and_is_deterministic():
    train = data.fashion_mnist("train", n=1024, seed=0)
    test = data.fashion_mnist("test", n=300, seed=0)
    config = SupervisedConfig(epochs=3, batch_size=64, warmup_steps=5, progress=False)
    model = train_classifier(train.images, train.labels, 10, config=config)
    accuracy = predict(model, test.float_images()).argmax(1).eq(test.labels).float().mean()
    assert accuracy > 0.5  # chance is 0.1
    again = train_classifier(train.images, train.labels, 10, config=config)
    assert torch.equal(predict(model, test.float_images()), predict(again, test.float_images()))


def test_unlabelled_rows_are_skipped():
    train = data.fashion_mnist("train", n=256, seed=0)
    labels = train.labels.clone()
    labels[:128] = -1
    model = train_classifier(train.images, labels, 10, config=SupervisedConfig(epochs=1, batch_size=64,
                                                                                 progress=False))
    assert predict(model, train.float_images(slice(0, 4))).shape == (4, 10)
