"""Generate sparkdl/data/digits.npz from scikit-learn's bundled digits dataset.

The data is the UCI Optical Recognition of Handwritten Digits test set as shipped
by scikit-learn (1797 8x8 images, pixel values 0..16, labels 0..9), license CC BY 4.0.
Run once: python tools/make_digits.py
"""
import os

import numpy as np
from sklearn.datasets import load_digits

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sparkdl", "data", "digits.npz")


def main(out=OUT):
    d = load_digits()
    images = d.images.astype(np.uint8)
    labels = d.target.astype(np.uint8)
    assert images.shape == (1797, 8, 8) and np.array_equal(images, d.images)
    assert labels.shape == (1797,) and np.array_equal(labels, d.target)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels)
    print(out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
