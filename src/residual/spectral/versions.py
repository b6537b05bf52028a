"""The versions of the spectral stage's outputs, a param of each rule that writes them.

Plain strings (no torch): the workflow reads them when it parses.
"""

ID_VERSION = "intrinsic-dimension/3"  # spectral/intrinsic_dimension.py: bump when a change to the estimators or their table changes results
PCA_FORMAT = "residual-pca/1"  # spectral/pca.py: bump when the file layout or the fit changes
SIMILARITY_VERSION = "similarity/2"  # spectral/similarity.py: bump when a change to the score or its table changes results
