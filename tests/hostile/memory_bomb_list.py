# expect: memory
# One giant allocation (80 GB): refused by RLIMIT_AS, Python raises MemoryError.
def solution():
    big = [0] * (10 ** 10)
    return len(big)
