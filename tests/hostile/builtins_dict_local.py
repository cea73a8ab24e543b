# expect: answer=0
# Edits the builtins mapping it sees: each program gets a private copy, so only it is affected.
__builtins__["abs"] = lambda x: 0
def solution():
    return abs(-5)
