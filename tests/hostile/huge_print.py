# expect: output too large
def solution():
    while True:
        print("spam" * 1000)
