"""The optional C extensions (the store's, the pipeline loop's, the agent's engine); the rest is in pyproject.toml."""

from setuptools import Extension, setup


def _sources(stem: str, *parts: str) -> list[str]:
    """A module's C files: the one named after it (its init and method table) first, then its parts."""
    return [f"{stem}{part}.c" for part in ("", *parts)]


setup(
    ext_modules=[
        # optional: without a C compiler (or Python headers) the install goes on, and the store uses
        # the pure-Python twins of its two functions (the generated protobuf classes in _otlp, psycopg's
        # COPY). The sources use only the limited C API of Python 3.10 (their header, which each includes
        # first, defines Py_LIMITED_API), so one abi3 build serves every later Python. Several files make the
        # one module; their header is a dependency (a change to it rebuilds them, and the sdist ships it).
        Extension(
            "secret_audit.store._native",
            _sources("src/secret_audit/store/_native", "_decode", "_values", "_wire", "_copy"),
            depends=["src/secret_audit/store/_native.h"],
            optional=True,
            py_limited_api=True,
            extra_compile_args=["-O2"],
        ),
        # the same pattern: a pipeline's per-command loop (redis_pipelines.count_python is its twin)
        Extension(
            "secret_audit._internal._pipeline_native",
            ["src/secret_audit/_internal/_pipeline_native.c"],
            optional=True,
            py_limited_api=True,
            extra_compile_args=["-O2"],
        ),
        # the agent's per-record engine, likewise optional: without it the agent runs its pure-Python
        # twin (secret_audit._internal.engine.stamp_slots_py), which writes the same bytes, slower.
        Extension(
            "secret_audit._internal._engine",
            _sources("src/secret_audit/_internal/_engine", "_otlp", "_raw", "_sha256", "_float"),
            depends=["src/secret_audit/_internal/_engine.h"],
            optional=True,
            py_limited_api=True,
            extra_compile_args=["-O2"],
        ),
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
