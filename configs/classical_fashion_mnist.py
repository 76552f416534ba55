"""Classical baseline on Fashion-MNIST: HOG + raw pixels, standardised, with a linear SVM or k-NN.

  apt-get install dataset-fashion-mnist   # Debian: the four idx.gz files in /usr/share/datasets/fashion-mnist
  python -m jaxcls.classical --config configs/classical_fashion_mnist.py --workdir /tmp/classical-fashion
  python -m jaxcls.classical --config configs/classical_fashion_mnist.py:knn --workdir /tmp/classical-fashion-knn

Data: 60,000 train / 10,000 test 28x28 grayscale images, read from the idx files as configs/fashion_mnist_resnet.py
does. The suffix after ':' picks the classifier: 'svm' (the default; C=0.001 gave 90.6% on a held-out fifth of
the training split) or 'knn' (5 neighbours, cosine distance: 88.8% on 3,000 held-out training images with 20,000
as neighbours, ahead of euclidean, of k=1 or 9, and of HOG or pixels alone). Results and times: docs/classical.md.
"""

from jaxcls import config_base
from jaxcls.classical import settings
from jaxcls.data.sources import idx


def get_config(classifier: str = "svm"):
  config = config_base.get_base_config()
  idx.use_fashion_mnist(config.dataset)
  config.classical = settings.defaults()
  config.classical.classifier = classifier or "svm"
  config.classical.features = "hog,pixels"
  config.classical.hog_cell_size = 4
  config.classical.hog_block_size = 2
  config.classical.svm_c = 0.001
  config.classical.knn_k = 5
  config.classical.knn_metric = "cosine"
  return config
