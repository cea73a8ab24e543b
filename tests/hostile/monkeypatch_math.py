# expect: blocked
# Poisons math.sqrt for every later program in this worker.
def solution():
    import math
    math.sqrt = lambda x: 0.0
    return 1
