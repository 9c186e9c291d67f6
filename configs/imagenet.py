r"""ImageNet (ILSVRC2012) distillation: ResNet-34 teacher -> ResNet-18 student.

Protocol: class-aware (CE + beta * perception coherence on the 512-d penultimate features).
Recipe for both phases, the standard ImageNet ResNet setting used by KD benchmarks (e.g. SemCKD's
ImageNet runs, torchvision's reference): SGD momentum 0.9, weight decay 1e-4, global batch 256,
90 epochs, lr 0.1 x0.1 at epochs 30 and 60. Linear probe and kNN fit on 10% of the train split.

Run (imagenet2012 prepared as array_record in the TFDS data dir, see pcjax.data):

  python train.py --config configs/imagenet.py --workdir runs/imagenet_r34_r18

Default teacher source: torchvision's ResNet-34 (ResNet34_Weights.IMAGENET1K_V1, 73.31% top-1
by torchvision's metadata), converted once (no PyTorch needed) instead of trained:

  wget https://download.pytorch.org/models/resnet34-b627a593.pth
  python -m pcjax.convert --arch imagenet_resnet34 --from resnet34-b627a593.pth \
      --to teachers/imagenet_resnet34
  python train.py --config configs/imagenet.py --workdir runs/imagenet_r34_r18 \
      --config.teacher.checkpoint=teachers/imagenet_resnet34

Its validation top-1 is printed before distillation starts. Without --config.teacher.checkpoint
the teacher is trained by the recipe below; an earlier run's export is <dir>/teacher/model.
Multi-host (TPU pod / several GPU hosts): run the same command on every host with
--config.distributed=True.

Time: not measured.
"""

import ml_collections


def get_config():
    recipe = dict(
        batch_size=256,
        num_epochs=90.0,
        log_every=500,
        checkpoint_every=5000,
        eval_every=25000,
        optimizer=dict(learning_rate=0.1, weight_decay=1e-4),
        schedule=dict(decay_epochs=(30, 60)),
    )
    return ml_collections.ConfigDict(dict(
        name="imagenet_resnet34_resnet18",
        dataset="imagenet2012",
        eval_split="validation",
        teacher=dict(model="imagenet_resnet34", train=recipe),
        student=dict(model="imagenet_resnet18", train=recipe),
        distill=dict(protocol="class_aware", loss="perception_coherence"),
        eval=dict(batch_size=1024, knn_k=20, probe_train_split="train[:10%]", pc_chunk_size=1000),
    ))
