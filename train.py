"""Train a teacher, distill a student, evaluate both.

  python train.py                                   # configs/digits.py into ./workdir/digits
  python train.py --config configs/cifar100.py:resnet32x4_resnet8x4 --workdir runs/r32x4_r8x4
  python train.py --config configs/digits.py --config.distill.loss=rkd --config.seed=1
  python train.py --config.distill.loss_kwargs.regularization_strength=0.3

--config takes a config file (``path[:arg]``, big_vision style: its ``get_config([arg])`` returns
the keys that differ from the schema's defaults, see pcjax.training.config) and
``--config.<key>=<value>`` overrides any key of the schema;
``--config.distill.loss_kwargs.<name>=<value>`` sets an option of the loss, whichever loss the
command line picks. --workdir defaults to ./workdir/<config.name>. Rerunning the same command
resumes from the workdir's latest checkpoints. Multi-host: set
--config.distributed=True (or the JAX_COORDINATOR_ADDRESS environment variable) to call
jax.distributed.initialize() first.

A rerun into a workdir must use the same config, up to the keys that cannot change the results
(logging, evaluation and checkpoint cadence; see pcjax.training.resume); --extend also accepts
longer phase lengths for phases that have not ended. Errors print one line,
``train.py: error: ...``, and exit with 2 for usage errors (bad flags, config file or values, a
refused resume, a workdir in use) or 1 for failures while running; set PCJAX_TRACEBACK=1 (or
true, yes) to get the full traceback and the libraries' log output instead.
SIGTERM or Ctrl-C saves a checkpoint, prints where, and exits with status 128 + the signal number;
outside training it prints the last checkpoint and exits with that status too.
"""

import os
import runpy
import signal
import sys

# Until pcjax.training.preemption installs its handlers, a signal is only recorded: raised during
# the imports, it could be lost in a garbage-collector callback, print a traceback or abort.
_SIGNALS = []
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda signum, frame: _SIGNALS.append(signum))

from absl import app, flags, logging  # noqa: E402 - after the signal recorder

USAGE, FAILURE = 2, 1
_CONFIG_FLAG = "--config."


def _exit(code: int, message: str):
    """Ends the process with one line on stderr (or the full traceback with PCJAX_TRACEBACK=1)."""
    from pcjax.training import logging as log_lib

    if log_lib.tracebacks_requested() and sys.exc_info()[0] is not None:
        raise
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Takes the ``--config.<key>=<value>`` (or ``--config.<key> <value>``) flags off `argv`."""
    rest, overrides, args = [], {}, iter(argv)
    for arg in args:
        if not arg.startswith(_CONFIG_FLAG):
            rest.append(arg)
            continue
        key, has_value, text = arg[len(_CONFIG_FLAG):].partition("=")
        if not has_value:
            text = next(args, None)
            if text is None:
                _exit(USAGE, f"{_CONFIG_FLAG}{key}: the flag has no value")
        if not all(part.isidentifier() for part in key.split(".")):
            _exit(USAGE, f"{arg}: expected {_CONFIG_FLAG}<key>=<value>")
        overrides[key] = text
    return rest, overrides


_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py")
_CONFIG = flags.DEFINE_string("config", _DEFAULT_CONFIG, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default ./workdir/<config.name>)."
)
_EXTEND = flags.DEFINE_bool(
    "extend", False, "Resume a workdir whose config differs only in longer phase lengths."
)
_OVERRIDES: dict[str, str] = {}


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ... ".join(dict.fromkeys(lines[:1] + lines[-1:])) or type(error).__name__


def _parse_flags(argv):
    argv, overrides = _split_overrides(argv)
    _OVERRIDES.update(overrides)
    try:
        args = flags.FLAGS(argv)
    except flags.Error as error:
        _exit(USAGE, _one_line(error))
    if len(args) > 1:
        _exit(USAGE, f"unexpected arguments: {' '.join(args[1:])}")
    return args


def _load_config():
    """The config file's ``get_config([arg])``, completed by the schema, with the overrides."""
    from pcjax.training import config as config_lib

    path, _, arg = _CONFIG.value.partition(":")
    if not os.path.isfile(path):
        _exit(USAGE, f"--config: no config file at {path}")
    try:
        get_config = runpy.run_path(path)["get_config"]
        config = config_lib.complete(get_config(arg) if arg else get_config())
        config_lib.apply_overrides(config, _OVERRIDES)
    except config_lib.ConfigError as error:
        _exit(USAGE, str(error).replace("config.", _CONFIG_FLAG, 1))
    except Exception as error:  # noqa: BLE001 - a config file that fails is a usage error.
        _exit(USAGE, f"--config {_CONFIG.value}: {type(error).__name__}: {_one_line(error)}")
    return config


def _last_checkpoint(workdir: str) -> str | None:
    """Where the newest checkpoint of the job in `workdir` is, in words, or None if it has none."""
    for phase in ("student", "teacher"):
        directory = os.path.abspath(os.path.join(workdir, phase, "checkpoints"))
        names = os.listdir(directory) if os.path.isdir(directory) else []
        steps = [int(n) for n in names if n.isdigit()]
        if steps:
            return (f"the last checkpoint is {phase} step {max(steps)} in {directory}; rerun the "
                    "same command to resume from it")
    return None


def main(argv):
    del argv  # Checked by _parse_flags.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the progress bars.
    config = _load_config()
    # Known before any work, so an interrupt at any moment can say where the last checkpoint is.
    workdir = _WORKDIR.value or os.path.join("workdir", config.name)
    try:
        import jax

        # Imported inside main (no import touches the devices, which must wait for distributed
        # init) and while signals are only recorded: an exception raised by a signal handler in
        # the middle of an extension module's initialization can abort the interpreter.
        from pcjax.training import config as config_lib
        from pcjax.training import logging as log_lib
        from pcjax.training import preemption, report, sharding, trainer

        if not log_lib.tracebacks_requested():
            log_lib.quiet_library_output()
        preemption.install(_SIGNALS)  # Before distributed init, which takes SIGTERM over.
        sharding.maybe_initialize_distributed(
            config.distributed, heartbeat_timeout_seconds=config.heartbeat_timeout_seconds
        )
        try:
            results = trainer.run(config, workdir, extend=_EXTEND.value)
            preemption.check()  # A signal whose exception was lost ends the run as interrupted.
        except config_lib.ConfigError as error:
            _exit(USAGE, str(error))
        except preemption.Preempted as error:  # SIGTERM / Ctrl-C: a checkpoint was saved.
            print(error, file=sys.stderr)
            sys.exit(error.exit_code)
    except KeyboardInterrupt as error:  # Ctrl-C, or preemption.Interrupted (SIGINT, SIGTERM).
        where = _last_checkpoint(workdir)
        reason = getattr(error, "reason", "interrupted")
        _exit(getattr(error, "exit_code", 130), f"{reason}; {where or 'no checkpoint was written'}")
    except Exception as error:  # noqa: BLE001 - the one-line report of any failure.
        _exit(FAILURE, f"{type(error).__name__}: {_one_line(error)}")
    if jax.process_index() == 0:  # Every process ends with the same results; one prints them.
        print(report.summary_table(config, results))
        print(f"workdir: {os.path.abspath(workdir)}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
