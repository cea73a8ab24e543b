# expect: output too large
def solution():
    import sys
    while True:
        sys.stderr.write("spam" * 1000)
