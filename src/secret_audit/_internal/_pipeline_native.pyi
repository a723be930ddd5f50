# The pipeline loop in C (_pipeline_native.c): its whole surface. Its pure-Python twin, the
# reference, is redis_pipelines.count_python; tests/test_redis_pipeline_items.py holds them together.
from collections.abc import Callable, Sequence
from typing import Any

def count(
    stack: list[Any],
    got: list[Any],
    entry_of: Callable[[Any, Any], Any],
    general: Callable[[Sequence[Any], Any], tuple[Any, ...]],
    make: Callable[[Any, Any], Any],
    found: Any,
    none: Any,
    emptiable: tuple[type, ...],
    args_of: Callable[[Any], Sequence[Any]],
    /,
) -> list[list[Any]]:
    """[Item, count] per distinct Item of a pipeline's commands, in order (see count_python)."""
