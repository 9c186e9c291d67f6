"""Train a teacher, distill a student, evaluate both.

  python train.py                                   # configs/digits.py into ./workdir/digits
  python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 --workdir runs/r32x4_r8x4
  python train.py --config configs/digits.py --config.distill.loss=rkd --config.seed=1
  python train.py --config.distill.loss_kwargs.regularization_strength=0.3

--config takes a config file (``path[:arg]``, big_vision style) and ``--config.key=value``
overrides; ``--config.distill.loss_kwargs.<name>=<value>`` sets a keyword argument of the loss,
whichever loss the command line picks. --workdir defaults to ./workdir/<config.name>. Rerunning
the same command resumes from the workdir's latest checkpoints. Multi-host: set
--config.distributed=True (or the JAX_COORDINATOR_ADDRESS environment variable) to call
jax.distributed.initialize() first.

A rerun into a workdir must use the same config, up to the keys that cannot change the results
(logging, evaluation and checkpoint cadence; see pcjax.training.config); --extend also accepts new
phase lengths. Errors print one line, ``train.py: error: ...``, and exit with 2 for usage errors
(bad flags, config file or values, a refused resume) or 1 for failures while running; set
PCJAX_TRACEBACK=1 (or true, yes) to get the full traceback and the libraries' log output instead.
SIGTERM or Ctrl-C saves a checkpoint, prints where, and exits with status 128 + the signal number;
outside training it prints the last checkpoint and exits with that status too.
"""

import os
import signal
import sys

# Until pcjax.training.preemption installs its handlers, a signal is only recorded: raised during
# the imports, it could be lost in a garbage-collector callback or print a traceback.
_SIGNALS = []
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda signum, frame: _SIGNALS.append(signum))

from absl import app, flags, logging
from ml_collections import config_flags

USAGE, FAILURE = 2, 1


def _exit(code: int, message: str):
    """Ends the process with one line on stderr (or the full traceback with PCJAX_TRACEBACK=1)."""
    from pcjax.training import logging as log_lib

    if log_lib.tracebacks_requested() and sys.exc_info()[0] is not None:
        raise
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _split_loss_kwargs():
    # Before the config flag is defined: ml_collections reads its overrides off sys.argv then.
    from pcjax.training import config as config_lib

    try:
        sys.argv[1:], kwargs = config_lib.split_loss_kwargs_flags(sys.argv[1:])
    except config_lib.ConfigError as error:
        _exit(USAGE, str(error))
    return kwargs


_LOSS_KWARGS = _split_loss_kwargs()
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py")
try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Config file (path[:arg])."
    )
except (AttributeError, KeyError) as error:
    # ml_collections looks up the --config.<key> overrides of sys.argv when the flag is defined.
    _key = str(error).strip("\"'")
    _flag = next(
        (a.split("=")[0] for a in sys.argv[1:] if _key in a.split("=")[0].split(".")[1:]),
        "--config",
    )
    _exit(USAGE, f"{_flag}: the config has no key {_key!r}")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default ./workdir/<config.name>)."
)
_EXTEND = flags.DEFINE_bool(
    "extend", False, "Resume a workdir whose config differs only in the phase lengths."
)


def _one_line(error: BaseException) -> str:
    # Some errors (a config file that fails to load) carry a traceback in their message: keep its
    # first and last lines, which name the flag and the cause.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ... ".join(dict.fromkeys(lines[:1] + lines[-1:])) or type(error).__name__


def _parse_flags(argv):
    try:
        args = flags.FLAGS(argv)
        _CONFIG.value.keys()  # A config file that failed to load raises on first use.
    except Exception as error:  # noqa: BLE001 - every parsing failure is a usage error.
        _exit(USAGE, _one_line(error))
    if len(args) > 1:
        _exit(USAGE, f"unexpected arguments: {' '.join(args[1:])}")
    return args


def main(argv):
    del argv  # Checked by _parse_flags.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the progress bars.
    config = _CONFIG.value
    try:
        with config.unlocked():
            config.distill.loss_kwargs.update(_LOSS_KWARGS)
    except (TypeError, ValueError) as error:  # ml_collections refuses a value of another type.
        _exit(USAGE, f"--config.distill.loss_kwargs: {_one_line(error)}")
    workdir = None
    try:
        import jax

        # Imported inside main: nothing may touch the devices before distributed init.
        from pcjax.training import logging as log_lib
        from pcjax.training import preemption, sharding

        if not log_lib.tracebacks_requested():
            log_lib.quiet_library_output()
        preemption.install(_SIGNALS)  # Before distributed init, which takes SIGTERM over.
        sharding.maybe_initialize_distributed(
            config.distributed, heartbeat_timeout_seconds=config.heartbeat_timeout_seconds
        )
        from pcjax.training import config as config_lib
        from pcjax.training import trainer

        workdir = _WORKDIR.value or trainer.default_workdir(config)
        try:
            results = trainer.run(config, workdir, extend=_EXTEND.value)
            preemption.check()  # A signal whose exception was lost ends the run as interrupted.
        except config_lib.ConfigError as error:
            _exit(USAGE, str(error))
        except preemption.Preempted as error:  # SIGTERM / Ctrl-C: a checkpoint was saved; say where.
            print(error, file=sys.stderr)
            sys.exit(error.exit_code)
    except KeyboardInterrupt as error:  # Ctrl-C, or preemption.Interrupted (SIGINT, SIGTERM).
        where = trainer.last_checkpoint(workdir) if workdir else None
        reason = getattr(error, "reason", "interrupted")
        _exit(getattr(error, "exit_code", 130), f"{reason}; {where or 'no checkpoint was written'}")
    except Exception as error:  # noqa: BLE001 - the one-line report of any failure.
        _exit(FAILURE, f"{type(error).__name__}: {_one_line(error)}")
    if jax.process_index() == 0:  # Every process ends with the same results; one prints them.
        print(trainer.summary_table(config, results))
        print(f"workdir: {os.path.abspath(workdir)}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
