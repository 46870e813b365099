"""The ``xsam-fast train`` job: SGD vs SAM vs XSAM, on digits or CIFAR.

One concern per module: :mod:`.data` (datasets as batch iterables on the
device), :mod:`.noise` (symmetric label noise), :mod:`.cifar` (the CIFAR
pickles, read and downloaded without torchvision), :mod:`.augment` (on-device
augmentation), :mod:`.model` and :mod:`.resnet` (the networks), :mod:`.presets`
(the paper's CIFAR recipe), :mod:`.runtime` (device, mixed precision, backend
check), :mod:`.loop` (one training run of one method and one seed), :mod:`.log`
(the per-epoch log, written and read back), :mod:`.stats` (paired differences
and t intervals), :mod:`.report` (the summary tables), :mod:`.plot` (figures
drawn from the log), :mod:`.runner` (the whole job), :mod:`.command` (the
``xsam-fast train`` arguments and their run) and :mod:`.errors`. Nothing
here is imported by ``import xsam_fast``; the optional dependencies
(scikit-learn, matplotlib, tqdm: ``pip install "xsam-fast[train]"``) are
imported where used.
"""
