"""Perception-coherence transfer on your own image folder, sized for a small one.

Prepare the folder (one subfolder per class; at least 5 images per class, one in five is held out
as the test split), then train resnet8 -> resnet8 with small batches, class-aware protocol:

  python -m pcjax.data.prepare folder --dir photos --name photos --image_size 32 \\
      --data_dir tfds_photos
  python train.py --config configs/folder.py:photos --config.data_dir=tfds_photos

The argument is the name the folder was prepared under. For a folder of thousands of images raise
the batch sizes (e.g. --config.teacher.train.batch_size=64) and pick models from the zoo
(--config.teacher.model=resnet32x4 --config.student.model=resnet8x4).

Time: 1 min 47 s for 30 images of 32x32 (90 + 90 steps) on a 2-core CPU shared with other jobs,
most of it compiling resnet8's steps.
"""

import ml_collections


def get_config(arg: str | None = None):
    if not arg:
        raise ValueError("configs/folder.py: name the prepared dataset, e.g. "
                         "--config configs/folder.py:photos")
    small = dict(batch_size=8, num_epochs=30.0, log_every=10, checkpoint_every=100)
    return ml_collections.ConfigDict(dict(
        name=f"folder_{arg}",
        dataset=arg,
        teacher=dict(model="resnet8", train=small),
        student=dict(model="resnet8", train=small),
        distill=dict(protocol="class_aware", loss="perception_coherence"),
        eval=dict(batch_size=8, knn_k=5),
    ))
