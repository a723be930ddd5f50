"""The store's optional C extension; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: without a C compiler (or Python headers) the install goes on, and the store uses
        # the pure-Python twins of its functions (the generated protobuf classes in _otlp,
        # _prepare's checks and rows, psycopg's COPY)
        Extension(
            "secret_audit.store._native",
            ["src/secret_audit/store/_native.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ],
)
