"""A classical baseline: hand-crafted features (HOG, colour histograms, pixels) with a linear SVM or k-NN.

`python -m jaxcls.classical --config configs/classical_digits.py --workdir DIR`; see docs/classical.md.
"""
