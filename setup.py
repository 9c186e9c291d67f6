"""Builds the optional C++ soft-rank solver (pcjax/ranking/_native) next to the pure-Python package.

The extension is an XLA FFI handler compiled against the headers of the installed jaxlib
(`jax.ffi.include_dir()`), loaded by pcjax.ranking.native with ctypes. Any failure to build it
(no C++ compiler, no jax at build time, a compile error) prints a warning and the install goes
on without it: pcjax then runs its pure-JAX solver on CPU (`pcjax.ranking.cpu_backend()`).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that adds the jax include directory and never fails the install."""

    def run(self):
        try:
            import jax
            import jaxlib

            for ext in self.extensions:
                ext.include_dirs.append(jax.ffi.include_dir())
                ext.define_macros.append(("PCJAX_JAXLIB_VERSION", f'"{jaxlib.__version__}"'))
            super().run()
        except Exception as error:  # noqa: BLE001 - any build failure means the fallback
            self.warn(f"pcjax: C++ soft-rank solver not built ({error}); using pure JAX on CPU.")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            self.warn(f"pcjax: {ext.name} not built ({error}); using pure JAX on CPU.")

    def get_export_symbols(self, ext):
        return []  # A plain shared library for ctypes: it has no PyInit_ function to export.


setup(
    ext_modules=[
        Extension(
            "pcjax.ranking._soft_op",
            sources=["pcjax/ranking/_native/soft_op.cc"],
            language="c++",
            extra_compile_args=["-O3", "-g0", "-std=c++17", "-Wno-return-type"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
