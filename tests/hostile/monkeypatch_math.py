# expect: answer=1
# Would poison math.sqrt for every later program in this worker: the static screen retires the worker.
def solution():
    import math
    math.sqrt = lambda x: 0.0
    return 1
