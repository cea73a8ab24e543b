# expect: answer
# Walks every object of the worker to reach its internals.
def solution():
    import gc
    return len(gc.get_objects())
