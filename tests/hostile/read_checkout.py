# expect: exception
# The checkout (and the results folder in it) does not exist inside the sandbox.
def solution():
    with open("__REPO__/pyproject.toml") as handle:
        return handle.read()
