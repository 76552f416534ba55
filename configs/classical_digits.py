"""Classical baseline on scikit-learn's 8x8 digits: HOG + raw pixels with a linear SVM, or raw pixels with k-NN.

  python -m jaxcls.classical --config configs/classical_digits.py --workdir /tmp/classical-digits
  python -m jaxcls.classical --config configs/classical_digits.py:knn --workdir /tmp/classical-digits-knn

Data: the same 1,437 train / 360 test split as configs/default.py. The suffix after ':' picks the classifier
('svm' by default, or 'knn') with the settings that did best on a held-out fifth of the training split: HOG with
2x2-pixel cells (an 8x8 image has only 4x4 of them) plus pixels and C=0.1 for the SVM; pixels alone and the single
nearest neighbour for k-NN. Results and times: see docs/classical.md.
"""

from jaxcls import config_base
from jaxcls.classical import settings


def get_config(classifier: str = "svm"):
  config = config_base.get_base_config()
  config.dataset.name = "digits"
  config.classical = settings.defaults()
  config.classical.classifier = classifier or "svm"
  config.classical.hog_cell_size = 2
  config.classical.hog_block_size = 2
  if config.classical.classifier == "knn":
    config.classical.features = "pixels"
    config.classical.knn_k = 1
  else:
    config.classical.features = "hog,pixels"
    config.classical.svm_c = 0.1
  return config
