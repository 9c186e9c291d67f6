"""Argument checks shared by the losses, run at trace time."""

import jax
import jax.numpy as jnp


def check_pair(
    student: jax.Array, teacher: jax.Array, *, student_name: str = "student_features",
    teacher_name: str = "teacher_features", min_batch: int = 1, same_width: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Both as arrays (Python lists accepted); ValueError unless (batch, width) with one batch size.

    Args:
      student_name, teacher_name: the argument names used in the error messages.
      min_batch: the smallest batch size the loss is defined for.
      same_width: whether the second axes must match too.
    """
    student, teacher = jnp.asarray(student), jnp.asarray(teacher)
    for name, value in ((student_name, student), (teacher_name, teacher)):
        if value.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, features), got shape {value.shape}.")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{student_name} and {teacher_name} must have the same batch size, got "
            f"{student.shape[0]} and {teacher.shape[0]}."
        )
    if student.shape[0] < min_batch:
        raise ValueError(
            f"{student_name} must hold at least {min_batch} samples, got a batch of "
            f"{student.shape[0]}."
        )
    if same_width and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{student_name} and {teacher_name} must have the same size on the last axis, got "
            f"{student.shape} and {teacher.shape}."
        )
    return student, teacher
