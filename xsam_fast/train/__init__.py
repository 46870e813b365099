"""The ``xsam-fast train`` job: SGD vs SAM vs XSAM on a small CNN.

One concern per module: :mod:`.data` (datasets as batch iterables),
:mod:`.model` (the CNN), :mod:`.loop` (one training run of one method and one
seed), :mod:`.log` (the per-epoch log, written and read back), :mod:`.report`
(the summary table) and :mod:`.plot` (figures drawn from the log). Nothing here
is imported by ``import xsam_fast``; the optional dependencies (scikit-learn,
matplotlib, tqdm: ``pip install "xsam-fast[train]"``) are imported where used.
"""
