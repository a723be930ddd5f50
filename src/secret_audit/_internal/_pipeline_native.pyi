# The pipeline loop in C (_pipeline_native.c): its whole surface. Its pure-Python twin, the
# reference, is redis_pipelines.count_python, whose signature it has (its arguments positional);
# tests/test_redis_pipeline_items.py holds them together.
from secret_audit._internal.redis_pipelines import count_python as count

__all__ = ["count"]
