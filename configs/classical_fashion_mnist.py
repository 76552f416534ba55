"""Classical baseline on Fashion-MNIST: HOG + raw pixels with a linear SVM, or raw pixels with k-NN.

  apt-get install dataset-fashion-mnist   # Debian: the four idx.gz files in /usr/share/datasets/fashion-mnist
  python -m jaxcls.classical --config configs/classical_fashion_mnist.py --workdir /tmp/classical-fashion
  python -m jaxcls.classical --config configs/classical_fashion_mnist.py:knn --workdir /tmp/classical-fashion-knn

Data: 60,000 train / 10,000 test 28x28 grayscale images, read from the idx files as configs/fashion_mnist_resnet.py
does. The suffix after ':' picks the classifier ('svm' by default, or 'knn') with the settings that did best on a
held-out fifth of the training split. Results and times: see docs/classical.md.
"""

from jaxcls import config_base
from jaxcls.classical import settings

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")


def get_config(classifier: str = "svm"):
  config = config_base.get_base_config()
  config.dataset.name = "idx"
  config.dataset.path = "/usr/share/datasets/fashion-mnist"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"  # the files call it t10k
  config.dataset.class_names = CLASS_NAMES
  config.classical = settings.defaults()
  config.classical.classifier = classifier or "svm"
  config.classical.features = "hog,pixels"
  config.classical.hog_cell_size = 4
  config.classical.hog_block_size = 2
  config.classical.svm_c = 0.01
  config.classical.knn_k = 5
  return config
