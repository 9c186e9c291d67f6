r"""CIFAR-100 distillation: the 13 teacher->student pairs of the CRD benchmark, RepDistiller recipe.

The argument names the pair as ``<teacher>_<student>`` (default ``resnet32x4_resnet8x4``):

  wrn_40_2_wrn_16_2   wrn_40_2_wrn_40_1   resnet56_resnet20   resnet110_resnet20
  resnet110_resnet32  resnet32x4_resnet8x4  vgg13_vgg8  vgg13_mobilenetv2
  resnet50_mobilenetv2  resnet50_vgg8  resnet32x4_shufflev1  resnet32x4_shufflev2
  wrn_40_2_shufflev1

Protocol: class-aware distillation (CE + alpha*KD + beta*transfer; gamma=1, alpha=0, beta = the
loss's RepDistiller weight), perception coherence on the penultimate features. Both phases use
RepDistiller's schedule: SGD momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x0.1 at
epochs 150, 180 and 210; lr 0.05, except 0.01 for MobileNetV2/ShuffleNet students (as in
RepDistiller's train_student.py). The teacher is trained by the same recipe (train_teacher.py).

Run (CIFAR-100 prepared as array_record in the TFDS data dir, see pcjax.data):

  python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 --workdir runs/c100_r32x4_r8x4

Start from RepDistiller's published teacher (the one its table used) instead of training it:
download, convert (no PyTorch needed), distill. For resnet32x4:

  wget http://shape2prog.csail.mit.edu/repo/resnet32x4_vanilla/ckpt_epoch_240.pth
  python -m pcjax.convert --arch resnet32x4 --from ckpt_epoch_240.pth \
      --to teachers/resnet32x4
  python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 --workdir runs/c100_r32x4_r8x4 \
      --config.teacher.checkpoint=teachers/resnet32x4

The other teachers live at .../repo/<dir>/ckpt_epoch_240.pth with <dir> = resnet56_vanilla,
resnet110_vanilla, wrn_40_2_vanilla, vgg13_vanilla, or ResNet50_vanilla for --arch resnet50.
The converted teacher's test top-1 is printed before distillation starts.

Reuse one trained teacher for several students:

  python train.py --config configs/cifar100.py:resnet32x4_shufflev1 --workdir runs/c100_r32x4_sv1 \
      --config.teacher.checkpoint=runs/c100_r32x4_r8x4/teacher/model

Other losses: --config.distill.loss=fitnet (or rkd, pkt, sp, cc, kd); RepDistiller's KD run is
--config.distill.loss=kd --config.distill.gamma=0.1 --config.distill.beta=0.9. The class-unaware
protocol: --config.distill.protocol=class_unaware.

Time: not measured (240 + 240 epochs; 2 x 187,440 steps at batch 64).
"""

import ml_collections

PAIRS = (
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
    ("vgg13", "mobilenetv2"),
    ("resnet50", "mobilenetv2"),
    ("resnet50", "vgg8"),
    ("resnet32x4", "shufflev1"),
    ("resnet32x4", "shufflev2"),
    ("wrn_40_2", "shufflev1"),
)
ARGS = {f"{t}_{s}": (t, s) for t, s in PAIRS}
_LOW_LR_STUDENTS = ("mobilenetv2", "shufflev1", "shufflev2")


def get_config(arg: str | None = None):
    arg = arg or "resnet32x4_resnet8x4"
    if arg not in ARGS:
        raise ValueError(
            f"configs/cifar100.py: unknown pair {arg!r}; expected one of {sorted(ARGS)}"
        )
    teacher, student = ARGS[arg]
    cadence = dict(log_every=200, checkpoint_every=5000, eval_every=10000)
    student_lr = 0.01 if student in _LOW_LR_STUDENTS else 0.05
    # Both phases keep the schema's RepDistiller recipe (pcjax.training.config.phase_config).
    return ml_collections.ConfigDict(dict(
        name=f"cifar100_{arg}",
        dataset="cifar100",
        teacher=dict(model=teacher, train=cadence),
        student=dict(model=student,
                     train=dict(optimizer=dict(learning_rate=student_lr), **cadence)),
        distill=dict(protocol="class_aware", loss="perception_coherence", gamma=1.0, alpha=0.0),
        eval=dict(batch_size=1000, knn_k=20, pc_chunk_size=1000),
    ))
