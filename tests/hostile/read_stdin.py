# expect: exception
def solution():
    return input("number? ")
