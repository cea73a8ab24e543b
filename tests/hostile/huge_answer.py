# expect: output too large
def solution():
    return "9" * (10 ** 7)
