# expect: exception
def solution():
    raise SystemExit(0)
