# expect: exception
# The worker script is visible (read-only) inside the sandbox: changing it would reach every later worker.
def solution():
    with open("__WORKER_SCRIPT__", "a") as handle:
        handle.write("\n# pwned\n")
    return 1
