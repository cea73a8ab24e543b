# expect: memory
# numpy allocation far beyond the limit.
def solution():
    import numpy as np
    return float(np.ones(10 ** 10).sum())
