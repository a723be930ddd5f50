"""The optional C extensions (the store's, the pipeline loop's, the agent's engine); the rest is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: without a C compiler (or Python headers) the install goes on, and the store uses
        # the pure-Python twins of its two functions (the generated protobuf classes in _otlp, psycopg's
        # COPY). The source uses only the limited C API of Python 3.10 (it defines Py_LIMITED_API
        # itself), so one abi3 build serves every later Python.
        Extension(
            "secret_audit.store._native",
            ["src/secret_audit/store/_native.c"],
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
            ["src/secret_audit/_internal/_engine.c"],
            optional=True,
            py_limited_api=True,
            extra_compile_args=["-O2"],
        ),
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
