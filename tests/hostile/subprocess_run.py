# expect: exception
# Runs a shell command that would create a file next to the canary.
def solution():
    import subprocess
    subprocess.run(["touch", "__CANARY_DIR__/from_subprocess"], check=False)
    return 1
